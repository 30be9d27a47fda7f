"""No measured figure in the docs is typed by hand: each comes from a committed benchmarks/*.json.

Pages name a figure with a `<!-- benchmark: NAME.json ...{dotted.field:spec}... -->` marker, which
docs_hooks.py fills when the site is built; the README's and RESULTS.md's robust-training blocks are
written by `python -m pipelines.reproduce`. These tests fail when a marker names a file or a field
that is not committed, when the filled text is not the file's value, when a generated block no
longer says what its JSON says, and when a page holds a measurement outside a marker.
No TensorFlow: docs_hooks and pipelines.documents read JSON only."""
import glob
import json
import os
import re
import string
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import docs_hooks  # noqa: E402  (the MkDocs hook module at the repository root)

PAGES = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")) + glob.glob(os.path.join(REPO, "docs", "guide", "*.md")))
GENERATED = ("RESULTS.md", "changelog.md")  # written by pipelines.reproduce / included from CHANGELOG.md


def _rel(path):
  return os.path.relpath(path, REPO)


def markers():
  """(page, file name, template) of every `benchmark:` marker of the docs."""
  return [(_rel(page), found.group(1), found.group(2)) for page in PAGES
          for found in docs_hooks.TEMPLATE_MARKER.finditer(open(page, encoding="utf-8").read())]


def test_the_pages_name_their_figures_by_marker():
  pages = {page for page, _, _ in markers()}
  assert {"docs/SERVING.md", "docs/DETECTION.md", "docs/SCALING.md", "docs/ARCHITECTURE.md"} <= pages, pages


@pytest.mark.parametrize("page, name, template", markers())
def test_every_marker_names_a_committed_file_and_field_and_shows_its_value(page, name, template):
  with open(os.path.join(REPO, "benchmarks", name), encoding="utf-8") as f:
    data = json.load(f)
  filled = docs_hooks.benchmark_template(name, template)
  fields = [(dotted, spec) for _, dotted, spec, _ in string.Formatter().parse(template) if dotted]
  assert fields, f"{page}: a benchmark marker with no field"
  for dotted, spec in fields:
    value = data
    for key in dotted.split("."):  # walked here on its own, not through docs_hooks.field
      value = value[int(key)] if isinstance(value, list) else value[key]
    items = value if isinstance(value, list) else [value]
    shown = [("yes" if v else "no") if isinstance(v, bool) else format(v, spec or "") for v in items]
    assert ", ".join(shown) in filled, f"{page}: {name} {dotted} is {value!r}, the page shows {filled!r}"


def _write(root, name, data):
  os.makedirs(os.path.join(root, "benchmarks"), exist_ok=True)
  with open(os.path.join(root, "benchmarks", name), "w") as f:
    json.dump(data, f)


def test_a_marker_is_filled_from_its_file_and_a_wrong_name_is_refused(tmp_path):
  _write(tmp_path, "b.json", {"speed": {"ratio": 1.639, "rounds": [1.74, 1.22]}, "met": False, "n": 17577,
                               "model": "lenet5"})
  page = ("a <!-- benchmark: b.json {speed.ratio:.2f}x (rounds {speed.rounds:.1f}; met: {met}) --> b\n"
          "<!-- benchmark: b.json\n| {n:,} | {speed.rounds.1} | {{x}} |\n-->\n")
  assert docs_hooks.fill_markers(page, root=str(tmp_path)) == "a 1.64x (rounds 1.7, 1.2; met: no) b\n| 17,577 | 1.22 | {x} |\n"
  for bad, said in [("{speed.ratioo}", "no field 'speed.ratioo'"), ("{speed.rounds.2}", "no field 'speed.rounds.2'"),
                    ("{speed}", "'speed' is a group"), ("{model:.2f}", "does not take the format"),
                    ("{}", "names no field")]:
    with pytest.raises(docs_hooks.FigureError, match=re.escape(said)):
      docs_hooks.fill_markers(f"<!-- benchmark: b.json {bad} -->", root=str(tmp_path))
  with pytest.raises(docs_hooks.FigureError, match=re.escape("benchmarks/gone.json does not exist")):
    docs_hooks.fill_markers("<!-- benchmark: gone.json {n} -->", root=str(tmp_path))


# A measurement typed into prose: a decimal with a unit of time, size, rate or ratio, or a request or
# image rate; and the words of a page that narrates how the work went rather than what the code does.
TYPED_FIGURE = re.compile(r"(?<![\w.])\d[\d,]*\.\d+\s?(%|x\b|ms\b|µs\b|s\b|min\b|MB\b|GB\b)"
                          r"|\b\d[\d,]*\s?(requests/s|images/s|µs)\b")
NARRATION = re.compile(r"\b(side run|was tried|tried and not kept|issue \d+|session)\b", re.IGNORECASE)


def prose(text):
  """A page without its markers, generated blocks, code blocks and inline code."""
  text = docs_hooks.TEMPLATE_MARKER.sub("", text)
  text = re.sub(r"<!-- (robust|results):begin.*?<!-- \1:end -->", "", text, flags=re.DOTALL)
  text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
  return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", [p for p in PAGES if os.path.basename(p) not in GENERATED] +
                         [os.path.join(REPO, "README.md")], ids=_rel)
def test_no_page_types_a_measurement_or_narrates_the_work(page):
  text = prose(open(page, encoding="utf-8").read())
  typed = [m.group(0) for m in TYPED_FIGURE.finditer(text)] + [m.group(0) for m in NARRATION.finditer(text)]
  assert typed == [], f"{_rel(page)}: write these through a benchmark marker (or leave them out): {typed}"


def test_the_check_sees_a_typed_figure():
  assert TYPED_FIGURE.search(prose("median 991 vs 605 requests/s: **1.64x**; p99 61.9 ms"))
  assert not TYPED_FIGURE.search(prose("<!-- benchmark: serving.json {batching.speedup:.2f}x --> `1.5x`"))


def _robust_lines(text):
  """The table rows and readings of a robust-training block (its first paragraph names the commit,
  which depends on the checkout's git history)."""
  return [line for line in text.splitlines() if line.startswith(("| ", "- "))]


def test_the_readme_and_results_robust_blocks_say_what_the_committed_json_says():
  from pipelines.documents import readme, robust_benchmark
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  block = text[text.index(readme.ROBUST_BEGIN) + len(readme.ROBUST_BEGIN):text.index(readme.ROBUST_END)]
  assert _robust_lines(block) == _robust_lines(readme.robust_block(REPO)), \
      "README's robust block is stale: run python -m pipelines.reproduce --render_only (make results)"
  with open(os.path.join(REPO, "docs", "RESULTS.md"), encoding="utf-8") as f:
    results = f.read()
  section = robust_benchmark.section(REPO)
  assert _robust_lines(section) and all(line in results for line in _robust_lines(section)), \
      "docs/RESULTS.md's robust-training section is stale: run python -m pipelines.reproduce --render_only"
