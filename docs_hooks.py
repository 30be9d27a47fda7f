"""MkDocs hooks (mkdocs.yml `hooks:`): parts of pages written from the code at build time, so the site
never holds a hand-copied list that can drift from it.

`<!-- defences-table -->` in a page becomes the table of `python -m pipelines.defend --defence=NAME`'s
choices with their one-line descriptions, read from lad_tf/defences.py (the same text `--help` and the
model card use). The file is loaded on its own: importing the lad_tf package would start TensorFlow.
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


def on_page_markdown(markdown, page, config, files):
  if MARKER in markdown:
    markdown = markdown.replace(MARKER, defences_table())
  return markdown
