"""The documentation site builds with `mkdocs build --strict` and no warning: every page in the nav
exists, every link and anchor resolves, the API reference finds every object it names, and every
benchmark figure a page names is filled from the committed JSON."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the site is built from (tests/BUILD gives the Bazel test the same files).
SITE_SOURCES = ("mkdocs.yml", "docs_hooks.py", "CHANGELOG.md", "docs", "benchmarks")


def build(root, site_dir):
  """Runs `mkdocs build --strict` on root's mkdocs.yml; returns (exit status, output)."""
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", os.path.join(root, "mkdocs.yml"),
       "--site-dir", str(site_dir)], cwd=root, capture_output=True, text=True, timeout=120)
  return result.returncode, result.stdout + result.stderr


def warnings_of(output):
  return [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]


def test_mkdocs_is_installed():
  result = subprocess.run([sys.executable, "-c", "import mkdocs, mkdocstrings_handlers.python"],
                          capture_output=True, text=True)
  assert result.returncode == 0, ("the docs site needs mkdocs and mkdocstrings-python: "
                                  "pip install -e '.[test]'\n" + result.stderr)


def test_site_builds_strict_without_warnings(tmp_path):
  status, output = build(REPO, tmp_path / "site")
  assert status == 0 and not warnings_of(output), output
  for page in ("index.html", "getting-started/index.html", "api/index.html", "changelog/index.html"):
    assert (tmp_path / "site" / page).is_file(), page
  api = (tmp_path / "site" / "api" / "index.html").read_text()
  for name in ("lad_tf.attacks.autoattack.autoattack", "lad_tf.data.datasets.load", "lad_tf.robust.train",
               "lad_tf.run.defend.run_defend", "lad_tf.runtime.execution.fit",
               "lad_tf.runtime.execution_config.ExecutionConfig"):
    assert f'id="{name}"' in api, f"the API reference lost {name}"
  # the hook filled the pages' benchmark markers from the committed JSON, and no marker is left unfilled
  serving = (tmp_path / "site" / "SERVING" / "index.html").read_text()
  with open(os.path.join(REPO, "benchmarks", "serving.json")) as f:
    figures = json.load(f)
  assert f"<strong>{figures['batching']['speedup']:.2f}x</strong>" in serving
  assert f"+{figures['version_swaps']['growth_mb']:.1f} MB" in serving
  for page in glob.glob(str(tmp_path / "site" / "**" / "index.html"), recursive=True):
    text = open(page).read()
    assert "<!-- benchmark" not in text, page


@pytest.mark.parametrize("planted, named", [
    ("See [the missing page](no-such-page.md).", "no-such-page.md"),
    ("Speed: <!-- benchmark: serving.json {batching.no_such_field:.2f} -->x.", "batching.no_such_field"),
    ("Speed: <!-- benchmark: no_such_file.json {speedup} -->x.", "no_such_file.json"),
])
def test_a_broken_link_or_figure_fails_the_build(tmp_path, planted, named):
  """The check has teeth: the same sources with a link to a page that does not exist, or a figure
  from a field or file the benchmarks do not hold, fail and say which."""
  root = tmp_path / "repo"
  root.mkdir()
  for name in SITE_SOURCES:
    source = os.path.join(REPO, name)
    (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, root / name)
  os.symlink(os.path.join(REPO, "lad_tf"), root / "lad_tf")
  with open(root / "docs" / "index.md", "a") as f:
    f.write(f"\n{planted}\n")
  status, output = build(str(root), tmp_path / "site")
  assert status != 0 and named in output, output
