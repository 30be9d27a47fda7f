"""lad_tf's public API: harden a Keras classifier, measure it the strongest way we know, export it for
TF Serving, and read your own images.

    hardened, training = lad_tf.harden(model, (x_train, y_train), eps=0.1)
    report = lad_tf.evaluate(hardened, (x_test, y_test), eps=0.1)
    lad_tf.export(hardened, "export/", model_card=report)

The command lines (`python -m pipelines.defend`, ...) run the same library functions: robust training
is `lad_tf.robust.train` and the measurement standard AutoAttack in both, with the same defaults
(DefenceRecipe, AutoAttack standard at the dataset's eps). This module sits above the library and
beside serving: `export` hands the model to serving.export.
"""
import logging
import os

import numpy as np

from lad_tf import defences
from lad_tf.errors import ConfigError

log = logging.getLogger("lad_tf")

# what the paper's LAD needs beyond a classifier and images: a decoder and boundaries, trained by the
# defend pipeline's stages
NEEDS_PIPELINE = ("lad", "lad_robust")


def harden(model, data, defence=defences.DEFAULT_DEFENCE, eps=None, *, epochs=None, init="finetune",
           train_examples=None, tradeoff=None, precision="auto", seed=0, allow_weak_model=False, state_dir=None,
           progress=None):
  """Trains a hardened copy of `model` on `data`; `model` itself is left as it was.

  Args:
    model: a Keras classifier returning logits (Sequential, functional, or subclassed with get_config).
    data: training images and labels: an (x, y) pair of arrays or a tf.data.Dataset of (x, y); images
      float32 in [0, 1] (scale uint8 pixels with x / 255), NHWC or NHW; labels class indices or one-hot.
    defence: a name of lad_tf.defences.DEFENCES that trains on images alone ("atta", the default, the
      best trade-off of lad_tf's robust benchmark; "fgsm_rs", "pgd_at", "trades", "nfgsm", "clean").
      The paper's "lad" and "lad_robust" need a decoder and boundaries: `python -m pipelines.defend`.
    eps: the L-inf radius to resist, on [0, 1] images (e.g. 0.1 Fashion-MNIST, 0.3 MNIST, 8/255 CIFAR).
    epochs, init: training epochs (default: lad_tf.data.datasets.DefenceRecipe's, 5) and where training
      starts: "finetune" (your weights) or "scratch" (the same layers, fresh weights).
    train_examples: train on this many of the images (default: all).
    tradeoff: atta's clean/robust trade-off (`--defence_tradeoff`): 0 trains on adversarial examples alone,
      beta > 0 on CE(clean) + beta KL(clean || adversarial), smaller beta giving more clean accuracy
      (default: DefenceRecipe's).
    precision: "auto" (bf16 on CPUs with AVX512-BF16 or AMX, float32 elsewhere), "float32", ...
    seed: seeds the held-out split, the shuffling and the random starts.
    allow_weak_model: train even when `model` is no better than chance on `data` (with init="finetune").
    state_dir: a folder for per-epoch backups: a killed call resumes there.
    progress: callable(str) for progress lines (default: the "lad_tf" logger).
  Returns:
    (hardened model, training report: defence, eps, epochs, examples, seconds, the guard's record).
  """
  from lad_tf.data.datasets import DefenceRecipe
  from lad_tf.robust import RobustConfig, train
  from lad_tf.runtime.execution import ExecutionConfig
  from lad_tf.runtime.training import check_better_than_chance
  if defence in NEEDS_PIPELINE:
    raise ConfigError(f"defence '{defence}' needs LAD's decoder and boundaries, which the defend pipeline trains: "
                      f"save the model (model.save('model.keras')) and run `python -m pipelines.defend "
                      f"--defence={defence} --classifier=model.keras --latent_layer=NAME` (the layer LAD cuts at)")
  if defence not in defences.DEFENCES:
    raise ConfigError(f"unknown defence '{defence}'; one of {', '.join(defences.DEFENCES)}")
  if eps is None or not 0 < float(eps) <= 1:
    raise ConfigError(f"pass eps, the L-inf radius to resist on [0, 1] images (e.g. 0.1), got {eps}")
  if init not in defences.DEFENCE_INITS:
    raise ConfigError(f"init must be one of {defences.DEFENCE_INITS}, got '{init}'")
  x, y = as_arrays(data, "data")
  if train_examples and train_examples < len(y):
    keep = np.sort(np.random.default_rng(seed).choice(len(y), train_examples, replace=False))
    x, y = x[keep], y[keep]
  model = _functional(model, x.shape[1:])
  if init == "finetune" and not allow_weak_model:
    sample = np.random.default_rng(seed).choice(len(y), min(len(y), 2000), replace=False)
    check_better_than_chance(model, x[sample], y[sample], "or pass allow_weak_model=True (or init='scratch')")
  recipe = DefenceRecipe()
  start = model
  if init == "scratch":
    import keras
    keras.utils.set_random_seed(seed)
    start = keras.models.clone_model(model)
  config = RobustConfig(method=defence, eps=float(eps), epochs=epochs or recipe.epochs,
                        learning_rate=recipe.learning_rate, lr_schedule=recipe.lr_schedule,
                        step_scale=recipe.step_scale, atta_steps=recipe.atta_steps, selection=recipe.selection,
                        weight_averaging=recipe.weight_averaging,
                        tradeoff=recipe.tradeoff if tradeoff is None else float(tradeoff),
                        guard_examples=min(1000, len(y) // 10),
                        execution=ExecutionConfig(seed=seed, precision=precision, verbose=0))
  hardened, info = train(start, x, y, config, log=progress or log.info, state_dir=state_dir)
  report = {"defence": defence, "eps": float(eps), "init": init, **info}
  hardened.lad_tf_training = {k: report[k] for k in ("defence", "eps", "init", "epochs", "train_examples")}
  return hardened, report


def evaluate(model, data, eps, *, examples=1000, version="standard", checks=200, original=None, seed=0,
             progress=None):
  """Robust accuracy of `model` under AutoAttack (white-box, on the model itself) and the
  gradient-masking checks that tell whether that figure can be trusted.

  Args:
    model: a Keras classifier returning logits (or any callable images -> logits).
    data: test images and labels never used for training, as in `harden`.
    eps: the L-inf radius of the attack.
    examples: how many images AutoAttack attacks (a seeded random subset; all when fewer).
    version: "standard" (APGD-CE, APGD-T, FAB-T, Square: the field's reference) or "fast" (the two APGDs).
    checks: images for the gradient-masking checks (0: skip them).
    original: the model before the defence, attacked on the same images for comparison.
    seed: seeds the subset and the attacks' random starts.
  Returns:
    a report: clean and robust accuracy, the attack, eps and image count, how many images each attack
    broke, the checks' verdicts (and the original's figures when given).
  """
  from lad_tf.attacks.autoattack import autoattack, figures
  from lad_tf.evaluation.sanity import gradient_masking_checks
  x, y = as_arrays(data, "data")
  pick = np.sort(np.random.default_rng(seed).choice(len(y), min(examples, len(y)), replace=False))
  x, y = x[pick], y[pick]
  say = progress or log.info

  def attacked(classifier, name):
    say(f"evaluate: AutoAttack {version} on the {name} model, {len(y)} images, eps {eps:g}")
    _, broken_by = autoattack(classifier, x, y, eps, version=version, seed=seed, log=say)
    return figures(broken_by)

  report = {"attack": f"AutoAttack {version}", "eps": float(eps), "examples": int(len(y)), **attacked(model, "given")}
  if getattr(model, "lad_tf_training", None):
    report["training"] = dict(model.lad_tf_training)
  if checks:
    found = gradient_masking_checks(model, x[:checks], y[:checks], eps, seed=seed)
    report["gradient_masking"] = {"passed": found["passed"],
                                  "failed": [k for k, v in found.items() if isinstance(v, dict) and not v["passed"]]}
  if original is not None:
    report["original"] = attacked(original, "original")
  return report


def export(model, path, *, model_card=None, sample_images=None, class_names=None, dataset=None,
           model_name="model", version=None):
  """Writes `model` as the next SavedModel version under `path` (TF Serving's layout), with a model card;
  nothing is published unless the reloaded SavedModel agrees with the Keras model. Returns the version
  folder.

  model_card: lad_tf.evaluate's report (its figures go on the card; `harden`'s settings travel with
    the model); sample_images: a few real inputs for the warm-up requests and the check (default:
    random images of the model's input shape).
  """
  from lad_tf.evaluation.model_card import model_card as card_of
  from serving import export as serving_export  # the façade sits above serving
  report = dict(model_card or {})
  training = {**report.get("training", {}), **getattr(model, "lad_tf_training", {})}
  card = card_of(training.get("defence"), eps=training.get("eps"), evaluation=report, original=report.get("original"),
                 class_names=class_names, dataset=dataset)
  if sample_images is None:
    shape = tuple(int(d) for d in model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if shape is None:
      raise ConfigError("pass sample_images (a few real inputs): the model does not declare its input shape")
    sample_images = np.random.default_rng(0).uniform(0, 1, (8, *shape)).astype(np.float32)
  return serving_export.export_classifier(model, path, sample_images=as_arrays((sample_images, None), "sample_images")[0],
                                          model_name=model_name, model_card=card, version=version)


def load_data(path):
  """Your images: a folder of class sub-folders (one per class, images inside) or an .npz with arrays
  `x` (N, H, W[, C]) and `y` (N,). Returns (x float32 in [0, 1], y int64, class names). The command
  lines read the same files with --dataset=files:PATH."""
  from lad_tf.data.sources import files
  return files.read(os.path.abspath(path))


def as_arrays(data, what):
  """(x float32 NHWC in [0, 1], y int64 or None) from an (x, y) pair or a tf.data.Dataset of (x, y)."""
  if hasattr(data, "as_numpy_iterator"):
    pairs = list(data.as_numpy_iterator())
    if not pairs:
      raise ConfigError(f"{what} is an empty dataset")
    batched = np.ndim(pairs[0][1]) >= 1 and np.ndim(pairs[0][0]) >= 4
    join = np.concatenate if batched else np.stack
    data = (join([p[0] for p in pairs]), join([p[1] for p in pairs]))
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise ConfigError(f"{what} must be an (images, labels) pair or a tf.data.Dataset of them")
  x, y = np.asarray(data[0]), data[1]
  if x.dtype == np.uint8 or (x.size and float(x.max()) > 1.0):
    raise ConfigError(f"{what}: images must be floats in [0, 1]; scale uint8 pixels with x / 255.0")
  x = x.astype(np.float32)
  if x.ndim == 3:
    x = x[..., None]
  if y is not None:
    y = np.asarray(y)
    y = np.argmax(y, axis=-1) if y.ndim == 2 else y.reshape(-1)
    if len(y) != len(x):
      raise ConfigError(f"{what}: {len(x)} images but {len(y)} labels")
    y = y.astype(np.int64)
  return x, y


def _functional(model, image_shape):
  """`model` as a model lad_tf can copy and train: Sequential and functional models as they are, a
  subclassed one wrapped in a functional model (it must implement get_config to be copied)."""
  import keras
  if isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False) or (
      model.__class__ is keras.Model):
    return model
  inputs = keras.Input(shape=image_shape)
  wrapped = keras.Model(inputs, model(inputs), name=f"{model.name}_functional")
  try:
    keras.models.clone_model(wrapped)
  except Exception as e:  # pylint: disable=broad-except  (Keras raises several types)
    raise ConfigError(f"cannot copy the subclassed model {model.name} ({type(e).__name__}): give its class a "
                      f"get_config(), or build the classifier as keras.Sequential or a functional model") from e
  return wrapped


__all__ = ["harden", "evaluate", "export", "load_data"]
