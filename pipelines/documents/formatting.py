"""How the generated documents print a figure: percentages, losses and Markdown tables."""
import math


def pct(value):
  """An accuracy as the document prints it (percent, 2 decimals); '-' when absent."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "-"
  return f"{100 * value:.2f}"


def mse(value):
  return "-" if value is None else f"{value:.5f}"


def table(header, rows):
  out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(out)
