"""The defend run's stages, each declared once: what it reads, what its content depends on, what it
writes, and how it runs (lad_tf.run.stage). classifier -> generator -> boundaries -> generation ->
defended -> robustness; the robust defences but lad_robust read no generator, boundaries or
generation, so a run makes only what its defence reads (lad_tf.run.stage.needed)."""
import dataclasses
import os
import shutil

import keras
import numpy as np

from lad_tf import models, robust
from lad_tf.attacks.autoattack import CLEAN, ROBUST, autoattack
from lad_tf.attacks.autoattack import figures as autoattack_figures
from lad_tf.evaluation import defence_report, figures
from lad_tf.evaluation.sanity import gradient_masking_checks
from lad_tf.lad import boundary as boundary_lib
from lad_tf.lad import decoder as decoder_lib
from lad_tf.lad import fine_tuning, generation
from lad_tf.run.stage import Stage
from lad_tf.runtime import training
from lad_tf.runtime.files import load_model, read_json, save_model, write_json


# -- what each stage's content depends on (its inputs' fingerprints are added by the stage graph) ---
def _classifier_settings(c, spec):
  return {"dataset": c.dataset, "data_dir": c.data_dir, "seed": c.seed,
          "calibration_per_class": c.calibration_per_class, "classifier_path": c.classifier_path,
          "latent_layer": c.latent_layer,
          **({} if c.classifier_path else {"architecture": c.architecture, "epochs": c.classifier_epochs,
                                            "batch_size": spec.classifier_batch_size})}


def _generator_settings(c, spec):
  return {"architecture": c.generator_architecture or spec.generator, "epochs": c.generator_epochs,
          "recon_norm": c.recon_norm, "batch_size": spec.generator_batch_size,
          **({"loss_at_epochs": list(c.decoder_loss_epochs)} if c.decoder_loss_epochs else {})}


def _generation_settings(c, spec):
  return {"eps_grid": sorted(set(c.eps_grid) | set(c.fine_tune_eps)), "normal": c.normal, "target": c.target,
          "adaptive": c.adaptive}


def _defended_settings(c, spec):
  if c.robust_training:
    rc = c.robust_config()
    return {"defence": c.defence, "robust": rc.identity(), "train_examples": c.defence_train_examples,
            **({"init": c.defence_init} if c.defence_init != "finetune" else {})}
  # lad's settings carry no "defence" key: work directories made before there was a choice stay done
  return {"mode": c.fine_tune_mode, "eps": list(c.fine_tune_eps), "epochs": c.fine_tune_epochs,
          **({"schedule": c.fine_tune_schedule} if c.fine_tune_schedule != fine_tuning.DEFAULT_SCHEDULE else {}),
          **({"per_epoch": c.on_the_fly_per_epoch} if c.fine_tune_mode == "on_the_fly" else {}),
          **({"defence": "clean"} if c.defence == "clean" else {})}


def _defended_inputs(c):
  if c.robust_training:
    return ("classifier",) + (("generator", "boundaries") if c.robust_config().needs_lad() else ())
  return ("classifier",) + (("generator", "boundaries") if c.fine_tune_mode == "on_the_fly" else ("generation",))


def _robustness_settings(c, spec):
  return {"attack": "autoattack", "version": c.robust_eval, "examples": c.robust_eval_examples,
          "eps": spec.attack_eps}


# -- how each stage runs ------------------------------------------------------------------------
def _classifier(run, out):
  c = run.config
  if c.classifier_path:
    model = load_model(c.classifier_path, "classifier (--classifier)")
    run.say(f"classifier: using {c.classifier_path}")
    metrics = {"source": c.classifier_path}
  else:
    keras.utils.set_random_seed(c.seed)
    model = models.build_classifier(c.architecture, run.spec.image_shape, run.spec.num_classes)
    run.say(f"classifier: training {c.architecture} for {c.classifier_epochs} epochs")
    history, _ = training.train_classifier(
        model, run.data.train, run.evaluation,
        training.TrainConfig(epochs=c.classifier_epochs, batch_size=run.spec.classifier_batch_size,
                             execution=c.execution), out)
    metrics = {"source": c.architecture, "history": history}
  if "generator" in run.needed:  # fail early on a bad --latent_layer, where LAD's parts will cut there
    models.split_at_latent(model, c.latent_layer)
  if c.classifier_path and not c.allow_weak_classifier:
    metrics["test_accuracy"] = training.check_better_than_chance(
        model, run.evaluation.x, run.evaluation.y, "or pass --allow_weak_classifier")
  else:
    metrics["test_accuracy"] = training.accuracy(model, run.evaluation.x, run.evaluation.y)
  save_model(model, os.path.join(out, "model.keras"))
  write_json(os.path.join(out, "metrics.json"), metrics)
  shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)


def _generator(run, out):
  c = run.config
  classifier = run.classifier()
  phi, _ = models.split_at_latent(classifier, c.latent_layer)
  phi.trainable = False
  latent_dim = int(phi.output_shape[-1])
  name, generator = run.build_generator(latent_dim)
  run.say(f"generator: training {name} on {latent_dim}-d latents for {c.generator_epochs} epochs "
           f"({c.recon_norm} loss)")
  result = decoder_lib.train_decoder(
      phi, generator, run.data.train, run.evaluation,
      decoder_lib.DecoderConfig(epochs=c.generator_epochs, batch_size=run.spec.generator_batch_size,
                                recon_norm=c.recon_norm, loss_at_epochs=c.decoder_loss_epochs,
                                execution=c.execution), out)
  save_model(generator, os.path.join(out, "model.keras"))
  write_json(os.path.join(out, "metrics.json"), {"architecture": name, "recon_norm": c.recon_norm,
                                                 "epochs": c.generator_epochs, **result})
  sample = run.evaluation.x[:12]
  figures.reconstructions(run.work.path("figures", "reconstructions.png"), sample,
                          generator.predict(phi.predict(sample, verbose=0), verbose=0))
  shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
  run.say(f"generator: train loss {result['train_loss']:.5f}, test loss {result['test_loss']:.5f}")


def _boundaries(run, out):
  c = run.config
  phi, _ = models.split_at_latent(run.classifier(), c.latent_layer)
  z_cal = decoder_lib.latents(phi, run.calibration.x)
  heldout = (decoder_lib.latents(phi, run.evaluation.x), run.evaluation.y)
  k = run.spec.num_classes
  summary = {}
  for mode in dict.fromkeys([c.attention, "none"]):
    run.say(f"boundaries: fitting {k * (k - 1) // 2} {mode}-attention SVMs on "
             f"{len(z_cal)} calibration latents")
    fitted = boundary_lib.fit_boundaries(z_cal, run.calibration.y, k, run.boundary_config(mode), heldout)
    fitted.save(os.path.join(out, f"boundaries_{mode}.npz"))
    summary[mode] = {"heldout_accuracy": float(np.nanmean(fitted.heldout_accuracy)),
                     "fit_accuracy": float(np.mean(fitted.fit_accuracy)),
                     "per_pair": {f"{s}-{t}": float(a) for (s, t), a in
                                  zip(fitted.pairs, fitted.heldout_accuracy)}}
    run.say(f"boundaries: {mode}: held-out accuracy {summary[mode]['heldout_accuracy']:.4f}")
  shutil.copyfile(os.path.join(out, f"boundaries_{c.attention}.npz"), os.path.join(out, "boundaries.npz"))
  write_json(os.path.join(out, "metrics.json"), {"attention": c.attention, **summary})


def _generation(run, out):
  c = run.config
  classifier = run.classifier()
  phi, head = models.split_at_latent(classifier, c.latent_layer)
  generator = run.work.model("generator")
  grid = tuple(sorted(set(c.eps_grid) | set(c.fine_tune_eps)))
  generated = generation.generate(classifier, phi, head, generator, run.boundaries(),
                                  run.calibration.x, run.calibration.y,
                                  run.generation_config(grid), progress=run.say)
  generated.save(os.path.join(out, "generated.npz"))
  summary = generation.summarize(generated)
  write_json(os.path.join(out, "summary.json"), summary)
  _generation_figures(run, generated, summary)


def _defended(run, out):
  c = run.config
  if c.robust_training:
    return _robust_training(run, out)
  classifier = run.classifier()
  tune = run.fine_tune_config()
  if c.fine_tune_mode == "on_the_fly":
    defended = _fine_tune_on_the_fly(run, classifier, tune, out)
  else:
    generated = run.work.generated(len(run.calibration))
    rows = fine_tuning.fine_tuning_rows(generated, c.fine_tune_mode, c.fine_tune_eps)
    index = generated.index[rows]
    # the clean control: the same examples, schedule and seed, with x' = x
    x_adv = run.calibration.x[index] if c.defence == "clean" else generated.x_adv[rows]
    run.say(f"fine-tuning ({c.defence}, {c.fine_tune_mode}, eps "
             f"{', '.join(f'{e:g}' for e in np.unique(generated.eps[rows]))}): "
             f"{len(rows)} {'clean pairs' if c.defence == 'clean' else 'generated examples'}, "
             f"{c.fine_tune_schedule} schedule: {tune.epochs} epochs, SGD lr {tune.learning_rate:g}, "
             f"momentum {tune.momentum:g}, batch {tune.batch_size}")
    defended = fine_tuning.fine_tune(classifier, run.calibration.x[index], x_adv,
                                 run.calibration.y[index], tune, state_dir=out)
  accuracy = training.accuracy(defended, run.evaluation.x, run.evaluation.y)
  save_model(defended, os.path.join(out, "model.keras"))
  write_json(os.path.join(out, "metrics.json"), {
      "clean_accuracy": accuracy, "mode": c.fine_tune_mode, "eps": list(c.fine_tune_eps),
      "defence": c.defence, "schedule": c.fine_tune_schedule,
      "optimizer": {k: getattr(tune, k) for k in ("epochs", "batch_size", "learning_rate", "momentum")}})
  shutil.rmtree(os.path.join(out, "fine_tune"), ignore_errors=True)


def robustness_pick(evaluation_size, examples, seed):
  """Sorted indices of the evaluation images the robustness stage attacks: `examples` of them (all,
  when fewer), drawn with the run's seed. Benchmarks and tests attack the same images through it."""
  n = min(examples, evaluation_size)
  return np.sort(np.random.default_rng(seed).choice(evaluation_size, n, replace=False))


def robustness_images(dataset, data_dir, calibration_per_class, seed, examples):
  """(x float32, y) of the robustness stage's images, loaded afresh: for benchmarks that attack a
  finished run's model on the stage's own images."""
  from lad_tf.data import datasets
  data = datasets.load(datasets.get_spec(dataset), data_dir)
  _, evaluation = datasets.calibration_split(data.test, calibration_per_class, seed=seed)
  pick = robustness_pick(len(evaluation), examples, seed)
  return np.asarray(evaluation.x[pick], np.float32), evaluation.y[pick]


def _robustness(run, out):
  """AutoAttack on the original and the defended classifier, the same evaluation images for both."""
  c = run.config
  pick = robustness_pick(len(run.evaluation), c.robust_eval_examples, c.seed)
  n = len(pick)
  x, y = run.evaluation.x[pick], run.evaluation.y[pick]
  eps = run.spec.attack_eps
  result = {"attack": f"AutoAttack {c.robust_eval} (lad_tf.attacks.autoattack)", "version": c.robust_eval,
            "eps": eps, "examples": n}
  if n < c.robust_eval_examples:
    result["note"] = (f"{run.spec.name}'s evaluation split (the test split without the calibration "
                      f"examples) has {len(run.evaluation)} images, fewer than {c.robust_eval_examples}: "
                      f"all of them were attacked")
  for name in ("original", "defended"):
    model = run.classifier() if name == "original" else run.work.model("defended")
    run.say(f"robustness: AutoAttack {c.robust_eval} on the {name} classifier, {n} images, eps {eps:g}")
    x_adv, broken_by = autoattack(model, x, y, eps, version=c.robust_eval, seed=c.seed,
                              log=run.say)
    if name == "defended":  # a few of AutoAttack's images for the report
      broken = np.flatnonzero((broken_by != ROBUST) & (broken_by != CLEAN))[:8]
      np.savez(os.path.join(out, "examples.npz"), x=x[broken], x_adv=x_adv[broken], y=y[broken],
               pred=np.argmax(model.predict(x_adv[broken], verbose=0), -1) if len(broken) else y[broken])
    result[name] = autoattack_figures(broken_by)
    run.say(f"robustness: {name}: robust accuracy {result[name]['robust_accuracy']:.4f}")
  write_json(os.path.join(out, "metrics.json"), result)


def _report(run, out):
  """DIR/report/report.html: the headline plot, accuracy against eps, what broke each image, the
  gradient-masking checks, adversarial examples and, for LAD, the paper's figures."""
  c = run.config
  metrics = run.summary()
  robustness = read_json(run.work.path("robustness", "metrics.json"), {}) if "robustness" in run.needed else {}
  n = min(c.report_images, len(run.evaluation))
  pick = np.sort(np.random.default_rng(c.seed + 1).choice(len(run.evaluation), n, replace=False))
  x, y = run.evaluation.x[pick], run.evaluation.y[pick]
  checks = {}
  for name, model in (("original", run.classifier()), ("defended", run.work.model("defended"))):
    run.say(f"report: gradient-masking checks and accuracy against eps on the {name} classifier, {n} images")
    checks[name] = gradient_masking_checks(model, x, y, run.spec.attack_eps, restarts=2, more_steps=50,
                                           seed=c.seed, warn=False)
  examples_path = run.work.path("robustness", "examples.npz")
  examples = dict(np.load(examples_path)) if robustness and os.path.exists(examples_path) else None
  page = defence_report.write(
      out, {**metrics, "robust_broken_by": {m: robustness.get(m, {}) for m in defence_report.MODELS}}, checks,
      run.spec.attack_eps, examples, lad_figure_dir=None if c.robust_training else run.work.path("figures"),
      class_names=run.spec.class_names)
  write_json(os.path.join(out, "report.json"), {"checks": checks, "images": n})
  run.say(f"report: {run.work.path('report', os.path.basename(page))}")


def _generation_figures(run, generated, summary):
  names = run.spec.class_names
  fig = lambda name: run.work.path("figures", name)
  figures.success_curve(fig("success_rate.png"), summary)
  g = generated
  figures.success_heatmap(fig("success_heatmap.png"), g.pair_rates(run.spec.num_classes)[0], names)
  n = len(g.recon_label)
  strips, labels = [], []
  for i in np.random.default_rng(0).choice(n, size=min(6, n), replace=False):
    rows = np.flatnonzero(g.index == i)
    rows = rows[np.argsort(g.eps[rows])]
    strips.append(g.x_adv[rows])
    labels.append(g.image_label[rows])
  figures.transitions(fig("transitions.png"), strips, np.unique(g.eps), labels, names)
  fooled = np.flatnonzero(g.image_label != g.source)
  pick = np.random.default_rng(1).choice(fooled, size=min(30, len(fooled)), replace=False) if len(
      fooled) else np.arange(0)
  figures.image_grid(fig("generated_examples.png"), g.x_adv[pick],
                     [f"{names[g.source[j]]}->{names[g.image_label[j]]} e{g.eps[j]:g}" for j in pick],
                     title="LAD examples: source -> predicted (eps)")


def _robust_training(run, out):
  """A robust defence (lad_tf.robust.train) on the training split, fine-tuning the classifier or
  (defence_init="scratch") training its architecture anew; LAD's parts always belong to the trained one."""
  c = run.config
  rc = c.robust_config()
  train = run.robust_train_split().in_memory()
  lad_parts = {}
  if rc.needs_lad():
    lad_parts = {"generator": run.work.model("generator"), "boundaries": run.boundaries()}
  trained = run.classifier()
  start = trained
  if c.defence_init == "scratch":  # the same layers with fresh (seeded) weights
    keras.utils.set_random_seed(c.seed)
    start = keras.models.clone_model(trained)
  run.say(f"robust training ({c.defence}: {robust.DESCRIPTIONS[c.defence]}): eps {rc.eps:g}, "
           f"{rc.epochs} epochs on {len(train)} training images"
           f"{', from scratch' if c.defence_init == 'scratch' else ''}")
  defended, info = robust.train(start, train.x, train.y, rc, log=run.say, state_dir=out,
                                lad_classifier=trained, **lad_parts)
  accuracy = training.accuracy(defended, run.evaluation.x, run.evaluation.y)
  save_model(defended, os.path.join(out, "model.keras"))
  write_json(os.path.join(out, "metrics.json"), {
      "clean_accuracy": accuracy, "defence": c.defence, "init": c.defence_init, "eps": rc.eps, "epochs": rc.epochs,
      "train_examples": info["train_examples"], "train_s": info["train_s"], "guard": info.get("guard"),
      **({"resumed_epochs": info["resumed_epochs"]} if "resumed_epochs" in info else {})})
  shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)


def _fine_tune_on_the_fly(run, classifier, tune, out):
  """Each epoch draws fresh training examples, random targets and eps, and decodes them anew."""
  c = run.config
  frozen = fine_tuning.clone_classifier(classifier)
  phi, _ = models.split_at_latent(frozen, c.latent_layer)
  generator = run.work.model("generator")
  boundaries = run.boundaries()
  scale = generation.latent_scale(decoder_lib.latents(phi, run.calibration.x))
  tuning = fine_tuning.fine_tuning(classifier, tune)
  rng = np.random.default_rng(c.seed)
  for epoch in range(tune.epochs):
    idx = rng.choice(len(run.data.train), size=min(c.on_the_fly_per_epoch, len(run.data.train)),
                     replace=False)
    x, y = run.data.train.x[idx], run.data.train.y[idx]
    eps = rng.choice(np.array(c.fine_tune_eps, np.float32), size=len(idx))
    gen_config = dataclasses.replace(run.generation_config(), seed=c.seed + epoch)
    x_adv = generation.sample_adversarial(phi, generator, boundaries, x, y, eps, gen_config, scale)
    history = tuning.fit(fine_tuning.paired_dataset(x, x_adv, y, tune.batch_size, c.seed + epoch), 1, verbose=0)
    run.say(f"on-the-fly epoch {epoch + 1}/{tune.epochs}: " +
             ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()))
  return tuning.finish()


STAGES = (
    Stage("classifier", _classifier, _classifier_settings, outputs=("model.keras", "metrics.json"),
          wanted=lambda c: True),
    Stage("generator", _generator, _generator_settings, inputs=lambda c: ("classifier",),
          outputs=("model.keras", "metrics.json")),
    Stage("boundaries", _boundaries, lambda c, spec: {"attention": c.attention}, inputs=lambda c: ("classifier",),
          outputs=("boundaries.npz", "metrics.json")),
    Stage("generation", _generation, _generation_settings,
          inputs=lambda c: ("classifier", "generator", "boundaries"), wanted=lambda c: not c.robust_training,
          outputs=("generated.npz", "summary.json")),
    Stage("defended", _defended, _defended_settings, inputs=_defended_inputs, wanted=lambda c: True,
          outputs=("model.keras", "metrics.json")),
    Stage("robustness", _robustness, _robustness_settings, inputs=lambda c: ("classifier", "defended"),
          wanted=lambda c: c.robust_eval != "none", outputs=("metrics.json",)),
    Stage("report", _report, lambda c, spec: {"images": c.report_images, "eps": spec.attack_eps},
          inputs=lambda c: ("classifier", "defended") + (("robustness",) if c.robust_eval != "none" else ()) + (
              () if c.robust_training else ("generation",)),
          wanted=lambda c: c.report_images > 0, outputs=("report.html", "report.json")),
)
