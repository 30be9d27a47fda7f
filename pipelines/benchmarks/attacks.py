"""Attack benchmark: our batched JSMA, CW-L2, APGD-CE and AutoAttack against ART's, same model, same
images.

`python -m pipelines.benchmark attacks [--dataset=fashion_mnist|digits] [--n=100] [--seed=0]
    [--set=autoattack_n=1000,art_autoattack_n=1000]`

A LeNet-5 is trained (Fashion-MNIST: 2 epochs; digits: 15 epochs), n test images are drawn
stratified by class, each targeted attack gets one random other class per image (the same targets
for both sides). Both sides use the same stated settings; ART gets batch_size = n (its fastest).
Ours is timed twice: the first call includes tf.function tracing ("cold"), the second is "warm";
the speed-up is ART's seconds per image over our warm seconds per image. ART's CW-L2 takes about
4 s per image here, so it runs on the first `ART_CW_IMAGES` images only (reported per image).
cleverhans FGSM / PGD-40 timings are listed for reference.

AutoAttack runs first, on a fresh process's first call (so "cold" counts every graph trace):
ours (standard: APGD-CE, APGD-T, FAB-T, Square) against ART's `AutoAttack` with its defaults
(APGD-CE and untargeted APGD-DLR with 5 restarts each, DeepFool, Square with 5 restarts; APGD's first
step set to 2 * eps as in Croce & Hein; batch size = all images), on `autoattack_n` images at the
dataset's eps. ART's run can be limited to the first `art_autoattack_n` of them (seconds are then
compared per image). The same images also cross-check single attacks (APGD-CE, APGD-DLR, Square with
the same settings on both sides): robust accuracy, ours vs ART.

Needs ART (the `[bench]` extra): `pip install -e '.[bench]'`.
"""
import time

import numpy as np

ART_CW_IMAGES = 10
SETTINGS = {
    "jsma": {"theta": 1.0, "gamma": 0.1},
    "cw": {"max_iterations": 20, "binary_search_steps": 9, "initial_const": 0.01, "confidence": 0.0,
           "ours_learning_rate": 0.1, "art_learning_rate": 0.01},
    "apgd": {"max_iter": 20, "restarts": 1},
}


def _say(message):
  print(message, flush=True)


def _measures(model, x, x_adv, y, target, targeted):
  """lad_tf.evaluation.protocol.attack_stats (the evaluation's measure of an attack) under the names
  benchmarks/attacks.json has always used."""
  from lad_tf.evaluation.protocol import attack_stats
  stats = attack_stats(model, x, x_adv, y, target if targeted else None)
  return {"success_rate": stats.pop("attack_success_rate"), **stats}


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _timed_cpu(fn):
  """(result, wall seconds, CPU seconds of this process over all threads): on a shared machine the
  CPU time is the steadier measure of work."""
  cpu = time.process_time()
  out, seconds = _timed(fn)
  return out, seconds, time.process_time() - cpu


def _art_classifier(model, spec):
  import tensorflow as tf
  from art.estimators.classification import TensorFlowV2Classifier
  return TensorFlowV2Classifier(
      model=model, nb_classes=spec.num_classes, input_shape=spec.image_shape,
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0))


def _require_art():
  try:
    import art  # noqa: F401
    import multiprocess  # noqa: F401  (ART's AutoAttack needs it and does not declare it)
  except ImportError as error:
    raise SystemExit(f"benchmark attacks compares with ART (adversarial-robustness-toolbox) and needs "
                     f"{error.name}, which is not installed: pip install -e '.[bench]'") from None


def _autoattack_figures(model, spec, x, y, eps, seed, art_n, check_n):
  """Ours vs ART's AutoAttack, then single-attack cross-checks on the first check_n of the images."""
  from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

  from lad_tf import attacks
  n = len(x)
  accuracy = lambda xs, ys, x_adv: float(np.mean(attacks.predict(model, x_adv) == ys))
  _say(f"[attacks] autoattack: ours (standard, first call) on {n} images at eps {eps}")
  (x_ours, broken_by), ours_seconds, ours_cpu = _timed_cpu(lambda: attacks.autoattack(model, x, y, eps,
                                                                                    seed=seed))
  _say(f"[attacks] autoattack: ours {ours_seconds:.1f} s ({ours_cpu:.1f} s CPU), robust accuracy {accuracy(x, y, x_ours):.4f}")
  (x_fast, _), fast_seconds = _timed(lambda: attacks.autoattack(model, x, y, eps, version="fast", seed=seed))
  art_model = _art_classifier(model, spec)
  _say(f"[attacks] autoattack: ART (defaults, eps_step 2*eps) on {art_n} images")
  art_attack = AutoAttack(art_model, norm=np.inf, eps=eps, eps_step=2 * eps, batch_size=art_n)
  x_art, art_seconds, art_cpu = _timed_cpu(lambda: art_attack.generate(x[:art_n], y=y[:art_n]))
  x_art = np.clip(x_art.astype(np.float32), 0.0, 1.0)
  counts = {name: int(np.sum(broken_by == name)) for name in sorted(set(broken_by))}
  row = {
      "images": n, "eps": eps,
      "ours": {"seconds_cold": ours_seconds, "s_per_image": ours_seconds / n, "cpu_seconds": ours_cpu,
               "cpu_s_per_image": ours_cpu / n, "version": "standard",
               "robust_accuracy": accuracy(x, y, x_ours),
               "robust_accuracy_on_art_images": accuracy(x[:art_n], y[:art_n], x_ours[:art_n]),
               "broken_by": {k if k else "robust": v for k, v in counts.items()},
               "max_linf": float(np.max(np.abs(x_ours - x)))},
      "ours_fast": {"seconds": fast_seconds, "robust_accuracy": accuracy(x, y, x_fast)},
      "art": {"seconds_cold": art_seconds, "s_per_image": art_seconds / art_n, "cpu_seconds": art_cpu,
              "cpu_s_per_image": art_cpu / art_n, "images": art_n,
              "attacks": "APGD-CE x5, APGD-DLR x5 (untargeted), DeepFool, Square x5 (ART 1.20.1 defaults)",
              "robust_accuracy": accuracy(x[:art_n], y[:art_n], x_art),
              "max_linf": float(np.max(np.abs(x_art - x[:art_n])))},
  }
  row["speedup_cold"] = row["art"]["s_per_image"] / max(row["ours"]["s_per_image"], 1e-9)
  row["speedup_cold_cpu"] = row["art"]["cpu_s_per_image"] / max(row["ours"]["cpu_s_per_image"], 1e-9)
  row["goal_met"] = bool(row["speedup_cold"] >= 10 and
                         row["ours"]["robust_accuracy_on_art_images"] <= row["art"]["robust_accuracy"])
  _say(f"[attacks] autoattack: ART {art_seconds:.1f} s ({art_cpu:.1f} s CPU) for {art_n}, robust accuracy "
       f"{row['art']['robust_accuracy']:.4f}; speed-up (cold, per image) x{row['speedup_cold']:.1f} wall, "
       f"x{row['speedup_cold_cpu']:.1f} CPU")

  x, y = x[:check_n], y[:check_n]
  n = len(x)
  checks = {"images": n}
  settings = {"apgd_iter": 100, "restarts": 1, "square_queries": 5000, "square_p_init": 0.8,
              "square_schedule": "rescaled to the budget on both sides (ART's)"}
  for name, ours_fn, art_fn in (
      ("apgd-ce", lambda: attacks.apgd(model, x, y, eps, loss="ce", seed=seed),
       lambda: AutoProjectedGradientDescent(art_model, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                            nb_random_init=1, batch_size=n, loss_type="cross_entropy",
                                            verbose=False)),
      ("apgd-dlr", lambda: attacks.apgd(model, x, y, eps, loss="dlr", seed=seed),
       lambda: AutoProjectedGradientDescent(art_model, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                            nb_random_init=1, batch_size=n,
                                            loss_type="difference_logits_ratio", verbose=False)),
      ("square", lambda: attacks.square(model, x, y, eps, rescale_schedule=True, seed=seed),
       lambda: SquareAttack(art_model, norm=np.inf, eps=eps, max_iter=5000, p_init=0.8, nb_restarts=1,
                            batch_size=n, verbose=False))):
    _say(f"[attacks] cross-check {name}: ours and ART on {n} images")
    x_o, seconds_o = _timed(ours_fn)
    x_a, seconds_a = _timed(lambda: art_fn().generate(x, y=y))
    checks[name] = {"ours": accuracy(x, y, x_o), "art": accuracy(x, y, np.clip(x_a, 0, 1).astype(np.float32)),
                    "ours_seconds": seconds_o, "art_seconds": seconds_a}
    checks[name]["difference"] = checks[name]["ours"] - checks[name]["art"]
    _say(f"[attacks] cross-check {name}: robust accuracy ours {checks[name]['ours']:.4f}, ART "
         f"{checks[name]['art']:.4f}")
  return row, {"settings": settings, **checks}


def _trained_lenet(dataset, seed):
  """(spec, data, model, epochs, test accuracy): the LeNet-5 both sides attack."""
  import keras
  import tempfile

  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.runtime import training
  from lad_tf.runtime.execution import ExecutionConfig
  spec = datasets.get_spec(dataset)
  epochs = 2 if dataset != "digits" else 15
  _say(f"[attacks] training LeNet-5 on {dataset} for {epochs} epochs")
  data = datasets.load(dataset)
  keras.utils.set_random_seed(seed)
  model = models.build_classifier("lenet5", spec.image_shape, spec.num_classes)
  with tempfile.TemporaryDirectory() as state:
    _, test_accuracy = training.train_classifier(
        model, data.train, data.test, training.TrainConfig(epochs=epochs, batch_size=128,
                                                           execution=ExecutionConfig(seed=seed, verbose=0)), state)
  return spec, data, model, epochs, test_accuracy


def _attacked_images(data, spec, n, seed):
  """n test images stratified by class, shuffled, each with one random other class as its target."""
  from lad_tf.data import datasets
  per_class = max(1, int(np.ceil(n / spec.num_classes)))
  idx = datasets.stratified_indices(data.test.y, per_class, seed)[:n]
  rng = np.random.default_rng(seed)
  rng.shuffle(idx)
  x, y = data.test.x[idx], data.test.y[idx]
  target = (y + rng.integers(1, spec.num_classes, size=len(x))) % spec.num_classes
  return x, y, target


def _both_sides(model, art_model, n, eps, seed):
  """({attack: ours(x, target, y)}, {attack: () -> ART's attack}) with the SETTINGS of both sides."""
  from art.attacks.evasion import AutoProjectedGradientDescent, CarliniL2Method, SaliencyMapMethod

  from lad_tf import attacks
  s = SETTINGS
  ours = {
      "jsma": lambda xs, ts, ys: attacks.jsma(model, xs, ts, theta=s["jsma"]["theta"],
                                              gamma=s["jsma"]["gamma"]),
      "cw": lambda xs, ts, ys: attacks.carlini_wagner_l2(
          model, xs, ts, targeted=True, learning_rate=s["cw"]["ours_learning_rate"],
          binary_search_steps=s["cw"]["binary_search_steps"], max_iterations=s["cw"]["max_iterations"],
          initial_const=s["cw"]["initial_const"], confidence=s["cw"]["confidence"]),
      "apgd": lambda xs, ts, ys: attacks.apgd(model, xs, ys, eps, n_iter=s["apgd"]["max_iter"],
                                              n_restarts=s["apgd"]["restarts"], seed=seed),
  }
  art = {
      "jsma": lambda: SaliencyMapMethod(art_model, theta=s["jsma"]["theta"], gamma=s["jsma"]["gamma"],
                                        batch_size=n, verbose=False),
      "cw": lambda: CarliniL2Method(art_model, confidence=s["cw"]["confidence"], targeted=True,
                                    learning_rate=s["cw"]["art_learning_rate"],
                                    binary_search_steps=s["cw"]["binary_search_steps"],
                                    max_iter=s["cw"]["max_iterations"],
                                    initial_const=s["cw"]["initial_const"],
                                    batch_size=min(ART_CW_IMAGES, n), verbose=False),
      "apgd": lambda: AutoProjectedGradientDescent(art_model, norm=np.inf, eps=eps, eps_step=2 * eps,
                                                   max_iter=s["apgd"]["max_iter"], targeted=False,
                                                   nb_random_init=s["apgd"]["restarts"], batch_size=n,
                                                   loss_type="cross_entropy", verbose=False),
  }
  return ours, art


def _compare(name, ours, art, targeted, model, x, y, target):
  """One attack, ours (timed cold, then warm) against ART's (on ART_CW_IMAGES images for CW)."""
  n = len(x)
  _say(f"[attacks] {name}: ours (cold, then warm) on {n} images")
  _, cold = _timed(lambda: ours(x, target, y))
  x_ours, warm = _timed(lambda: ours(x, target, y))
  m = n if name != "cw" else min(ART_CW_IMAGES, n)
  _say(f"[attacks] {name}: ART on {m} images")
  labels = target[:m] if targeted else y[:m]
  x_art, art_seconds = _timed(lambda: art().generate(x[:m], y=labels))
  x_art = np.clip(x_art.astype(np.float32), 0.0, 1.0)
  row = {
      "ours": {"seconds": warm, "seconds_cold": cold, "s_per_image": warm / n, "images": n,
               **_measures(model, x, x_ours, y, target, targeted)},
      "ours_on_art_images": _measures(model, x[:m], x_ours[:m], y[:m], target[:m], targeted),
      "art": {"seconds": art_seconds, "s_per_image": art_seconds / m, "images": m,
              **_measures(model, x[:m], x_art, y[:m], target[:m], targeted)},
  }
  row["speedup"] = row["art"]["s_per_image"] / max(row["ours"]["s_per_image"], 1e-9)
  row["speedup_cold"] = row["art"]["s_per_image"] / max(cold / n, 1e-9)
  row["goal_met"] = bool(row["speedup"] >= 10 and
                         row["ours_on_art_images"]["success_rate"] >= row["art"]["success_rate"])
  _say(f"[attacks] {name}: ours {warm:.2f} s ({cold:.2f} s cold) for {n}, success "
       f"{row['ours']['success_rate']:.2f}; ART {art_seconds:.2f} s for {m}, success "
       f"{row['art']['success_rate']:.2f}; speed-up x{row['speedup']:.1f}")
  return row


def _cleverhans_reference(model, x, y, target, eps, seed):
  """cleverhans FGSM / PGD-40 timings (second call) and measures, for reference."""
  from lad_tf import attacks
  n = len(x)
  _say(f"[attacks] cleverhans FGSM / PGD-40 at eps={eps} on {n} images (reference)")
  out = {}
  for name, fn in (("fgsm", lambda: attacks.fgsm(model, x, y, eps)),
                   ("pgd40", lambda: attacks.pgd(model, x, y, eps, nb_iter=40, seed=seed))):
    fn()
    x_adv, seconds = _timed(fn)
    out[name] = {"seconds": seconds, "s_per_image": seconds / n,
                 **_measures(model, x, x_adv, y, target, False)}
  return out


def run(dataset="fashion_mnist", n=0, seed=0, autoattack_n=1000, art_autoattack_n=0, crosscheck_n=0,
        sections="all"):
  """sections: "all", or "autoattack" for the AutoAttack comparison and cross-checks only.
  art_autoattack_n / crosscheck_n: images for ART's AutoAttack / the cross-checks (0: autoattack_n)."""
  _require_art()
  from lad_tf import attacks
  from lad_tf.data import datasets

  if sections not in ("all", "autoattack"):
    raise ValueError(f"sections must be 'all' or 'autoattack', got {sections!r}")
  n = n or 100
  spec, data, model, epochs, test_accuracy = _trained_lenet(dataset, seed)
  aa_idx = datasets.stratified_indices(data.test.y, int(np.ceil(autoattack_n / spec.num_classes)),
                                       seed + 1)[:autoattack_n]
  aa_x, aa_y = data.test.x[aa_idx], data.test.y[aa_idx]
  art_n = min(art_autoattack_n or len(aa_x), len(aa_x))
  check_n = min(crosscheck_n or len(aa_x), len(aa_x))
  autoattack_row, crosscheck = _autoattack_figures(model, spec, aa_x, aa_y, spec.attack_eps, seed, art_n,
                                                   check_n)
  if sections == "autoattack":
    return {"dataset": dataset, "model": "lenet5", "train_epochs": epochs, "test_accuracy": test_accuracy,
            "autoattack": autoattack_row, "crosscheck": crosscheck}
  x, y, target = _attacked_images(data, spec, n, seed)
  n = len(x)
  eps = spec.attack_eps
  art_model = _art_classifier(model, spec)
  figures = {"dataset": dataset, "n": n, "model": "lenet5", "train_epochs": epochs,
             "clean_accuracy": float(np.mean(attacks.predict(model, x) == y)),
             "test_accuracy": test_accuracy, "apgd_eps": eps, "settings": SETTINGS,
             "autoattack": autoattack_row, "crosscheck": crosscheck,
             "art_cw_images": min(ART_CW_IMAGES, n),
             "timing": "seconds per image; ours warm (second call), cold = first call with tracing; "
                       f"ART CW-L2 measured on the first {min(ART_CW_IMAGES, n)} images"}
  ours, art = _both_sides(model, art_model, n, eps, seed)
  targeted = {"jsma": True, "cw": True, "apgd": False}
  for name in ("jsma", "cw", "apgd"):
    figures[name] = _compare(name, ours[name], art[name], targeted[name], model, x, y, target)
  figures.update(_cleverhans_reference(model, x, y, target, eps, seed))
  return figures
