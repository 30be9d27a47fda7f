"""The detector's cost estimator (pipelines/benchmarks/service_cost.py), on made-up rounds."""
import pytest

from pipelines.benchmarks import service_cost


def _round(requests_per_s, p99_ms):
  return {"requests_per_s": requests_per_s, "p99_ms": p99_ms, "p50_ms": p99_ms / 2}


def test_pairs_are_compared_round_by_round_and_both_estimators_must_meet_a_goal():
  # The machine slowed down during the second pair; one on round (the third) was slow on its own.
  runs = {"off": [_round(1000, 20.0), _round(800, 30.0), _round(1000, 20.0)],
          "on": [_round(950, 21.0), _round(760, 31.5), _round(700, 40.0)]}
  figures = service_cost.summary(runs)
  assert figures["paired"]["throughput_ratio"] == pytest.approx(0.95)  # median of 0.95, 0.95, 0.70
  assert figures["paired"]["p99_extra_ms"] == pytest.approx(1.5)  # median of 1.0, 1.5, 20.0
  assert figures["throughput_ratio"] == pytest.approx(0.76)  # 760 / 1000
  assert figures["p99_extra_ms"] == pytest.approx(11.5)  # 31.5 - 20.0
  assert figures["goals_met"] == {"throughput_ratio": False, "p99_extra_ms": False}


def test_a_cheap_detector_meets_both_goals():
  runs = {"off": [_round(1000, 20.0), _round(980, 21.0), _round(1010, 20.5)],
          "on": [_round(960, 21.0), _round(950, 22.5), _round(975, 21.0)]}
  figures = service_cost.summary(runs)
  assert 0.95 < figures["paired"]["throughput_ratio"] < 0.98
  assert figures["goals_met"] == {"throughput_ratio": True, "p99_extra_ms": True}
  runs["on"][1]["requests_per_s"] = runs["on"][2]["requests_per_s"] = 800  # now 0.82 of off
  assert service_cost.summary(runs)["goals_met"]["throughput_ratio"] is False
