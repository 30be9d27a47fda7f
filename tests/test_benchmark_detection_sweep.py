"""The detection sweep's replay (pipelines/benchmarks/detection_sweep.py) is the server's rule."""
import json

import numpy as np

from pipelines.benchmarks import detection_sweep
from serving import config as config_lib
from serving import detection


def _streams(rng):
  """An attack-like run (one image, a square moved by +-0.1 per query, some exact retries) and a
  benign-like client (distinct images, a few noisy copies and retries)."""
  base = rng.random((28, 28, 1), dtype=np.float32)
  attack = []
  for q in range(40):
    image = base.copy()
    top, left = rng.integers(0, 22, 2)
    image[top:top + 6, left:left + 6] = np.clip(image[top:top + 6, left:left + 6] + rng.choice([-0.1, 0.1]), 0, 1)
    attack.append(attack[-1] if q % 7 == 6 else image)  # Every 7th query retries the one before.
  benign = list(rng.random((30, 28, 28, 1), dtype=np.float32))
  for i in range(5):
    benign.append(np.clip(benign[i] + rng.uniform(-0.02, 0.02, benign[i].shape), 0, 1).astype(np.float32))
    benign.append(benign[i].copy())
  return [np.stack(attack), np.stack([benign[k] for k in rng.permutation(len(benign))])]


def test_the_replay_flags_each_stream_at_the_query_the_detector_does():
  rng = np.random.default_rng(0)
  streams = _streams(rng) + _streams(rng)
  thresholds, neighbours = (10, 14, 16, 18), (1, 3, 4, 6)
  fingerprinted = detection_sweep.sketches_and_digests(streams, 96, 16, 20)
  seen = set()
  for stream, (sketches, digests) in zip(streams, fingerprinted):
    replayed = detection_sweep.flagged_at(sketches, digests, thresholds, neighbours)
    for t in thresholds:
      for k in neighbours:
        detector = detection.QueryDetector(config_lib.DetectionConfig(match_threshold=t, neighbours_to_flag=k))
        expected = detector.judge([("c", stream)]).get("c")
        assert replayed[t, k] == expected, (t, k)
        seen.add(expected)
  assert None in seen and len(seen - {None}) >= 4  # Flagged and unflagged streams, at many queries.


def test_the_summary_ranks_quiet_settings_and_bounds_what_early_breaks_allow():
  runs = {"square": [{"stream": np.zeros((2, 1)), "broken": True}] + [{"stream": np.zeros((50, 1)), "broken": False}] * 9}
  rows = [{"square": {"detected_share": 0.9, "median_queries": 7.0}, "benign_flagged_share": 0.0, "meets": False},
          {"square": {"detected_share": 0.9, "median_queries": 12.0}, "benign_flagged_share": 0.0, "meets": False},
          {"square": {"detected_share": 1.0, "median_queries": 5.0}, "benign_flagged_share": 0.01, "meets": False}]
  out = detection_sweep.summary(rows, runs)
  assert out["within_benign_goal"] == 2 and out["best_within_benign_goal"][0] is rows[0]
  assert out["detected_share_ceiling_by_neighbours_to_flag"]["3"] == {"square": 0.9}
  assert out["settings_meeting_every_detection_goal"] == 0


def test_the_figure_is_drawn_from_the_committed_json(tmp_path):
  from pipelines.documents import detection_sweep as document
  assert document.write_figures(str(tmp_path)) == []  # Nothing committed, nothing drawn.
  rows = [{"quantization_step": 96, "window_size": w, "match_threshold": 16, "neighbours_to_flag": 4,
           "square": {"detected_share": 0.95, "median_queries": 12.0 - w / 8},
           "hopskipjump": {"detected_share": 1.0, "median_queries": 11.0}, "benign_flagged_share": w / 8000}
          for w in (8, 12, 16, 20)]
  bench = {"dataset": "fashion_mnist", "eps": 0.1, "benign_clients": 1000, "rows": rows,
           "goals": {"detected_share": 0.99, "median_queries_to_detection": 10, "benign_flagged_share": 0.001}}
  (tmp_path / "benchmarks").mkdir()
  (tmp_path / "benchmarks" / "detection_sweep.json").write_text(json.dumps(bench))
  assert document.write_figures(str(tmp_path)) == [str(tmp_path / "docs" / "figures" / "detection_sweep.png")]
  assert (tmp_path / "docs" / "figures" / "detection_sweep.png").stat().st_size > 10_000
