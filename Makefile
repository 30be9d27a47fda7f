# lad_tf developer commands.
#
#   make demo    virtualenv + `pip install -e .`, then `python -m pipelines.defend` (the default
#                defence on the embedded digits)
#   make test    virtualenv + `pip install -e .[test,bench]`, Debian's Bazel 4.2.3
#                (installed with apt-get when missing), then `bazel test //...`;
#                ends with the line `bazel: N passed, M failed`
#   make pytest  the same tests straight through pytest (no Bazel)
#   make results rerun the published figures (pipelines.reproduce; long) and rewrite
#                docs/RESULTS.md; RESULTS_FLAGS=--render_only only rewrites it
#   make clean   drop Bazel outputs and the install stamps (keeps .venv)
#
# Variables: PYTHON (interpreter that creates the venv, default python3),
# VENV (default .venv), BAZEL (default bazel), BAZEL_TARGETS (default //...),
# BAZEL_FLAGS (extra flags for `bazel test`), PYTEST_FLAGS, RESULTS_FLAGS.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
VENV_ABS := $(abspath $(VENV))
VENV_PY := $(VENV)/bin/python
BAZEL ?= bazel
BAZEL_TARGETS ?= //...
BAZEL_FLAGS ?=
BAZEL_LOG := bazel-test.log
# Models the tests train once and share across test files (tests/trained.py); emptied by every run.
TEST_CACHE := $(abspath .test-cache)
PYTEST_FLAGS ?= -q
RESULTS_FLAGS ?=

# Debian packages `make test` needs: Bazel 4.2.3, the two Bazel repositories it
# would otherwise download (see .bazelrc) and the Fashion-MNIST files.
APT_PACKAGES := bazel-bootstrap bazel-platforms bazel-rules-java dataset-fashion-mnist chromium

PIP := $(VENV_PY) -m pip
PIP_FLAGS := --quiet --disable-pip-version-check --progress-bar off
# pip -q still prints warnings (and errors); drop only the noise about find-links
# / index locations of this machine's pip.conf that do not exist.
PIP_FILTER := { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }

.PHONY: help venv install install-test demo results test bazel-deps pytest clean

help:
	@sed -n '2,15p' Makefile | sed 's/^# \{0,1\}//'

# --- virtualenv and installs (idempotent; re-run only when setup.py changes) ---

$(VENV_PY):
	@echo ">> creating virtualenv $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "error: '$(PYTHON) -m venv $(VENV)' failed. Python >= 3.10 with the venv" >&2; \
	  echo "       module is needed (Debian/Ubuntu: apt-get install python3-venv)." >&2; \
	  exit 1; }

venv: $(VENV_PY)

$(VENV)/.installed: setup.py | $(VENV_PY)
	@echo ">> pip install -e . (into $(VENV))"
	@$(PIP) install $(PIP_FLAGS) -e . 2>&1 | $(PIP_FILTER)
	@touch $@

$(VENV)/.installed-test: setup.py | $(VENV_PY)
	@echo ">> pip install -e '.[test,bench]' (into $(VENV))"
	@$(PIP) install $(PIP_FLAGS) -e '.[test,bench]' 2>&1 | $(PIP_FILTER)
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# --- demo ----------------------------------------------------------------------

demo: $(VENV)/.installed
	$(VENV_PY) -m pipelines.defend

# --- the published figures (docs/RESULTS.md) ----------------------------------

results: $(VENV)/.installed
	$(VENV_PY) -m pipelines.reproduce $(RESULTS_FLAGS)

# --- tests -----------------------------------------------------------------------

# Installs whatever of $(APT_PACKAGES) is missing (apt-get update first), as root
# or through password-less sudo; otherwise says what to install and stops.
bazel-deps:
	@command -v dpkg-query >/dev/null 2>&1 || { \
	  echo "error: 'make test' uses Debian's Bazel 4.2.3 packages and needs a Debian-based" >&2; \
	  echo "       system (dpkg/apt-get). Wanted: $(APT_PACKAGES)" >&2; \
	  exit 1; }
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' "$$pkg" 2>/dev/null | grep -q '^install ok installed$$' \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	else \
	  echo "error: missing Debian packages:$$missing" >&2; \
	  echo "       install them as root, then re-run 'make test':" >&2; \
	  echo "         apt-get update && apt-get install -y$$missing" >&2; \
	  exit 1; \
	fi; \
	echo ">> apt-get install$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	if ! { $$sudo apt-get update -qq && \
	       $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; then \
	  echo "error: apt-get could not install:$$missing" >&2; \
	  echo "       install them by hand, then re-run 'make test':" >&2; \
	  echo "         apt-get update && apt-get install -y$$missing" >&2; \
	  exit 1; \
	fi

# Runs `bazel test` with the virtualenv first on PATH (py_test runs the first
# python3 on PATH), keeps its output in $(BAZEL_LOG), prints the 15 slowest test
# cases and ends with one line `bazel: N passed, M failed` counting test cases
# (from each target's or shard's test.xml, which pytest writes; a target without
# one counts as a single test).  The exit
# status is Bazel's: non-zero on any failure.  On CI the Bazel server is shut
# down afterwards so no daemon outlives the run.
test: $(VENV)/.installed-test bazel-deps
	@export PATH="$(VENV_ABS)/bin:$$PATH"; \
	rm -rf $(TEST_CACHE); \
	echo ">> bazel test $(BAZEL_FLAGS) $(BAZEL_TARGETS)"; \
	rc=0; \
	$(BAZEL) test --test_env=LAD_TF_TEST_CACHE=$(TEST_CACHE) $(BAZEL_FLAGS) $(BAZEL_TARGETS) 2>&1 \
	  | tee $(BAZEL_LOG) || rc=$$?; \
	if [ -n "$${CI:-}" ]; then $(BAZEL) shutdown >/dev/null 2>&1 || true; fi; \
	$(VENV_PY) -c "$$BAZEL_SUMMARY_PY" $(BAZEL_LOG) bazel-testlogs $$rc

pytest: $(VENV)/.installed-test
	rm -rf $(TEST_CACHE)
	LAD_TF_TEST_CACHE=$(TEST_CACHE) $(VENV_PY) -m pytest $(PYTEST_FLAGS) --durations=15 -p no:cacheprovider tests

clean:
	-@$(BAZEL) clean >/dev/null 2>&1
	rm -f $(BAZEL_LOG) $(VENV)/.installed $(VENV)/.installed-test

# --- the summary line --------------------------------------------------------------
# argv: bazel log, bazel-testlogs dir, bazel's exit status.  Prints the line and
# exits with bazel's status (or 1 if it counted a failure bazel did not report).
define BAZEL_SUMMARY_PY
import os, re, sys
import xml.etree.ElementTree as ET

log_path, testlogs, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
status_re = re.compile(
    r"^(//[^\s:]*:\S+)\s+(?:\(cached\)\s+)?"
    r"(PASSED|FLAKY|FAILED TO BUILD|FAILED|TIMEOUT|NO STATUS|INCOMPLETE|REMOTE FAILURE|SKIPPED)\b")
ansi_re = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

results = {}
with open(log_path, errors="replace") as log:
    for line in log:
        match = status_re.match(ansi_re.sub("", line).strip())
        if match:
            results[match.group(1)] = match.group(2)

durations = []  # (seconds, test case) of every target and shard

def xml_counts(label):
    package, name = label[2:].split(":", 1)
    folder = os.path.join(testlogs, package, name)
    paths = [os.path.join(folder, "test.xml")]
    if os.path.isdir(folder):  # a sharded target: one report per shard
        paths += sorted(os.path.join(folder, d, "test.xml") for d in os.listdir(folder)
                        if d.startswith("shard_"))
    roots = []
    for path in paths:
        try:
            roots.append(ET.parse(path).getroot())
        except (OSError, ET.ParseError):
            pass
    if not roots:
        return None
    tests = failed = skipped = 0
    for root in roots:
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            tests += int(suite.get("tests", 0) or 0)
            failed += int(suite.get("failures", 0) or 0) + int(suite.get("errors", 0) or 0)
            skipped += int(suite.get("skipped", 0) or suite.get("disabled", 0) or 0)
        for case in root.iter("testcase"):
            durations.append((float(case.get("time", 0) or 0), "%s::%s" % (label, case.get("name"))))
    return max(tests - failed - skipped, 0), failed, skipped

passed = failed = skipped = 0
for label, status in sorted(results.items()):
    counts = xml_counts(label) if status in ("PASSED", "FLAKY", "FAILED") else None
    if counts is None:
        counts = (1, 0, 0) if status in ("PASSED", "FLAKY") else (0, 1, 0)
    p, f, s = counts
    if status not in ("PASSED", "FLAKY") and f == 0:
        f = 1  # e.g. a crash after pytest wrote its report
    passed, failed, skipped = passed + p, failed + f, skipped + s

if durations:
    print("slowest 15 test cases (seconds: setup, call and teardown):")
    for seconds, case in sorted(durations, reverse=True)[:15]:
        print("  %7.1f  %s" % (seconds, case))
if rc == 4 and not results:
    print("bazel found no test targets in $(BAZEL_TARGETS)", file=sys.stderr)
elif rc != 0 and failed == 0:
    failed = 1  # the build itself failed (see the errors above)
if rc == 0 and failed:
    rc = 1
line = "bazel: %d passed, %d failed" % (passed, failed)
if skipped:
    line += ", %d skipped" % skipped
print(line, flush=True)
sys.exit(rc)
endef
export BAZEL_SUMMARY_PY
