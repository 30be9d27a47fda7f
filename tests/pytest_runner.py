"""Run one pytest module as a Bazel py_test (see tests/BUILD).

Usage (Bazel passes the argument): pytest_runner.py tests/test_something.py

The working directory of a Bazel test is the workspace root inside its runfiles
tree, the same layout as the repository, so pytest sees the same rootdir,
conftest.py files and relative paths as with `pytest tests/` from the repo root.
When Bazel asks for a JUnit report (XML_OUTPUT_FILE), pytest writes it, so
bazel-testlogs/tests/<name>/test.xml lists every test case.  Under Bazel,
HOME and pytest's tmp_path point into the test's private TEST_TMPDIR.
"""

import os
import sys


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

    code = int(pytest.main(args))
    if code == int(pytest.ExitCode.NO_TESTS_COLLECTED):
        sys.stderr.write("pytest_runner: no tests collected in %s\n" % argv[1])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
