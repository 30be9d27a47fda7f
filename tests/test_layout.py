"""The layout holds: lad_tf's packages import only the layers below them, the library never imports
serving or pipelines (nor serving pipelines), nothing imports in a circle, and no module or function
outgrows what a reader takes in at once. Read from the source (ast), so lazy imports count too."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("lad_tf", "serving", "pipelines")  # each may import only those before it
# lad_tf's packages, lowest first: a module may import its own package and those below it
LAYERS = (("errors", "defences", "choices"), ("data",), ("models",), ("runtime",), ("attacks",), ("lad",), ("robust",),
          ("evaluation",), ("run",))
# the public API (lad_tf.harden, evaluate, export) sits above the library and beside serving: its export
# hands the model to serving.export (lazily, inside the function)
FACADE = ("lad_tf.api",)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules():
  """{dotted name: path} of every module of the three packages."""
  out = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          out[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
  return out


MODULES = _modules()
TREES = {name: ast.parse(open(path).read(), path) for name, path in MODULES.items()}


def imports_of(name, tree=None):
  """The project modules `name` imports anywhere in its source (a name imported from a package
  counts as the module it names when there is one)."""
  tree = tree or TREES[name]
  package = name if MODULES[name].endswith("__init__.py") else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
      found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
  return {module for module in found if module in MODULES and module != name}


def layer_of(name):
  parts = name.split(".")
  if parts[0] != "lad_tf" or len(parts) < 2:
    return None
  return next((rank for rank, members in enumerate(LAYERS) if parts[1] in members), None)


def upward_imports(graph):
  """(importer, imported) pairs that reach above the importer's layer or package."""
  bad = []
  for name, imported in graph.items():
    for other in imported:
      top, other_top = name.split(".")[0], other.split(".")[0]
      allowed = PACKAGES.index("serving") if name in FACADE else PACKAGES.index(top)
      if PACKAGES.index(other_top) > allowed:
        bad.append((name, other))
      elif layer_of(name) is not None and layer_of(other) is not None and layer_of(other) > layer_of(name):
        bad.append((name, other))
  return sorted(bad)


def circles(graph):
  """The groups of modules that import each other, directly or round a longer loop (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for other in sorted(graph.get(node, ())):
      if other not in index:
        visit(other)
        low[node] = min(low[node], low[other])
      elif other in on_stack:
        low[node] = min(low[node], index[other])
    if low[node] == index[node]:
      group = set()
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.add(member)
        if member == node:
          break
      if len(group) > 1:
        found.append(sorted(group))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def _graph():
  # a package's __init__ re-exports its modules: an edge into it is an edge into them, not a circle
  plain = {name for name, path in MODULES.items() if not path.endswith("__init__.py")}
  return {name: imports_of(name) & plain for name in plain}


def test_no_module_imports_above_its_layer():
  assert upward_imports(_graph()) == []


def test_no_import_circle():
  assert circles(_graph()) == []


def test_modules_and_functions_stay_short():
  long_modules = {os.path.relpath(MODULES[name], ROOT): n for name in MODULES
                  if (n := open(MODULES[name]).read().count("\n")) > MAX_MODULE_LINES}
  long_functions = {f"{os.path.relpath(MODULES[name], ROOT)}::{node.name}": node.end_lineno - node.lineno + 1
                    for name, tree in TREES.items() for node in ast.walk(tree)
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
  assert (long_modules, long_functions) == ({}, {})


@pytest.mark.parametrize("source, expected_problem", [
    ("from lad_tf.run import workdir\n", "upward"),            # the library's runtime reaching into run/
    ("from serving import export\n", "upward"),                 # the library importing serving
    ("from lad_tf.runtime import execution\n", "circle"),       # execution imports custom_loop already
])
def test_the_checks_see_a_planted_fault(source, expected_problem):
  """Each check fails on a fault planted into lad_tf.runtime.custom_loop's imports."""
  name = "lad_tf.runtime.custom_loop"
  planted = ast.parse(open(MODULES[name]).read() + source)
  graph = _graph()
  graph[name] = imports_of(name, planted) & set(graph)
  if expected_problem == "upward":
    assert any(importer == name for importer, _ in upward_imports(graph))
  else:
    assert any(name in group for group in circles(graph))
