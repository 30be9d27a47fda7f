"""The README's generated blocks, each between its markers: the headline results (from the runs'
JSON) and the robust-training benchmark (from its committed JSON)."""
from pipelines.documents import recipe_benchmark, robust_benchmark
from pipelines.documents.dataset import readings
from pipelines.documents.formatting import pct, table
from pipelines.documents.provenance import commits_of
from pipelines.documents.runs import COMPANIONS, DATASET_TITLES, HEADLINE_ATTACKS, attack_label, load_run, ordered_rows

README_BEGIN = "<!-- results:begin (written by python -m pipelines.reproduce; do not edit by hand) -->"
README_END = "<!-- results:end -->"
ROBUST_BEGIN = "<!-- robust:begin (written by python -m pipelines.reproduce; do not edit by hand) -->"
ROBUST_END = "<!-- robust:end -->"


def headline(run, stated_commit=None):
  """The README's headline block: adaptive figures first, then the control, then the fixed set."""
  report = (run or {}).get("report")
  if not report:
    return None
  rows = [r for r in ordered_rows(report, "white_box") if r["attack"] in HEADLINE_ATTACKS + ("jsma", "cw")]
  clean = report.get("clean", {})
  body = [["clean accuracy", pct(clean.get("original")), pct(clean.get("defended")), pct(clean.get("baseline_clean"))]]
  body += [[f"{attack_label(r, report)}, adaptive (attacked itself)", pct(r.get("original_accuracy")),
            pct(r.get("defended_accuracy")), pct(r.get("baseline_clean_accuracy"))]
           for r in rows if r["attack"] in HEADLINE_ATTACKS]
  body += [[f"{attack_label(r, report)}, the paper's fixed set (the original's examples)",
            pct(r.get("original_accuracy")), pct(r.get("defended_accuracy_fixed_set")),
            pct(r.get("baseline_clean_accuracy_fixed_set"))] for r in rows]
  title = DATASET_TITLES.get(report.get("dataset"), report.get("dataset"))
  return "\n".join([f"{title}, accuracy % (git commit {commits_of(run, stated_commit)}):", "",
                    table(["", "original", "LAD-defended", "clean control"], body), ""] +
                   [f"- {s}" for s in readings(report)])


def update_readme(readme_path, runs, stated_commits=None):
  """Replaces the README's block between README_BEGIN and README_END with the headline tables; returns
  whether it changed anything (False when the markers are absent or no run has a report)."""
  stated_commits = stated_commits or {}
  blocks = [headline(load_run(path), stated_commits.get(name)) for name, path in runs.items()
            if name not in COMPANIONS]
  blocks = [b for b in blocks if b]
  if not blocks:
    return False
  body = "\n" + "\n\n".join(blocks) + "\n\nEvery figure, command and commit: docs/RESULTS.md (`make results`).\n"
  return _replace_block(readme_path, README_BEGIN, README_END, body)


def update_robust_readme(readme_path, repo):
  """Rewrites the README's robust block, from the recipe benchmark (the defend command as run) when one
  is committed, else from the robust-training benchmark; returns whether it did (markers present, a
  benchmark committed). Draws the recipe benchmark's figures."""
  recipe_benchmark.write_figures(repo)
  body = robust_block(repo)
  return body is not None and _replace_block(readme_path, ROBUST_BEGIN, ROBUST_END, body)


def robust_block(repo):
  """The README's robust block: the recipe benchmark's (the defend command as run) when one is
  committed, else the robust-training benchmark's; None without either."""
  return recipe_benchmark.readme_block(repo) or robust_benchmark.readme_block(repo)


def _replace_block(path, begin, end, body):
  """Puts `body` between the markers `begin` and `end` of the file; False (nothing written) when a
  marker is missing."""
  with open(path) as f:
    text = f.read()
  if begin not in text or end not in text:
    return False
  start, stop = text.index(begin) + len(begin), text.index(end)
  with open(path, "w") as f:
    f.write(text[:start] + body + text[stop:])
  return True
