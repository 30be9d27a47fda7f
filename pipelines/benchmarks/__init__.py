"""Benchmark suites; each module exposes `run(**options) -> dict` of figures."""
import ast

from absl import app


def suite_options(pairs):
  """{"seconds": 10, ...} from ["seconds=10", ...]; values are Python literals (true/false as flags
  spell them too, so "bfloat16=false" is never the truthy string "false"), else strings."""
  options = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise app.UsageError(f"--set takes key=value pairs, got '{pair}'")
    if value.lower() in ("true", "false"):
      options[key] = value.lower() == "true"
      continue
    try:
      options[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      options[key] = value
  return options
