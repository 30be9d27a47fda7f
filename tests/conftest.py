"""The suite's time budget, enforced per test: CI has 90 minutes for everything, `make test` aims at 15.

Any test whose setup and call take more than LIMIT_S seconds of wall time fails, unless it
carries `@pytest.mark.end_to_end("why it needs longer")`; tests/test_budget.py keeps that list at
END_TO_END_MAX tests. A shared artifact (tests/trained.py: a model trained once for every test file) is
charged to no test, since whichever test asks first would pay for all; instead its own build must fit
in LIMIT_S, and time spent waiting for another process to build one is left out too.
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
  item._budget_marks = (trained.waited_s(), len(trained.builds()))
  yield


def _over_budget(item, seconds):
  """Why the test's setup and call (`seconds`) broke the budget, or None."""
  waited_before, built_before = item._budget_marks
  waited = trained.waited_s() - waited_before
  builds = trained.builds()[built_before:]
  slow_build = [(name, s) for name, s in builds if s > LIMIT_S]
  if slow_build:
    return (f"building the shared artifact {slow_build[0][0]} took {slow_build[0][1]:.1f} s, over the "
            f"{LIMIT_S:g} s limit: train it shorter")
  spent = seconds - waited - sum(s for _, s in builds)
  if spent > LIMIT_S and item.get_closest_marker("end_to_end") is None:
    return (f"{item.nodeid} took {spent:.1f} s (setup and call, shared artifacts left out), over the "
            f"{LIMIT_S:g} s limit of one test: make it cheaper (tests/trained.py shares trained models) "
            f"or mark it end_to_end with a reason")
  return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  item._budget_s = getattr(item, "_budget_s", 0.0) + report.duration
  if report.when == "call" and report.passed:
    why = _over_budget(item, item._budget_s)
    if why:
      report.outcome, report.longrepr = "failed", why
