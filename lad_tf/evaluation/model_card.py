"""The model card an exported model carries (assets.extra/model_card.json): what defence made it, at
which eps, how accurate it is clean and under which attack on how many images, its classes, its data
and the code's commit. Written here once, for the Python API, `defend`'s export and `pipelines.export`."""
import os
import subprocess

from lad_tf import defences


def model_card(defence, eps=None, evaluation=None, original=None, class_names=None, dataset=None, **extra):
  """The card's facts.

  defence: a name of lad_tf.defences.DEFENCES, or None for an undefended classifier.
  eps: the L-inf radius the defence trained at.
  evaluation: {"clean_accuracy", "robust_accuracy", "attack", "eps", "examples", ...} of the exported
    model (lad_tf.evaluate's report, or a defend run's robustness figures); None: not evaluated.
  original: the same figures of the model before the defence, on the same images.
  extra: further facts kept as they are (e.g. training time, the work directory).
  """
  evaluation = evaluation or {}
  card = {
      "defence": defence or "none",
      "defence_description": defences.DESCRIPTIONS.get(defence, "no defence: the classifier as trained"),
      "eps": eps,
      "clean_accuracy": evaluation.get("clean_accuracy"),
      "robust_accuracy": evaluation.get("robust_accuracy"),
      "robustness_evaluated": evaluation.get("robust_accuracy") is not None,
      "attack": evaluation.get("attack"),
      "attack_eps": evaluation.get("eps"),
      "examples": evaluation.get("examples"),
      "class_names": list(class_names) if class_names is not None else None,
      "dataset": dataset,
      "commit": code_commit(),
  }
  if original:
    card["original"] = {k: original.get(k) for k in ("clean_accuracy", "robust_accuracy")}
  return {**card, **extra}


def card_of_defend_metrics(metrics, class_names):
  """The card of a defend run's defended model, from its metrics.json."""
  defended, evaluation = metrics.get("defended", {}), metrics.get("robust_evaluation", {})
  figures = {"clean_accuracy": defended.get("clean_accuracy"), "robust_accuracy": defended.get("robust_accuracy"),
             "attack": evaluation.get("attack"), "eps": evaluation.get("eps"), "examples": evaluation.get("examples")}
  return model_card(metrics.get("defence"), eps=defended.get("eps"), evaluation=figures,
                    original=metrics.get("original"), class_names=class_names, dataset=metrics.get("dataset"))


def code_commit():
  """The git commit of the lad_tf checkout that made the model (None outside a git checkout)."""
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                         capture_output=True, text=True, timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None
