"""The suite's own budget: the per-test time limit (tests/conftest.py) fails a slow test and spares a
marked one, the end-to-end list stays short, and the shared-artifact cache (tests/trained.py) builds
once for every process that asks."""
import ast
import glob
import multiprocessing
import os
import subprocess
import sys
import textwrap

import conftest
import trained

TESTS = os.path.dirname(os.path.abspath(__file__))


def _pytest(tmp_path, body, limit_s):
  (tmp_path / "test_inner.py").write_text(textwrap.dedent(body))
  (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
      import importlib.util, sys
      sys.path.insert(0, {TESTS!r})
      spec = importlib.util.spec_from_file_location("budget", {conftest.__file__!r})
      budget = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(budget)
      budget.LIMIT_S = {limit_s}
      globals().update((k, v) for k, v in vars(budget).items() if k.startswith("pytest_"))
      """))
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120,
                        env={**os.environ, trained.CACHE_ENV: str(tmp_path / "cache")})


def test_a_test_over_the_limit_fails_unless_marked_end_to_end(tmp_path):
  result = _pytest(tmp_path, """
      import time, pytest

      def test_slow():
        time.sleep(0.6)

      @pytest.mark.end_to_end("stands for a whole pipeline run")
      def test_slow_but_marked():
        time.sleep(0.6)

      def test_quick():
        pass
      """, limit_s=0.3)
  assert result.returncode == 1, result.stdout
  assert "1 failed, 2 passed" in result.stdout, result.stdout
  assert "test_inner.py::test_slow took" in result.stdout and "limit of one test" in result.stdout, result.stdout


def test_a_shared_artifact_is_charged_to_no_test_but_must_fit_the_limit_itself(tmp_path):
  result = _pytest(tmp_path, """
      import time, trained

      def build(seconds):
        return lambda folder: time.sleep(seconds)

      def test_builds_a_quick_artifact_then_works():
        trained.artifact("quick", build(0.5))
        time.sleep(0.5)

      def test_builds_a_slow_artifact():
        trained.artifact("slow", build(1.2))
      """, limit_s=0.9)
  assert "1 failed, 1 passed" in result.stdout, result.stdout
  assert "building the shared artifact slow took" in result.stdout, result.stdout


def test_an_end_to_end_mark_needs_its_reason(tmp_path):
  result = _pytest(tmp_path, """
      import pytest

      @pytest.mark.end_to_end
      def test_no_reason():
        pass
      """, limit_s=90)
  assert result.returncode != 0 and "needs its reason" in result.stdout + result.stderr


def _end_to_end_marks():
  """(file, test) of every end_to_end mark in tests/, with its reason."""
  marks = []
  for path in sorted(glob.glob(os.path.join(TESTS, "test_*.py"))):
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.FunctionDef):
        for decorator in node.decorator_list:
          if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "end_to_end":
            marks.append((os.path.basename(path), node.name, decorator.args))
  return marks


def test_the_end_to_end_list_is_short_and_every_entry_says_why():
  marks = _end_to_end_marks()
  assert len(marks) <= conftest.END_TO_END_MAX, marks
  for path, name, args in marks:
    assert args and isinstance(args[0], ast.Constant) and len(args[0].value.split()) >= 3, (path, name)


def _build_counting(folder, calls):
  with open(calls, "a") as f:
    f.write("built\n")
  with open(os.path.join(folder, "value.txt"), "w") as f:
    f.write("42")


def _ask(root, calls, out):
  os.environ[trained.CACHE_ENV] = root
  trained.cache_root.cache_clear()
  folder = trained.artifact("counted", lambda d: _build_counting(d, calls), size=3)
  out.put(open(os.path.join(folder, "value.txt")).read())


def test_a_shared_artifact_is_built_once_for_concurrent_processes(tmp_path, monkeypatch):
  calls = str(tmp_path / "calls.txt")
  root = str(tmp_path / "cache")
  context = multiprocessing.get_context("spawn")
  out = context.Queue()
  workers = [context.Process(target=_ask, args=(root, calls, out)) for _ in range(3)]
  for worker in workers:
    worker.start()
  for worker in workers:
    worker.join(60)
  assert [out.get(timeout=5) for _ in workers] == ["42"] * 3
  assert open(calls).read() == "built\n"
  # other params are another artifact
  monkeypatch.setenv(trained.CACHE_ENV, root)
  trained.cache_root.cache_clear()
  try:
    trained.artifact("counted", lambda d: _build_counting(d, calls), size=4)
    trained.artifact("counted", lambda d: _build_counting(d, calls), size=3)
  finally:
    monkeypatch.undo()
    trained.cache_root.cache_clear()
  assert open(calls).read() == "built\n" * 2
