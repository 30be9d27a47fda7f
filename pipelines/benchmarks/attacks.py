"""Attack benchmark: our batched JSMA, CW-L2 and APGD-CE against ART's, same model, same images.

`python -m pipelines.benchmark attacks [--dataset=fashion_mnist|digits] [--n=100] [--seed=0]`

A LeNet-5 is trained (Fashion-MNIST: 2 epochs; digits: 15 epochs), n test images are drawn
stratified by class, each targeted attack gets one random other class per image (the same targets
for both sides). Both sides use the same stated settings; ART gets batch_size = n (its fastest).
Ours is timed twice: the first call includes tf.function tracing ("cold"), the second is "warm";
the speed-up is ART's seconds per image over our warm seconds per image. ART's CW-L2 takes about
4 s per image here, so it runs on the first `ART_CW_IMAGES` images only (reported per image).
cleverhans FGSM / PGD-40 timings are listed for reference.
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
  from lad_tf import attacks
  pred = attacks.predict(model, x_adv)
  clean = attacks.predict(model, x)
  if targeted:
    success = pred == target
    rate = float(np.mean(success))
  else:
    eligible = clean == y
    success = eligible & (pred != y)
    rate = float(np.sum(success) / max(1, np.sum(eligible)))
  norms = attacks.perturbation_norms(x, x_adv)
  pick = success if success.any() else np.zeros(len(x), bool)
  mean = lambda v: float(np.mean(v[pick])) if pick.any() else float("nan")
  return {"success_rate": rate, "mean_l2": mean(norms["l2"]), "mean_l0": mean(norms["l0"]),
          "max_linf": float(np.max(norms["linf"])) if len(x) else 0.0}


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _art_classifier(model, spec):
  import tensorflow as tf
  from art.estimators.classification import TensorFlowV2Classifier
  return TensorFlowV2Classifier(
      model=model, nb_classes=spec.num_classes, input_shape=spec.image_shape,
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0))


def run(dataset="fashion_mnist", n=0, seed=0):
  import keras
  import tempfile
  from art.attacks.evasion import AutoProjectedGradientDescent, CarliniL2Method, SaliencyMapMethod

  from lad_tf import attacks, datasets, models, training
  from lad_tf.execution import ExecutionConfig

  n = n or 100
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
  per_class = max(1, int(np.ceil(n / spec.num_classes)))
  idx = datasets.stratified_indices(data.test.y, per_class, seed)[:n]
  rng = np.random.default_rng(seed)
  rng.shuffle(idx)
  x, y = data.test.x[idx], data.test.y[idx]
  n = len(x)
  target = (y + rng.integers(1, spec.num_classes, size=n)) % spec.num_classes
  eps = spec.attack_eps
  art_model = _art_classifier(model, spec)
  figures = {"dataset": dataset, "n": n, "model": "lenet5", "train_epochs": epochs,
             "clean_accuracy": float(np.mean(attacks.predict(model, x) == y)),
             "test_accuracy": test_accuracy, "apgd_eps": eps, "settings": SETTINGS,
             "art_cw_images": min(ART_CW_IMAGES, n),
             "timing": "seconds per image; ours warm (second call), cold = first call with tracing; "
                       f"ART CW-L2 measured on the first {min(ART_CW_IMAGES, n)} images"}

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
  targeted = {"jsma": True, "cw": True, "apgd": False}
  for name in ("jsma", "cw", "apgd"):
    _say(f"[attacks] {name}: ours (cold, then warm) on {n} images")
    _, cold = _timed(lambda: ours[name](x, target, y))
    x_ours, warm = _timed(lambda: ours[name](x, target, y))
    m = n if name != "cw" else min(ART_CW_IMAGES, n)
    _say(f"[attacks] {name}: ART on {m} images")
    labels = target[:m] if targeted[name] else y[:m]
    x_art, art_seconds = _timed(lambda: art[name]().generate(x[:m], y=labels))
    x_art = np.clip(x_art.astype(np.float32), 0.0, 1.0)
    row = {
        "ours": {"seconds": warm, "seconds_cold": cold, "s_per_image": warm / n, "images": n,
                 **_measures(model, x, x_ours, y, target, targeted[name])},
        "ours_on_art_images": _measures(model, x[:m], x_ours[:m], y[:m], target[:m], targeted[name]),
        "art": {"seconds": art_seconds, "s_per_image": art_seconds / m, "images": m,
                **_measures(model, x[:m], x_art, y[:m], target[:m], targeted[name])},
    }
    row["speedup"] = row["art"]["s_per_image"] / max(row["ours"]["s_per_image"], 1e-9)
    row["speedup_cold"] = row["art"]["s_per_image"] / max(cold / n, 1e-9)
    row["goal_met"] = bool(row["speedup"] >= 10 and
                           row["ours_on_art_images"]["success_rate"] >= row["art"]["success_rate"])
    figures[name] = row
    _say(f"[attacks] {name}: ours {warm:.2f} s ({cold:.2f} s cold) for {n}, success "
         f"{row['ours']['success_rate']:.2f}; ART {art_seconds:.2f} s for {m}, success "
         f"{row['art']['success_rate']:.2f}; speed-up x{row['speedup']:.1f}")

  _say(f"[attacks] cleverhans FGSM / PGD-40 at eps={eps} on {n} images (reference)")
  for name, fn in (("fgsm", lambda: attacks.fgsm(model, x, y, eps)),
                   ("pgd40", lambda: attacks.pgd(model, x, y, eps, nb_iter=40, seed=seed))):
    fn()
    x_adv, seconds = _timed(fn)
    figures[name] = {"seconds": seconds, "s_per_image": seconds / n,
                     **_measures(model, x, x_adv, y, target, False)}
  return figures
