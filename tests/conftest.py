"""The suite's time budget, enforced per test: CI has 90 minutes for everything, `make test` aims at 15.

Any test whose setup and call take more than LIMIT_S seconds of wall time fails, unless it
carries `@pytest.mark.end_to_end("why it needs longer")`; tests/test_smoke_infra.py keeps that list at
END_TO_END_MAX tests. Time spent waiting for another process to finish a shared artifact
(tests/trained.py) is not the waiting test's: the process that builds it pays for it.
"""
import pytest

import trained

LIMIT_S = 90.0
END_TO_END_MAX = 5


def pytest_configure(config):
  config.addinivalue_line("markers", "end_to_end(reason): a test allowed past the per-test time limit "
                                     f"({LIMIT_S:.0f} s); at most {END_TO_END_MAX} in the suite, each with its reason")


def pytest_collection_modifyitems(items):
  for item in items:
    marker = item.get_closest_marker("end_to_end")
    if marker is not None and not (marker.args and str(marker.args[0]).strip()):
      raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.end_to_end needs its reason, e.g. "
                              f"@pytest.mark.end_to_end(\"runs the whole defend pipeline once\")")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  item._budget_start_wait = trained.waited_s()
  yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  item._budget_s = getattr(item, "_budget_s", 0.0) + report.duration
  if report.when != "call" or item.get_closest_marker("end_to_end") is not None:
    return
  waited = trained.waited_s() - getattr(item, "_budget_start_wait", 0.0)
  spent = item._budget_s - waited
  if spent > LIMIT_S and report.passed:
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid} took {spent:.1f} s (setup and call; {waited:.1f} s of waiting for "
                       f"shared artifacts left out), over the {LIMIT_S:g} s limit of one test: make it "
                       f"cheaper (tests/trained.py shares trained models) or mark it end_to_end with a reason")
