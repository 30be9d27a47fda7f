"""MkDocs hooks (mkdocs.yml `hooks:`): parts of pages written from the code at build time, so the site
never holds a hand-copied list that can drift from it.

`<!-- defences-table -->` in a page becomes the table of `python -m pipelines.defend --defence=NAME`'s
choices with their one-line descriptions, read from lad_tf/defences.py (the same text `--help` and the
model card use). The file is loaded on its own: importing the lad_tf package would start TensorFlow.
`<!-- benchmarks-index -->` becomes the list of committed benchmarks/*.json files, read from them, and
`<!-- benchmark-figures: NAME.json -->` a table of the figures benchmarks/NAME.json holds, and
`<!-- benchmark-figures: NAME.json KEY ... -->` of those under the (dotted) keys named.
"""
import importlib.util
import os
import re

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


FIGURES_MARKER = re.compile(r"<!-- benchmark-figures: ([\w.-]+\.json)((?: [\w.]+)*) -->")


def _scalars(data, prefix="", skip=("machine", "note", "status"), lists=False):
  """(dotted key, value) of every number, string or boolean in data, nested dicts included (and short
  lists, if `lists`); the keys in `skip` (by default the machine description and long notes) are left
  to the file itself."""
  for key, value in data.items():
    name = f"{prefix}{key}"
    if key in skip or name.endswith("_tree"):
      continue
    if isinstance(value, dict):
      yield from _scalars(value, name + ".", skip, lists)
    elif isinstance(value, float):
      yield name, f"{value:.4g}"
    elif isinstance(value, (int, bool, str)) and len(str(value)) <= 120:
      yield name, value
    elif lists and isinstance(value, list) and len(str(value)) <= 120:
      yield name, ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) or "none"


def benchmark_figures(name, keys=()):
  """A two-column table of one committed benchmark file's figures, as the file holds them. With
  `keys` (dotted paths), only the figures under them, short lists and the machine included when
  named."""
  import json
  with open(os.path.join(HERE, "benchmarks", name), encoding="utf-8") as f:
    data = json.load(f)
  rows = [f"Figures of `benchmarks/{name}`, as the file holds them:", "", "| field | value |", "|---|---|"]
  skip = ("note", "status") if keys else ("machine", "note", "status")
  rows += [f"| `{key}` | {_cell(value)} |" for key, value in _scalars(data, skip=skip, lists=bool(keys))
           if not keys or any(key == k or key.startswith(k + ".") for k in keys)]
  return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
  markdown = FIGURES_MARKER.sub(lambda found: benchmark_figures(found.group(1), found.group(2).split()), markdown)
  if MARKER in markdown:
    markdown = markdown.replace(MARKER, defences_table())
  if BENCHMARKS_MARKER in markdown:
    markdown = markdown.replace(BENCHMARKS_MARKER, benchmarks_index())
  return markdown
