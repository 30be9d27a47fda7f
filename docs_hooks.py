"""MkDocs hooks (mkdocs.yml `hooks:`): parts of pages written from the code at build time, so the site
never holds a hand-copied list that can drift from it.

`<!-- defences-table -->` in a page becomes the table of `python -m pipelines.defend --defence=NAME`'s
choices with their one-line descriptions, read from lad_tf/defences.py (the same text `--help` and the
model card use). The file is loaded on its own: importing the lad_tf package would start TensorFlow.
`<!-- benchmarks-index -->` becomes the list of committed benchmarks/*.json files, read from them, and
`<!-- benchmark-figures: NAME.json -->` a table of the figures benchmarks/NAME.json holds,
`<!-- recipe-benchmark -->` the recipe benchmark's tables and figures (the default command as run),
`<!-- recipe-screening: NAME.json -->` a recipe screening file's table and figure,
and `<!-- benchmark: NAME.json TEMPLATE -->` its TEMPLATE (inline, or lines of prose or a table) with each
`{dotted.field:spec}` replaced by that field of benchmarks/NAME.json, formatted by Python's format spec
(a list's items joined by commas, a boolean as yes/no). A missing file or field fails the build.
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


FIGURES_MARKER = re.compile(r"<!-- benchmark-figures: ([\w.-]+\.json) -->")


def _scalars(data, prefix=""):
  """(dotted key, value) of every number, string or boolean in data, nested dicts included; the machine
  description and long notes are left to the file itself."""
  for key, value in data.items():
    name = f"{prefix}{key}"
    if key in ("machine", "note", "status") or name.endswith("_tree"):
      continue
    if isinstance(value, dict):
      yield from _scalars(value, name + ".")
    elif isinstance(value, float):
      yield name, f"{value:.4g}"
    elif isinstance(value, (int, bool, str)) and len(str(value)) <= 120:
      yield name, value


def benchmark_figures(name):
  """A two-column table of one committed benchmark file's figures, as the file holds them."""
  import json
  with open(os.path.join(HERE, "benchmarks", name), encoding="utf-8") as f:
    data = json.load(f)
  rows = [f"Figures of `benchmarks/{name}`, as the file holds them:", "", "| field | value |", "|---|---|"]
  rows += [f"| `{key}` | {_cell(value)} |" for key, value in _scalars(data)]
  return "\n".join(rows)


RECIPE_MARKER = "<!-- recipe-benchmark -->"


def recipe_benchmark(page_path):
  """The recipe benchmark's tables and Pareto figures (pipelines.documents.recipe_benchmark: the defend
  command as users run it, and the settings tried beside it)."""
  return (_recipe_documents().section(HERE, heading="###", figures=_figures_dir(page_path))
          or "No recipe benchmark is committed.")


def _recipe_documents():
  import sys
  sys.path.insert(0, HERE)
  from pipelines.documents import recipe_benchmark
  return recipe_benchmark


def _figures_dir(page_path):
  """docs/figures/ as the page at `page_path` (relative to docs/) links it."""
  return "../" * page_path.count("/") + "figures/"


SCREENING_MARKER = re.compile(r"<!-- recipe-screening: ([\w.-]+\.json) -->")


def recipe_screening(name, page_path):
  """A recipe screening file's table and figure (pipelines.documents.recipe_benchmark.screening_section)."""
  return _recipe_documents().screening_section(HERE, name, figures=_figures_dir(page_path))


TEMPLATE_MARKER = re.compile(r"<!-- benchmark: ([\w.-]+\.json)(\s.*?)-->", re.DOTALL)


class FigureError(ValueError):
  """A `benchmark:` marker names a file or a field the committed benchmarks do not hold."""


def load_benchmark(name, root=HERE):
  """benchmarks/NAME.json as a dict, or a FigureError naming the file."""
  import json
  path = os.path.join(root, "benchmarks", name)
  if not os.path.isfile(path):
    raise FigureError(f"benchmarks/{name} does not exist")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def field(data, dotted, name="the file"):
  """The value at `dotted` (keys and list positions joined by dots, e.g. rounds.0.p99_ms) in data."""
  value = data
  for key in dotted.split("."):
    if isinstance(value, dict) and key in value:
      value = value[key]
    elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
      value = value[int(key)]
    else:
      raise FigureError(f"benchmarks/{name} has no field '{dotted}'")
  if value is None or isinstance(value, dict):
    raise FigureError(f"benchmarks/{name}: field '{dotted}' is {'empty' if value is None else 'a group'}; "
                      f"name one number, text or list")
  return value


def formatted(value, spec=""):
  """One field as the page shows it."""
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, list):
    return ", ".join(formatted(item, spec) for item in value)
  return format(value, spec)


def fill(template, data, name="the file"):
  """`template` with each {dotted.field:spec} replaced by that field of data ({{ and }}: braces)."""
  import string
  out = []
  for literal, dotted, spec, conversion in string.Formatter().parse(template):
    out.append(literal)
    if dotted is None:
      continue
    if not dotted or conversion:
      raise FigureError(f"benchmarks/{name}: a placeholder '{{{dotted}{'!' + conversion if conversion else ''}}}' "
                        f"names no field; write {{dotted.field:spec}}")
    try:
      out.append(formatted(field(data, dotted.strip(), name), spec or ""))
    except (TypeError, ValueError) as e:
      if isinstance(e, FigureError):
        raise
      raise FigureError(f"benchmarks/{name}: field '{dotted}' does not take the format '{spec}' ({e})") from e
  return "".join(out)


def benchmark_template(name, template, root=HERE):
  """A `benchmark:` marker's text, filled from benchmarks/NAME.json (one space or line break around the
  template belongs to the marker)."""
  template = template[1:] if template[:1] in (" ", "\n") else template
  template = template[:-1] if template[-1:] in (" ", "\n") else template
  return fill(template, load_benchmark(name, root), name)


def fill_markers(markdown, root=HERE):
  """Every `benchmark:` marker of a page replaced by its text."""
  return TEMPLATE_MARKER.sub(lambda found: benchmark_template(found.group(1), found.group(2), root), markdown)


def on_page_markdown(markdown, page, config, files):
  if RECIPE_MARKER in markdown:
    markdown = markdown.replace(RECIPE_MARKER, recipe_benchmark(page.file.src_path))
  markdown = SCREENING_MARKER.sub(lambda found: recipe_screening(found.group(1), page.file.src_path), markdown)
  try:
    markdown = fill_markers(markdown)
  except FigureError as e:
    from mkdocs.exceptions import PluginError
    raise PluginError(f"{page.file.src_path}: {e}") from e
  markdown = FIGURES_MARKER.sub(lambda found: benchmark_figures(found.group(1)), markdown)
  if MARKER in markdown:
    markdown = markdown.replace(MARKER, defences_table())
  if BENCHMARKS_MARKER in markdown:
    markdown = markdown.replace(BENCHMARKS_MARKER, benchmarks_index())
  return markdown
