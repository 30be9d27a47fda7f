"""What the evaluation report's tables say, whatever format prints them: the HTML report
(lad_tf.evaluation.report), its plots (lad_tf.evaluation.figures) and docs/RESULTS.md
(pipelines/documents) read a report.json with these, so a model or a check is named the same way in
all three. Plain Python: the documents render without TensorFlow or matplotlib."""

MODEL_LABELS = {"original": "original", "defended": "LAD-defended", "baseline_clean": "clean control"}
SANITY_FAILED = "some FAILED: a robustness figure may come from masked gradients"


def model_label(name):
  """A model of the report by its role: `baseline_fgsm` is "FT on FGSM" (fine-tuned on FGSM
  examples), names of no known role (e.g. `blackbox`) stay as they are."""
  if name in MODEL_LABELS:
    return MODEL_LABELS[name]
  if name.startswith("baseline_"):
    return "FT on " + name[len("baseline_"):].upper()
  return name


def sanity_rows(sanity):
  """(model label, check, passed, detail) of each gradient-masking check in report.json's "sanity"."""
  return [(model_label(name), check, bool(result.get("passed")), str(result.get("detail", "")))
          for name, checks in (sanity.get("models") or {}).items()
          for check, result in checks.items() if isinstance(result, dict)]


def sanity_status(sanity):
  """The checks' verdict in a few words."""
  return "all passed" if sanity.get("passed") else SANITY_FAILED
