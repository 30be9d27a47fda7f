"""Push a new served version: `python -m pipelines.export --workdir=DIR [--base_path=...]`.

Reads DIR/defended/model.keras (or DIR/classifier/model.keras when the defence has not run),
the model card facts from DIR/metrics.json (+ DIR/evaluation/report.json), and exports with
`serving.export.export_classifier` to DIR/export/<next version>/, where a running
`tensorflow_model_server` or `serving.server` picks it up without a restart.
"""
import logging
import os

import numpy as np
from absl import app
from absl import flags

from lad_tf import cli
from pipelines import common
from serving import export as export_lib

flags.DEFINE_string("workdir", None, "Pipeline work directory (see docs/ARCHITECTURE.md).")
flags.DEFINE_string("base_path", None, "Model base path for TF Serving. Default: WORKDIR/export.")
flags.DEFINE_string("model_name", "lad", "Served model name (in models.config and warmup).")
flags.DEFINE_string("data_dir", None, "Dataset files, for the warmup/validation images.")
flags.DEFINE_integer("num_samples", 32, "Test images used for warmup and validation.", lower_bound=1)
flags.DEFINE_integer("version", None, "Explicit version number (default: the next one).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed for the random fallback images.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

log = logging.getLogger("pipelines.export")

MODEL_CANDIDATES = (("defended", "model.keras"), ("classifier", "model.keras"))


def find_model(workdir):
  """The defended classifier if present, else the plain one; returns (path, stage)."""
  for stage, name in MODEL_CANDIDATES:
    path = os.path.join(workdir, stage, name)
    if os.path.exists(path):
      return path, stage
  tried = ", ".join(os.path.join(workdir, s, n) for s, n in MODEL_CANDIDATES)
  from lad_tf.errors import ArtifactNotFoundError
  raise ArtifactNotFoundError(f"no model to export: tried {tried}; run `python -m pipelines.defend` "
                          "(or put a classifier at DIR/classifier/model.keras) first")


def _read_json(path):
  import json
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def build_model_card(workdir, stage):
  """The model card of the stage's model (lad_tf.evaluation.model_card): the defend run's defence, eps,
  clean and robust accuracy with the attack and image count, class names and dataset; the evaluation
  report's rows where pipelines.evaluate ran."""
  from lad_tf.evaluation.model_card import card_of_defend_metrics, model_card
  metrics = _read_json(os.path.join(workdir, "metrics.json"))
  report = _read_json(os.path.join(workdir, "evaluation", "report.json"))
  if not isinstance(metrics, dict):
    log.warning("%s/metrics.json not found: the model card has no dataset or accuracy", workdir)
    metrics = {}
  from lad_tf.data import datasets
  try:  # a registered name or files:PATH; an unknown one exports without class names
    class_names = datasets.get_spec(metrics["dataset"]).class_names if metrics.get("dataset") else None
  except (KeyError, OSError, ValueError):
    class_names = None
  if stage == "defended":
    card = card_of_defend_metrics(metrics, class_names)
  else:  # the undefended classifier, with the robustness stage's figures of it
    evaluation = metrics.get("robust_evaluation", {})
    card = model_card(None, evaluation={**evaluation, **(metrics.get("original") or {})},
                      class_names=class_names, dataset=metrics.get("dataset"))
  card["source"] = {"workdir": os.path.abspath(workdir), "stage": stage}
  card["query_attacks"] = query_attack_reports(workdir)
  if report is not None:  # pipelines.evaluate's report
    card["robustness"], card["robustness_evaluated"] = report, True
  return card


QUERY_ATTACKS_DIR = "attack_service"
DETECTOR_LIMITS = ("serving.server's query detector (--enable_query_detection) flags clients that send "
                   "many near-duplicate images, as Square and HopSkipJump do; it does not stop an attacker "
                   "who blinds each query with noise and shifts, one who spreads queries over many client "
                   "names, or transfer attacks that need no queries (docs/DETECTION.md)")


def query_attack_reports(workdir):
  """What `pipelines.attack_service --output=DIR/attack_service/NAME.json` measured through the
  endpoint (robust accuracy per query budget), with what the query detector does not cover;
  None when no such report was written."""
  folder = os.path.join(workdir, QUERY_ATTACKS_DIR)
  names = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
  if not names:
    return None
  keys = ("attack", "eps", "images", "query_budget", "robust_accuracy", "clean_accuracy",
          "median_queries_per_success", "refused", "queries_before_refusal", "protocol")
  reports = {}
  for name in names:
    report = _read_json(os.path.join(folder, name)) or {}
    reports[name[:-len(".json")]] = {k: report[k] for k in keys if k in report}
  return {"through_the_endpoint": reports, "detector_limits": DETECTOR_LIMITS}


def sample_images(dataset, input_shape, k, data_dir=None, seed=0):
  """k test images of `dataset`, or uniform random images of `input_shape` if it cannot load.

  Returns (images, description) so the model card can say what the warmup requests hold.
  """
  reason = "metrics.json names no dataset"
  if dataset:
    try:
      from lad_tf.data import datasets
      data = datasets.load(dataset, data_dir=data_dir)
      images = np.asarray(data.test.x[:k], dtype=np.float32)
      if tuple(images.shape[1:]) == tuple(input_shape):
        return images, f"{dataset} test split, first {len(images)}"
      reason = (f"{dataset} images are {list(images.shape[1:])}, the model takes "
                f"{list(input_shape)}")
    except Exception as e:  # Missing module, files or network: the export must still work.
      reason = f"could not load {dataset}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  log.warning("using uniform random images for warmup and validation (%s)", reason)
  rng = np.random.default_rng(seed)
  return (rng.random((k, *input_shape), dtype=np.float32),
          f"uniform random in [0, 1] ({reason})")


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO)
  try:
    import lad_tf.models  # noqa: F401  Registers any custom layers before deserialising.
  except Exception:  # pylint: disable=broad-except
    pass
  workdir = os.path.abspath(FLAGS.workdir)
  base_path = cli.writable_dir(FLAGS.base_path or os.path.join(workdir, "export"), "--base_path")
  model_path, stage = find_model(workdir)
  from lad_tf.runtime.files import load_model
  model = load_model(model_path, "classifier")
  input_shape = tuple(model.inputs[0].shape[1:])
  if any(d is None for d in input_shape):
    raise app.UsageError(f"{model_path} has an input shape {input_shape} with free dimensions; "
                         "export needs fixed H, W, C")
  card = build_model_card(workdir, stage)
  images, description = sample_images(card["dataset"], input_shape, max(1, FLAGS.num_samples),
                                      FLAGS.data_dir, FLAGS.seed)
  card["sample_images"] = description
  version_dir = export_lib.export_classifier(
      model, base_path, sample_images=images, model_name=FLAGS.model_name, model_card=card,
      version=FLAGS.version)
  print(f"exported {model_path} as {version_dir}")
  print(f"serve it: python -m serving.server --model_name={FLAGS.model_name} "
        f"--model_base_path={base_path} --rest_api_port=8501")


if __name__ == "__main__":
  common.run(main, (("data", ("workdir", "data_dir", "num_samples", "seed")),
                    ("export", ("base_path", "model_name", "version")), ("execution", ("verbose",))))
