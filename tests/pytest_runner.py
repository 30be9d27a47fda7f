"""Run one pytest module as a Bazel py_test (see tests/BUILD).

Usage (Bazel passes the arguments): pytest_runner.py tests/test_something.py [MORE_TEST_FILES...]

The working directory of a Bazel test is the workspace root inside its runfiles
tree, the same layout as the repository, so pytest sees the same rootdir,
conftest.py files and relative paths as with `pytest tests/` from the repo root.
When Bazel asks for a JUnit report (XML_OUTPUT_FILE), pytest writes it, so
bazel-testlogs/tests/<name>/test.xml lists every test case.  Under Bazel,
HOME and pytest's tmp_path point into the test's private TEST_TMPDIR.  A target
with shard_count = N (tests/BUILD) runs as N processes; shard i keeps the i-th
of N consecutive runs of the collected tests (Bazel's TEST_TOTAL_SHARDS and
TEST_SHARD_INDEX), so a long file uses both cores and tests that share a
module fixture mostly stay in one shard.
"""

import os
import sys


class Shard:
  """A pytest plugin that keeps the tests of one Bazel shard."""

  def __init__(self, index, total):
    self.index, self.total = index, total

  def pytest_collection_modifyitems(self, config, items):
    kept = [item for i, item in enumerate(items) if i * self.total // len(items) == self.index]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: pytest_runner.py TEST_FILE [PYTEST_ARGS...]\n")
        return 2

    test_tmpdir = os.environ.get("TEST_TMPDIR")
    if test_tmpdir:
        # Bazel's test-setup.sh does not export a HOME of its own when the
        # caller's HOME is not passed (.bazelrc does not pass it): give each
        # test a private, empty home, so ~/.keras, ~/tensorflow_datasets etc.
        # neither leak in from the user nor persist between runs.
        os.environ["HOME"] = test_tmpdir

    import pytest

    args = list(argv[1:]) + [
        "-q",
        "-p", "no:cacheprovider",
        "--rootdir", os.getcwd(),
    ]
    if test_tmpdir:
        # tmp_path / tmp_path_factory live in the test's own TEST_TMPDIR.
        args += ["--basetemp", os.path.join(test_tmpdir, "pytest")]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args += ["--junitxml", xml_output, "-o", "junit_family=xunit2"]

    plugins = []
    total = int(os.environ.get("TEST_TOTAL_SHARDS", "0") or 0)
    if total > 1:
        status = os.environ.get("TEST_SHARD_STATUS_FILE")
        if status:  # tells Bazel this runner understands sharding
            open(status, "w").close()
        plugins.append(Shard(int(os.environ["TEST_SHARD_INDEX"]), total))

    code = int(pytest.main(args, plugins=plugins))
    if code == int(pytest.ExitCode.NO_TESTS_COLLECTED) and total > 1:
        return 0  # more shards than tests: this one kept none
    if code == int(pytest.ExitCode.NO_TESTS_COLLECTED):
        sys.stderr.write("pytest_runner: no tests collected in %s\n" % argv[1])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
