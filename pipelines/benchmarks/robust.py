"""Robust-training benchmark (issue 13): every method on the same model and data, several seeds.

`python -m pipelines.benchmark robust --dataset=fashion_mnist|mnist [--data_dir=...] --output=F.json
 [--set=train_examples=6000,epochs=3,seeds=3,...]`

Setup, once (timed apart, not in any method's cost): the starting classifier (`model`, trained
`pretrain_epochs` epochs on the whole training split, seed 0), LAD's decoder on its latents
(`generator_epochs` epochs on `generator_examples` training images) and the attention-SVM boundaries
on the calibration split (lad_tf.data.datasets.calibration_split, the dataset's per-class count).

Per seed: `train_examples` random training images (plus `guard_examples` held out of them for the
catastrophic-overfitting guard); every method fine-tunes the starting classifier for `epochs`
epochs (lad_tf.robust.train; `init="scratch"` trains fresh models instead; `lr_schedule="cyclic"`
runs Adam's rate 0 -> learning_rate -> 0 instead of constant), then is evaluated on the
same `eval_examples` images of the evaluation split (never the calibration split): clean accuracy,
PGD-40 (cleverhans, random start, step 2.5 eps / 40) and `autoattack`: the accuracy under the
`autoattack` option's attack (lad_tf.attacks.autoattack "standard" by default, "fast", or "apgd-ce"),
counted per example as the worst case of it and PGD-40. train_s is each method's wall time (including the
boundary-guided precomputation and the guard); cost_ratio divides it by `standard`'s (clean training,
same optimizer, epochs and data) in the same seed, side by side on the same machine.

The ablation trains lad_robust's parts cumulatively: N-FGSM alone, + boundary-guided start (the
default `lad_robust`, which is this row), + targeted step, + on-manifold term, + TRADES loss.
`short_pgd=K` and `carry=K` add multi-step pairs, each with and without the guided start
(ablation_options).
"""
import json
import os
import time

import numpy as np

DATASET_EPS = {"fashion_mnist": 0.1, "mnist": 0.3, "digits": 0.1}
METHODS = ("standard", "clean", "lad", "fgsm_rs", "pgd_at", "trades")
METRICS = ("clean", "pgd40", "autoattack", "train_s", "cost_ratio")
LAD_ROBUST_ROW = "+guided_start"  # the ablation row that is lad_robust's default (reported as lad_robust)


AUTOATTACKS = {
    "standard": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; lad_tf.attacks.autoattack)",
    "fast": "AutoAttack fast (APGD-CE, APGD-T; lad_tf.attacks.autoattack)",
    "apgd-ce": "APGD-CE, 100 iterations (lad_tf.attacks.apgd)",
}


def strongest_attack(model, x, y, eps, version="standard", log=None):
  """(adversarial images, the attack that broke each image or None) from the AutoAttack ensemble
  (`version` "standard" or "fast"), or APGD-CE alone ("apgd-ce", the figure before the ensemble was
  merged). log: autoattack's progress callback."""
  from lad_tf import attacks
  if version not in AUTOATTACKS:
    raise ValueError(f"autoattack must be one of {', '.join(AUTOATTACKS)}, got '{version}'")
  if version == "apgd-ce":
    return attacks.apgd(model, x, y, eps, n_iter=100, seed=0), None
  return attacks.autoattack(model, x, y, eps, version=version, seed=0, log=log)


def ablation_options(short_pgd=0, carry=0):
  """{row name: LadRobustOptions} of the ablation. short_pgd=k > 0 adds a multi-step pair: `pgdK`, PGD-k
  inside lad_robust's loss with every LAD part off (random start in the eps ball, steps of 2.5 eps / k,
  Madry et al.'s ratio), and `pgdK+guided_start`, the same with half the batch starting from the
  boundary-guided direction. carry=k > 0 adds the pair `carryK`, `carryK+guided_start`: k projected
  steps of eps / k per batch from where each example's perturbation ended the epoch before (the
  guided start then only seeds the first epoch)."""
  from lad_tf.robust.losses import LadRobustOptions
  steps = [("nfgsm", {}), (LAD_ROBUST_ROW, {"guided_fraction": 0.5}), ("+targeted", {"targeted": True}),
           ("+on_manifold", {"manifold_weight": 0.5}), ("+trades", {"trades_beta": 6.0})]
  out, fields = {}, {}
  for name, change in steps:
    fields = {**fields, **change}
    out[name] = LadRobustOptions(**fields)
  if short_pgd:
    control = dict(noise=1.0, step=2.5 / short_pgd, steps=short_pgd, project=True)
    out[f"pgd{short_pgd}"] = LadRobustOptions(**control)
    out[f"pgd{short_pgd}+guided_start"] = LadRobustOptions(**control, guided_fraction=0.5)
  if carry:
    out[f"carry{carry}"] = LadRobustOptions.carried(carry)  # carry1: the `atta` defence
    out[f"carry{carry}+guided_start"] = LadRobustOptions.carried(carry, guided_fraction=0.5)
  return out


def _rows_named(only, ablation_rows=None, ablation=True):
  """The training rows `only` names (a list or a "|"-separated string; None: all), among the methods and
  `ablation_rows` (default: ablation_options()'s). `lad_robust` is the
  ablation's +guided_start row, under the name the output gives it; an unknown name, or an ablation row
  when the ablation is off, is an error, not a run that trains nothing but the cost reference."""
  if not only:
    return None
  names = only.split("|") if isinstance(only, str) else list(only)
  ablation_rows = tuple(ablation_options()) if ablation_rows is None else ablation_rows
  known = METHODS + ablation_rows + ("lad_robust",)
  unknown = [name for name in names if name not in known]
  if unknown:
    raise ValueError(f"only: unknown row(s) {', '.join(unknown)}; the rows are {', '.join(known)}")
  skipped = [name for name in names if not ablation and name in ablation_rows and name != LAD_ROBUST_ROW]
  if skipped:
    raise ValueError(f"only: ablation row(s) {', '.join(skipped)} train only with ablation=true; "
                     f"set it or leave them out")
  return [LAD_ROBUST_ROW if name == "lad_robust" else name for name in names]


def evaluate(model, x, y, eps, autoattack="standard", log=None):
  """Clean, PGD-40 and the strongest attack's accuracy, always computed in float32 (a model trained
  under mixed_bfloat16 is evaluated as the float32 model it exports to)."""
  from lad_tf import attacks
  from lad_tf.runtime.execution import with_policy
  model = with_policy(model, "float32")
  predict = lambda images: np.argmax(model.predict(images, batch_size=500, verbose=0), -1)
  clean = predict(x) == y
  pgd = predict(attacks.pgd(model, x, y, eps, nb_iter=40, seed=0)) == y
  start = time.perf_counter()
  x_adv, broken_by = strongest_attack(model, x, y, eps, autoattack, log)
  strong = predict(x_adv) == y
  out = {"clean": float(clean.mean()), "pgd40": float(pgd.mean()),
         "autoattack": float((strong & pgd & clean).mean()), "autoattack_s": time.perf_counter() - start}
  if broken_by is not None:
    # images each attack of the ensemble broke first: what FAB-T and Square add over the fast version
    out["broken_by"] = {name: int(np.sum(broken_by == name)) for name in sorted(set(broken_by)) if name}
  return out


def summary(rows, keys=METRICS):
  """{key: {"mean", "std"} over the seeds' rows, for each of `keys`; "seeds": the rows themselves. A
  seed whose figure is None (e.g. a stage time cut by a resume) is left out of that key's mean, and
  the key then also says over how many seeds ("n")."""
  out = {}
  for key in keys:
    values = np.array([r[key] for r in rows if r[key] is not None], np.float64)
    out[key] = {"mean": float(values.mean()), "std": float(values.std())}
    if len(values) < len(rows):
      out[key]["n"] = len(values)
  out["seeds"] = rows
  return out


def _evaluation_images(data, spec, eval_examples, dataset):
  """(calibration split, x_eval, y_eval): the same `eval_examples` images of the evaluation split for
  every row (never the calibration split, which fits the boundaries)."""
  from lad_tf.data import datasets
  calibration, evaluation = datasets.calibration_split(data.test, spec.calibration_per_class, seed=0)
  if len(evaluation) < eval_examples:
    raise ValueError(f"{dataset} has {len(evaluation)} evaluation images, fewer than eval_examples={eval_examples}")
  pick = np.sort(np.random.default_rng(0).choice(len(evaluation), eval_examples, replace=False))
  return calibration, evaluation.x[pick], evaluation.y[pick]


def _setup(spec, data, calibration, x_eval, y_eval, *, model_name, eps, pretrain_epochs, generator_epochs,
           generator_examples, attention, autoattack, precision, say):
  """The starting classifier, LAD's decoder and boundaries, once per run (seed 0, timed apart from every
  row's cost); returns (base, generator, boundaries, setup figures)."""
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.lad import boundary
  from lad_tf.runtime import training
  from lad_tf.lad import decoder as decoder_lib
  from lad_tf.runtime.execution import ExecutionConfig

  setup_start = time.perf_counter()
  keras.utils.set_random_seed(0)
  base = models.build_classifier(model_name, spec.image_shape, spec.num_classes)
  training.train_classifier(base, data.train, datasets.Split(x_eval, y_eval), training.TrainConfig(
      epochs=pretrain_epochs, batch_size=spec.classifier_batch_size, execution=ExecutionConfig(verbose=0, precision=precision)), None)
  # no phi.trainable = False: phi shares base's layers, and freezing them froze every layer below the
  # latent in each method's fine-tuning copy (clone_model keeps the flag); train_decoder never trains phi
  phi, _ = models.split_at_latent(base)
  latent_dim = int(phi.output_shape[-1])
  try:
    generator = models.build_generator(spec.generator, latent_dim, spec.image_shape)
  except ValueError:
    generator = models.build_generator("conv_decoder", latent_dim, spec.image_shape)
  gen_rows = np.random.default_rng(0).choice(len(data.train), min(generator_examples, len(data.train)),
                                             replace=False)
  gen_result = decoder_lib.train_decoder(
      phi, generator, data.train.take(gen_rows), calibration, decoder_lib.DecoderConfig(
          epochs=generator_epochs, recon_norm=spec.recon_norm, execution=ExecutionConfig(verbose=0, precision=precision)), None)
  fitted = boundary.fit_boundaries(decoder_lib.latents(phi, calibration.x), calibration.y, spec.num_classes,
                                   boundary.BoundaryConfig(mode=attention))
  setup = {"s": time.perf_counter() - setup_start, "base": evaluate(base, x_eval, y_eval, eps, autoattack, say),
           "generator_test_loss": gen_result["test_loss"],
           "boundary_fit_accuracy": float(np.mean(fitted.fit_accuracy)),
           "parameters": int(base.count_params())}
  return base, generator, fitted, setup


class _Figures:
  """Every (row, seed) figure so far: what run() returns, and what its partial JSON holds after each row
  so that a killed run resumes after the last finished one."""

  def __init__(self, variants, ablation, head):
    self.variants, self.ablation, self.head = variants, ablation, head
    self.rows = {name: [] for name, _ in variants}
    self.guard_logs = {}

  def resume(self, partial, options, say):
    """Takes the rows of a partial JSON written with the same options (seeds and only may differ);
    returns the (row, seed) pairs it holds."""
    if not (partial and os.path.exists(partial)):
      return set()
    with open(partial) as f:
      previous = json.load(f)
    same = lambda o: {k: v for k, v in o.items() if k not in ("seeds", "only")}  # rows to add, not how
    if same(previous.get("options", {})) != same(json.loads(json.dumps(options))):
      raise ValueError(f"{partial} holds a run with other options; remove it or pass another partial path")
    for name, summary in {**previous["methods"], **previous["ablation"]}.items():
      if name in self.rows:
        self.rows[name] = summary["seeds"]
    self.rows[LAD_ROBUST_ROW] = previous["methods"].get("lad_robust", {}).get("seeds", [])
    self.guard_logs.update(previous.get("guard", {}))
    done = {(name, r["seed"]) for name, held in self.rows.items() for r in held}
    say(f"resuming from {partial}: {len(done)} (method, seed) rows done")
    return done

  def assemble(self):
    rows = self.rows
    methods = {name: summary(rows[name]) for name in METHODS if rows[name]}
    if rows[LAD_ROBUST_ROW]:
      methods["lad_robust"] = summary(rows[LAD_ROBUST_ROW])
    abl = {name: summary(rows[name]) for name, _ in self.variants if name not in METHODS and rows[name]}
    return {**self.head, "methods": methods, "ablation": abl if self.ablation else {},
            "lad_robust_is": LAD_ROBUST_ROW, "guard": self.guard_logs}

  def save(self, partial, message, say):
    if partial:
      with open(partial, "w") as f:
        json.dump(self.assemble(), f, indent=2, sort_keys=True, default=float)
      say(f"{message}: partial figures written to {partial}")


def _train_row(name, opts, s, x_train, y_train, shared, standard_rows, say):
  """One method (opts None) or ablation row (its LadRobustOptions) trained with seed s and evaluated;
  its cost_ratio divides by `standard`'s time in the same seed (standard trains first in every seed)."""
  import keras
  from lad_tf import models, robust
  from lad_tf.runtime.execution import ExecutionConfig
  method = "lad_robust" if opts is not None else name
  config = robust.RobustConfig(method=method, eps=shared["eps"], epochs=shared["epochs"],
                               learning_rate=shared["learning_rate"], lr_schedule=shared["lr_schedule"],
                               step_scale=shared["step_scale"], guard_examples=shared["guard_examples"],
                               execution=ExecutionConfig(seed=s, verbose=0, precision=shared["precision"]),
                               **({"options": opts} if opts is not None else {}))
  if shared["init"] == "scratch":
    keras.utils.set_random_seed(s)
    spec = shared["spec"]
    start = models.build_classifier(shared["model_name"], spec.image_shape, spec.num_classes)
  else:
    start = shared["base"]
  trained, info = robust.train(start, x_train, y_train, config, generator=shared["generator"],
                               boundaries=shared["boundaries"], lad_classifier=shared["base"], log=say)
  figures = evaluate(trained, shared["x_eval"], shared["y_eval"], shared["eps"], shared["autoattack"], say)
  figures.update(seed=s, train_s=info["train_s"], prepare_s=info.get("prepare_s", 0.0))
  if "guard" in info:
    figures["guard_rollbacks"] = info["guard"]["rollbacks"]
    figures["guard_s"] = info["guard"].get("seconds", 0.0)
  figures["cost_ratio"] = figures["train_s"] / next(r["train_s"] for r in standard_rows + [figures]
                                                     if r["seed"] == s)
  return figures, info.get("guard")


def run(dataset="fashion_mnist", n=0, seed=0, data_dir=None, model=None, eps=None, train_examples=6000,
        epochs=3, seeds=3, eval_examples=1000, pretrain_epochs=2, generator_epochs=3,
        generator_examples=20000, guard_examples=1000, learning_rate=1e-3, lr_schedule="constant", init="finetune",
        ablation=True, ablation_seeds=None, only=None, bfloat16=False, attention="none", autoattack="standard",
        short_pgd=0, carry=0, step_scale=1.0, partial=None):
  """See the module docstring; `n` overrides eval_examples, `seed` is the first seed.

  only: names of the methods / ablation rows to train, a list or a "|"-separated string (default:
    all; `lad_robust` is the row +guided_start); `standard` is always trained (the cost ratios divide by it).
  short_pgd, carry: k > 0 adds the ablation pair pgdK and pgdK+guided_start, or carryK and
    carryK+guided_start (ablation_options).
  step_scale: the single-step methods' step multiplier at the start of training (RobustConfig.step_scale).
  ablation_seeds: how many seeds (the first ones) train every ablation row; the others train only
    N-FGSM alone and the default lad_robust next to the methods (default: all seeds).
  partial: a JSON path written after each (method, seed) row; a run started with the same options (seeds and
    only may change) resumes from it, skipping the rows it holds (the setup is recomputed from seed 0, as deterministic as TF on the CPU).
  """
  from lad_tf.data import datasets

  say = lambda message: print(message, flush=True)
  ablation_table = ablation_options(short_pgd, carry)
  only = _rows_named(only, tuple(ablation_table), ablation)
  # bfloat16: every training computes in mixed_bfloat16 (lad_tf.runtime.execution), models stay float32
  precision = "mixed_bfloat16" if bfloat16 else "float32"
  spec = datasets.get_spec(dataset)
  data = datasets.load(dataset, data_dir)
  eps = float(eps or DATASET_EPS.get(dataset, spec.attack_eps))
  model_name = model or spec.classifier
  eval_examples = n or eval_examples
  calibration, x_eval, y_eval = _evaluation_images(data, spec, eval_examples, dataset)
  options = dict(dataset=dataset, eps=eps, model=model_name, train_examples=train_examples, epochs=epochs,
                 seeds=seeds, eval_examples=eval_examples, pretrain_epochs=pretrain_epochs,
                 generator_epochs=generator_epochs, generator_examples=generator_examples,
                 guard_examples=guard_examples, learning_rate=learning_rate, init=init, bfloat16=bfloat16,
                 **({} if lr_schedule == "constant" else {"lr_schedule": lr_schedule}),
                 attention=attention, ablation_seeds=ablation_seeds, only=only,
                 **({"short_pgd": short_pgd} if short_pgd else {}), **({"carry": carry} if carry else {}),
                 **({"step_scale": step_scale} if step_scale != 1 else {}),
                 autoattack_attack=AUTOATTACKS.get(autoattack, autoattack) + ", worst case with PGD-40 per example")
  say(f"robust benchmark: {options}")
  base, generator, fitted, setup = _setup(
      spec, data, calibration, x_eval, y_eval, model_name=model_name, eps=eps, pretrain_epochs=pretrain_epochs,
      generator_epochs=generator_epochs, generator_examples=generator_examples, attention=attention,
      autoattack=autoattack, precision=precision, say=say)
  say(f"setup: {setup}")

  variants = [(m, None) for m in METHODS]
  variants += list(ablation_table.items()) if ablation else [(LAD_ROBUST_ROW, ablation_table[LAD_ROBUST_ROW])]
  found = _Figures(variants, ablation, {"dataset": dataset, "eps": eps, "model": model_name,
                                        "parameters": setup["parameters"], "options": options, "setup": setup})
  done = found.resume(partial, options, say)
  # what every row trains from and is scored on
  shared = dict(spec=spec, model_name=model_name, eps=eps, epochs=epochs, learning_rate=learning_rate,
                lr_schedule=lr_schedule, step_scale=step_scale, guard_examples=guard_examples, precision=precision,
                init=init, base=base, generator=generator, boundaries=fitted, x_eval=x_eval, y_eval=y_eval,
                autoattack=autoattack)
  core = {"nfgsm", LAD_ROBUST_ROW}
  for s in range(seed, seed + seeds):
    full_ablation = ablation_seeds is None or s < seed + ablation_seeds
    rng = np.random.default_rng(s)
    rows_s = rng.choice(len(data.train), min(train_examples + guard_examples, len(data.train)), replace=False)
    x_train, y_train = data.train.x[rows_s], data.train.y[rows_s]
    for name, opts in variants:
      if opts is not None and not full_ablation and name not in core:
        continue
      if (only and name != "standard" and name not in only) or (name, s) in done:
        continue
      figures, guard = _train_row(name, opts, s, x_train, y_train, shared, found.rows["standard"], say)
      if guard is not None:
        found.guard_logs[f"{name}/seed{s}"] = guard
      found.rows[name].append(figures)
      say(f"seed {s} {name}: {figures}")
      found.save(partial, f"seed {s} {name}", say)  # a killed run resumes after the last finished row
  return found.assemble()
