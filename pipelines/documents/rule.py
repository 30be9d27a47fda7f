"""The rule that writes the documents' sentences: a difference between two accuracies counts only
beyond two standard errors, and a gain counts for LAD only beyond the clean control's."""
import math


def margin(p, q, n):
  """Two standard errors of the difference of two accuracies measured on n examples each (at least
  one example): a difference smaller than this is not read as a change."""
  if n <= 0:
    return float("inf")
  return max(2 * math.sqrt((p * (1 - p) + q * (1 - q)) / n), 1.0 / n)


def verdict(original, lad, control, n):
  """The reading of one row: does LAD raise accuracy over the original, and beyond the clean control?

  Returns (code, sentence); code is one of "no_gain" (including a loss), "helps" (beyond the control), "control_explains"
  (the control gains as much), "no_control" (no control measured), "unknown" (a figure is missing)."""
  if original is None or lad is None:
    return "unknown", "not measured"
  gain = lad - original
  if gain < -margin(original, lad, n):
    return "no_gain", f"LAD lowers accuracy ({100 * gain:+.2f} points, beyond sampling error)"
  if gain <= margin(original, lad, n):
    return "no_gain", f"no gain for LAD ({100 * gain:+.2f} points, within sampling error)"
  if control is None:
    return "no_control", f"LAD {100 * gain:+.2f} points; no clean control measured, so not attributable to LAD"
  if lad - control > margin(lad, control, n):
    return "helps", (f"LAD helps on this set: {100 * gain:+.2f} points, {100 * (lad - control):+.2f} beyond the "
                     f"clean control")
  return "control_explains", (f"the clean control explains the gain (LAD {100 * gain:+.2f} points, control "
                              f"{100 * (control - original):+.2f})")
