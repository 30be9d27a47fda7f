"""MkDocs hooks (mkdocs.yml `hooks:`): parts of pages written from the code at build time, so the site
never holds a hand-copied list that can drift from it.

`<!-- defences-table -->` in a page becomes the table of `python -m pipelines.defend --defence=NAME`'s
choices with their one-line descriptions, read from lad_tf/defences.py (the same text `--help` and the
model card use). The file is loaded on its own: importing the lad_tf package would start TensorFlow.
`<!-- benchmarks-index -->` becomes the list of committed benchmarks/*.json files, read from them.
"""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = "<!-- defences-table -->"


def _defences():
  spec = importlib.util.spec_from_file_location("_lad_tf_defences", os.path.join(HERE, "lad_tf", "defences.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def defences_table():
  module = _defences()
  rows = ["| `--defence` | what it is |", "|---|---|"]
  for name in module.DEFENCES:
    label = f"`{name}` (the default)" if name == module.DEFAULT_DEFENCE else f"`{name}`"
    rows.append(f"| {label} | {module.DESCRIPTIONS[name].replace('|', '&#124;')} |")
  return "\n".join(rows)




BENCHMARKS_MARKER = "<!-- benchmarks-index -->"


def _cell(text):
  return str(text).replace("|", "&#124;").replace("\n", " ")


def benchmarks_index():
  """One row per committed benchmarks/*.json: its suite or command, whether its goal was met (when it
  records one) and its status or description (when it has one), as the file says them."""
  import glob
  import json
  rows = ["| file | suite or command | goal met | what it is |", "|---|---|---|---|"]
  for path in sorted(glob.glob(os.path.join(HERE, "benchmarks", "*.json"))):
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    command = data.get("command") or data.get("suite") or ""
    if isinstance(command, list):
      command = " ".join(command)
    if command and not str(command).startswith(("python", "-m")):
      command = f"python -m pipelines.benchmark {command}"
    goal = data.get("goal_met", data.get("all_goals_met"))
    what = data.get("status") or data.get("what") or ""
    rows.append(f"| `{os.path.basename(path)}` | {'`' + _cell(command) + '`' if command else ''} | "
                f"{'' if goal is None else ('yes' if goal else 'no')} | {_cell(what)} |")
  return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
  if MARKER in markdown:
    markdown = markdown.replace(MARKER, defences_table())
  if BENCHMARKS_MARKER in markdown:
    markdown = markdown.replace(BENCHMARKS_MARKER, benchmarks_index())
  return markdown
