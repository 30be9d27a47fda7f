"""The defend pipeline: classifier -> generator -> boundaries -> generation -> defended -> robustness.

The defended stage applies DefendConfig.defence (lad_tf.robust.DEFENCES): `lad`, the paper's Eq. 4
fine-tuning on the generated examples; `clean`, its control (the same fine-tuning with x' = x on the
same calibration examples); or a robust-training method (`fgsm_rs`, `pgd_at`, `trades`,
`lad_robust`: lad_tf.robust.train on the training split, the decoder and boundaries only steering
lad_robust's adversary). Only the stages a defence needs run (the adversarial methods but lad_robust
need no generator, boundaries or generation). The robustness stage attacks the original and the
defended classifier with AutoAttack (lad_tf.attacks.autoattack) at the dataset's eps on the same
evaluation images (never the calibration ones).

Each stage writes one folder of the work directory (lad_tf.run.workdir) keyed on the fingerprint of the
settings it depends on (its own and its inputs'): a re-run does nothing, a changed setting reruns
exactly the stages it affects, and a killed run resumes at the stage it was in (training stages
resume at their last finished epoch). Export (serving) is a stage of the command line
(pipelines/stages.py), above the library. `pipelines/defend.py` is the command line.

Distribution (DefendConfig.execution.strategy, see lad_tf.runtime.distribute and docs/SCALING.md): the three training
loops (classifier, generator, fine-tuning) run under the chosen tf.distribute strategy; boundaries
and generation are cheap and run on every worker alike. Under `multi_worker` every worker runs the
same pipeline; only the chief writes the work directory and exports, the others work in a temporary
folder they delete at exit (they start from a copy of the stages the chief already finished).
"""
import atexit
import dataclasses
import logging
import os
import shutil
import tempfile

import keras
import numpy as np

from lad_tf.lad import boundary as boundary_lib
from lad_tf import models, robust
from lad_tf.data import datasets
from lad_tf.evaluation import figures
from lad_tf.lad import fine_tuning, generation
from lad_tf.runtime import distribute, execution, training
from lad_tf.lad import decoder as decoder_lib
from lad_tf.run.defend_config import STAGES, DefendConfig, stage_settings
from lad_tf.errors import ConfigError
from lad_tf.run.workdir import WorkDir
from lad_tf.runtime.files import load_model, read_json, save_model, write_json

log = logging.getLogger("lad_tf")


ROBUST_MEMORY_BYTES = 4 * 2**30  # float32 training images a robust defence may decode into memory


class DefendRun:
  """One run of the pipeline over a work directory; each stage method is idempotent."""

  def __init__(self, workdir, config, progress=None):
    self.config = config.resolved()
    c = self.config
    self.strategy = c.execution.get_strategy()  # first: MultiWorkerMirroredStrategy needs it
    self.chief = distribute.is_chief(self.strategy)
    self.work = WorkDir(workdir if self.chief else self._worker_dir(workdir))
    self.say = progress or log.info
    self.spec = datasets.get_spec(self.config.dataset)
    self.settings = stage_settings(self.config, self.spec)
    self.prepared = False
    self.data = datasets.load(self.config.dataset, data_dir=self.config.data_dir)
    self.say(f"dataset {self.spec.name} ({self.data.source}): {len(self.data.train)} train, "
             f"{len(self.data.test)} test")
    self.calibration, self.evaluation = datasets.calibration_split(
        self.data.test, self.config.calibration_per_class, self.config.seed)
    self._robust_train = None
    if c.robust_training:
      self.robust_train_split()  # a split too big to hold fails now, not after the classifier's hours

  @staticmethod
  def _worker_dir(workdir):
    """A non-chief worker's work directory: temporary, deleted at exit, holding a copy of the stages
    the chief already finished (when the chief's work directory is visible here)."""
    root = tempfile.mkdtemp(prefix="lad_tf-worker-")
    atexit.register(shutil.rmtree, root, True)
    for stage in STAGES:
      done = os.path.join(workdir, stage)
      if os.path.isdir(done):
        shutil.copytree(done, os.path.join(root, stage))
    return root

  def close(self):
    """Deletes a non-chief worker's temporary work directory (the chief's stays)."""
    if not self.chief:
      shutil.rmtree(self.work.root, ignore_errors=True)

  def prepare(self):
    """The process-wide settings (precision, determinism) and DIR/config.json, once, before the
    first stage runs."""
    if self.prepared:
      return
    execution.configure(self.config.execution)
    c = self.config
    write_json(self.work.path("config.json"),
               {"dataset": c.dataset, "data_dir": c.data_dir, "seed": c.seed,
                "calibration_per_class": c.calibration_per_class, "full": dataclasses.asdict(c)})
    self.prepared = True

  def _stage(self, name, fn):
    self.prepare()
    force = name in self.config.force
    settings = self.settings[name]
    if distribute.num_workers(self.strategy) > 1:
      done = self.work.done(name, settings) and not force
      if not distribute.all_equal(self.strategy, int(done)):
        raise RuntimeError(f"stage {name} is done on some workers only: every worker must see the "
                           f"chief's work directory (a shared filesystem) to resume, or use --force")
    return self.work.run_stage(name, settings, fn, force=force)

  # -- stages -------------------------------------------------------------------------------
  def classifier_stage(self):
    def run(out):
      c = self.config
      if c.classifier_path:
        model = load_model(c.classifier_path, "classifier (--classifier)")
        self.say(f"classifier: using {c.classifier_path}")
        metrics = {"source": c.classifier_path}
      else:
        keras.utils.set_random_seed(c.seed)
        model = models.build_classifier(c.architecture, self.spec.image_shape, self.spec.num_classes)
        self.say(f"classifier: training {c.architecture} for {c.classifier_epochs} epochs")
        history, _ = training.train_classifier(
            model, self.data.train, self.evaluation,
            training.TrainConfig(epochs=c.classifier_epochs, batch_size=self.spec.classifier_batch_size,
                                 execution=c.execution), out)
        metrics = {"source": c.architecture, "history": history}
      models.split_at_latent(model, c.latent_layer)  # fail early on a bad --latent_layer
      metrics["test_accuracy"] = training.accuracy(model, self.evaluation.x, self.evaluation.y)
      save_model(model, os.path.join(out, "model.keras"))
      write_json(os.path.join(out, "metrics.json"), metrics)
      shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
    return self._stage("classifier", run)

  def classifier(self):
    return self.work.model("classifier")

  def generator_stage(self):
    def run(out):
      c = self.config
      classifier = self.classifier()
      phi, _ = models.split_at_latent(classifier, c.latent_layer)
      phi.trainable = False
      latent_dim = int(phi.output_shape[-1])
      name, generator = self._build_generator(latent_dim)
      self.say(f"generator: training {name} on {latent_dim}-d latents for {c.generator_epochs} epochs "
               f"({c.recon_norm} loss)")
      result = decoder_lib.train_decoder(
          phi, generator, self.data.train, self.evaluation,
          decoder_lib.DecoderConfig(epochs=c.generator_epochs, batch_size=self.spec.generator_batch_size,
                                    recon_norm=c.recon_norm, loss_at_epochs=c.decoder_loss_epochs,
                                    execution=c.execution), out)
      save_model(generator, os.path.join(out, "model.keras"))
      write_json(os.path.join(out, "metrics.json"), {"architecture": name, "recon_norm": c.recon_norm,
                                                     "epochs": c.generator_epochs, **result})
      sample = self.evaluation.x[:12]
      figures.reconstructions(self.work.path("figures", "reconstructions.png"), sample,
                              generator.predict(phi.predict(sample, verbose=0), verbose=0))
      shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
      self.say(f"generator: train loss {result['train_loss']:.5f}, test loss {result['test_loss']:.5f}")
    return self._stage("generator", run)

  def _build_generator(self, latent_dim):
    """(architecture name, fresh decoder): the configured one, or conv_decoder where the spec's
    does not fit the images."""
    name = self.config.generator_architecture or self.spec.generator
    try:
      return name, models.build_generator(name, latent_dim, self.spec.image_shape)
    except ValueError:
      return "conv_decoder", models.build_generator("conv_decoder", latent_dim, self.spec.image_shape)

  # -- the plan (lad_tf.run.plan) -------------------------------------------------------------------
  def planned_classifier(self):
    """The classifier the later stages will use: the trained one when the stage is done, the user's,
    else a fresh zoo build (same shapes and cost)."""
    c = self.config
    if self.work.done("classifier", self.settings["classifier"]) and "classifier" not in c.force:
      return self.classifier()
    if c.classifier_path:
      return load_model(c.classifier_path, "classifier (--classifier)")
    return models.build_classifier(c.architecture, self.spec.image_shape, self.spec.num_classes)

  def planned_generator(self, latent_dim):
    return self._build_generator(latent_dim)[1]

  def plan(self, batches=3):
    """(lad_tf.run.plan.StageEstimate list, printable lines): each stage's time estimated from `batches`
    timed batches of its pieces."""
    from lad_tf.run import plan as plan_lib
    self.prepare()
    return plan_lib.plan(self, batches)

  def boundaries_stage(self):
    def run(out):
      c = self.config
      phi, _ = models.split_at_latent(self.classifier(), c.latent_layer)
      z_cal = decoder_lib.latents(phi, self.calibration.x)
      heldout = (decoder_lib.latents(phi, self.evaluation.x), self.evaluation.y)
      k = self.spec.num_classes
      summary = {}
      for mode in dict.fromkeys([c.attention, "none"]):
        self.say(f"boundaries: fitting {k * (k - 1) // 2} {mode}-attention SVMs on "
                 f"{len(z_cal)} calibration latents")
        fitted = boundary_lib.fit_boundaries(z_cal, self.calibration.y, k, self.boundary_config(mode), heldout)
        fitted.save(os.path.join(out, f"boundaries_{mode}.npz"))
        summary[mode] = {"heldout_accuracy": float(np.nanmean(fitted.heldout_accuracy)),
                         "fit_accuracy": float(np.mean(fitted.fit_accuracy)),
                         "per_pair": {f"{s}-{t}": float(a) for (s, t), a in
                                      zip(fitted.pairs, fitted.heldout_accuracy)}}
        self.say(f"boundaries: {mode}: held-out accuracy {summary[mode]['heldout_accuracy']:.4f}")
      shutil.copyfile(os.path.join(out, f"boundaries_{c.attention}.npz"), os.path.join(out, "boundaries.npz"))
      write_json(os.path.join(out, "metrics.json"), {"attention": c.attention, **summary})
    return self._stage("boundaries", run)

  def boundary_config(self, mode):
    """The boundary fit's settings: the authors', XLA where the spec measured it faster."""
    return boundary_lib.BoundaryConfig(mode=mode, seed=self.config.seed,
                                       jit_compile=self.spec.boundary_jit_compile)

  def boundaries(self):
    return self.work.boundaries()

  def _generation_config(self, eps_grid=None):
    c = self.config
    return generation.GenerationConfig(eps_grid=tuple(eps_grid or c.eps_grid), normal=c.normal,
                                       target=c.target, adaptive=c.adaptive, seed=c.seed)

  def generation_stage(self):
    def run(out):
      c = self.config
      classifier = self.classifier()
      phi, head = models.split_at_latent(classifier, c.latent_layer)
      generator = self.work.model("generator")
      grid = tuple(sorted(set(c.eps_grid) | set(c.fine_tune_eps)))
      generated = generation.generate(classifier, phi, head, generator, self.boundaries(),
                                      self.calibration.x, self.calibration.y,
                                      self._generation_config(grid), progress=self.say)
      generated.save(os.path.join(out, "generated.npz"))
      summary = generation.summarize(generated)
      write_json(os.path.join(out, "summary.json"), summary)
      self._generation_figures(generated, summary)
    return self._stage("generation", run)

  def _generation_figures(self, generated, summary):
    names = self.spec.class_names
    fig = lambda name: self.work.path("figures", name)
    figures.success_curve(fig("success_rate.png"), summary)
    g = generated
    figures.success_heatmap(fig("success_heatmap.png"), g.pair_rates(self.spec.num_classes)[0], names)
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

  def defended_stage(self):
    def run(out):
      c = self.config
      if c.robust_training:
        return self._robust_training(out)
      classifier = self.classifier()
      tune = self.fine_tune_config()
      if c.fine_tune_mode == "on_the_fly":
        defended = self._fine_tune_on_the_fly(classifier, tune, out)
      else:
        generated = self.work.generated(len(self.calibration))
        rows = fine_tuning.fine_tuning_rows(generated, c.fine_tune_mode, c.fine_tune_eps)
        index = generated.index[rows]
        # the clean control: the same examples, schedule and seed, with x' = x
        x_adv = self.calibration.x[index] if c.defence == "clean" else generated.x_adv[rows]
        self.say(f"fine-tuning ({c.defence}, {c.fine_tune_mode}, eps "
                 f"{', '.join(f'{e:g}' for e in np.unique(generated.eps[rows]))}): "
                 f"{len(rows)} {'clean pairs' if c.defence == 'clean' else 'generated examples'}, "
                 f"{c.fine_tune_schedule} schedule: {tune.epochs} epochs, SGD lr {tune.learning_rate:g}, "
                 f"momentum {tune.momentum:g}, batch {tune.batch_size}")
        defended = fine_tuning.fine_tune(classifier, self.calibration.x[index], x_adv,
                                     self.calibration.y[index], tune, state_dir=out)
      accuracy = training.accuracy(defended, self.evaluation.x, self.evaluation.y)
      save_model(defended, os.path.join(out, "model.keras"))
      write_json(os.path.join(out, "metrics.json"), {
          "clean_accuracy": accuracy, "mode": c.fine_tune_mode, "eps": list(c.fine_tune_eps),
          "defence": c.defence, "schedule": c.fine_tune_schedule,
          "optimizer": {k: getattr(tune, k) for k in ("epochs", "batch_size", "learning_rate", "momentum")}})
      shutil.rmtree(os.path.join(out, "fine_tune"), ignore_errors=True)
    return self._stage("defended", run)

  def fine_tune_config(self):
    """The defence's Eq. 4 settings: the named schedule (fine_tuning.FINE_TUNE_SCHEDULES) with the
    configured epochs, under the run's execution settings."""
    c = self.config
    return fine_tuning.schedule_config(c.fine_tune_schedule, c.fine_tune_epochs, execution=c.execution)

  def robust_train_split(self):
    """The training rows a robust defence trains on (--defence_train_examples of them, else all).
    lad_tf.robust.train holds them as float32; splits kept as uint8 or read from files (SVHN: 0.9 GB as
    float32) are decoded when the stage runs, up to ROBUST_MEMORY_BYTES. Chosen once per run (the
    set-up check, the plan and the stage share it)."""
    if self._robust_train is not None:
      return self._robust_train
    c = self.config
    train = self.data.train
    if c.defence_train_examples and c.defence_train_examples < len(train):
      train = train.take(np.sort(np.random.default_rng(c.seed).choice(
          len(train), c.defence_train_examples, replace=False)))
    per_image = 4 * int(np.prod(self.spec.image_shape))
    if train.streamed and len(train) * per_image > ROBUST_MEMORY_BYTES:
      fit = ROBUST_MEMORY_BYTES // per_image
      raise ConfigError(f"robust training ({c.defence}) holds its training images in memory as float32: "
                        f"{len(train)} {self.spec.name} images take {len(train) * per_image / 2**30:.1f} GB, "
                        f"over the {ROBUST_MEMORY_BYTES / 2**30:.0f} GB limit; pass "
                        f"--defence_train_examples={min(fit, 20000)} (at most {fit} fit)")
    self._robust_train = train
    return train

  def _robust_training(self, out):
    """A robust defence (lad_tf.robust.train) on the training split, fine-tuning the classifier or
    (defence_init="scratch") training its architecture anew; LAD's parts always belong to the trained one."""
    c = self.config
    rc = c.robust_config()
    train = self.robust_train_split().in_memory()
    lad_parts = {}
    if rc.needs_lad():
      lad_parts = {"generator": self.work.model("generator"), "boundaries": self.boundaries()}
    trained = self.classifier()
    start = trained
    if c.defence_init == "scratch":  # the same layers with fresh (seeded) weights
      keras.utils.set_random_seed(c.seed)
      start = keras.models.clone_model(trained)
    self.say(f"robust training ({c.defence}: {robust.DESCRIPTIONS[c.defence]}): eps {rc.eps:g}, "
             f"{rc.epochs} epochs on {len(train)} training images"
             f"{', from scratch' if c.defence_init == 'scratch' else ''}")
    defended, info = robust.train(start, train.x, train.y, rc, log=self.say, state_dir=out,
                                  lad_classifier=trained, **lad_parts)
    accuracy = training.accuracy(defended, self.evaluation.x, self.evaluation.y)
    save_model(defended, os.path.join(out, "model.keras"))
    write_json(os.path.join(out, "metrics.json"), {
        "clean_accuracy": accuracy, "defence": c.defence, "init": c.defence_init, "eps": rc.eps, "epochs": rc.epochs,
        "train_examples": info["train_examples"], "train_s": info["train_s"], "guard": info.get("guard"),
        **({"resumed_epochs": info["resumed_epochs"]} if "resumed_epochs" in info else {})})
    shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)

  def robustness_stage(self):
    """AutoAttack on the original and the defended classifier, the same evaluation images for both."""
    def run(out):
      c = self.config
      from lad_tf.attacks.autoattack import CLEAN, ROBUST, autoattack
      n = min(c.robust_eval_examples, len(self.evaluation))
      pick = np.sort(np.random.default_rng(c.seed).choice(len(self.evaluation), n, replace=False))
      x, y = self.evaluation.x[pick], self.evaluation.y[pick]
      eps = self.spec.attack_eps
      result = {"attack": f"AutoAttack {c.robust_eval} (lad_tf.attacks.autoattack)", "version": c.robust_eval,
                "eps": eps, "examples": n}
      if n < c.robust_eval_examples:
        result["note"] = (f"{self.spec.name}'s evaluation split (the test split without the calibration "
                          f"examples) has {len(self.evaluation)} images, fewer than {c.robust_eval_examples}: "
                          f"all of them were attacked")
      for name in ("original", "defended"):
        model = self.classifier() if name == "original" else self.work.model("defended")
        self.say(f"robustness: AutoAttack {c.robust_eval} on the {name} classifier, {n} images, eps {eps:g}")
        _, broken_by = autoattack(model, x, y, eps, version=c.robust_eval, seed=c.seed,
                                  log=self.say)
        result[name] = {"robust_accuracy": float(np.mean(broken_by == ROBUST)),
                        "clean_accuracy": float(np.mean(broken_by != CLEAN)),
                        "broken_by": {k: int(v) for k, v in zip(*np.unique(broken_by, return_counts=True))}}
        self.say(f"robustness: {name}: robust accuracy {result[name]['robust_accuracy']:.4f}")
      write_json(os.path.join(out, "metrics.json"), result)
    return self._stage("robustness", run)

  def _fine_tune_on_the_fly(self, classifier, tune, out):
    """Each epoch draws fresh training examples, random targets and eps, and decodes them anew."""
    c = self.config
    frozen = fine_tuning.clone_classifier(classifier)
    phi, _ = models.split_at_latent(frozen, c.latent_layer)
    generator = self.work.model("generator")
    boundaries = self.boundaries()
    scale = generation.latent_scale(decoder_lib.latents(phi, self.calibration.x))
    tuning = fine_tuning.fine_tuning(classifier, tune)
    rng = np.random.default_rng(c.seed)
    for epoch in range(tune.epochs):
      idx = rng.choice(len(self.data.train), size=min(c.on_the_fly_per_epoch, len(self.data.train)),
                       replace=False)
      x, y = self.data.train.x[idx], self.data.train.y[idx]
      eps = rng.choice(np.array(c.fine_tune_eps, np.float32), size=len(idx))
      gen_config = dataclasses.replace(self._generation_config(), seed=c.seed + epoch)
      x_adv = generation.sample_adversarial(phi, generator, boundaries, x, y, eps, gen_config, scale)
      history = tuning.fit(fine_tuning.paired_dataset(x, x_adv, y, tune.batch_size, c.seed + epoch), 1, verbose=0)
      self.say(f"on-the-fly epoch {epoch + 1}/{tune.epochs}: " +
               ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()))
    return tuning.finish()

  # -- summary and export -------------------------------------------------------------------
  def write_metrics(self):
    needed = self.config.needed_stages()

    def read(stage, name):  # only what this run's stages made with its settings (not a stale folder)
      if stage not in needed or not self.work.done(stage, self.settings[stage]):
        return {}
      return read_json(self.work.path(stage, name), {})
    original = read("classifier", "metrics.json")
    defended = read("defended", "metrics.json")
    gen = read("generator", "metrics.json")
    bounds = read("boundaries", "metrics.json")
    summary = read("generation", "summary.json")
    robustness = read("robustness", "metrics.json")
    attention = bounds.get("attention", self.config.attention)
    name = defended.get("defence", "lad")
    lad_like = name in robust.EQ4_DEFENCES
    metrics = {
        "dataset": self.spec.name,
        "defence": name,
        "evaluation_examples": len(self.evaluation),
        "calibration_per_class": self.config.calibration_per_class,
        "original": {"clean_accuracy": original.get("test_accuracy"),
                     "robust_accuracy": robustness.get("original", {}).get("robust_accuracy")},
        "defended": {"clean_accuracy": defended.get("clean_accuracy"),
                     "robust_accuracy": robustness.get("defended", {}).get("robust_accuracy"),
                     **({"fine_tune_mode": defended.get("mode"), "fine_tune_eps": defended.get("eps"),
                         "fine_tune_schedule": defended.get("schedule"),
                         "fine_tune_optimizer": defended.get("optimizer")} if lad_like
                        else {"eps": defended.get("eps"), "epochs": defended.get("epochs"),
                              "train_examples": defended.get("train_examples"), "train_s": defended.get("train_s"),
                              "guard_rollbacks": (defended.get("guard") or {}).get("rollbacks")})},
        "robust_evaluation": {k: v for k, v in robustness.items() if k not in ("original", "defended")},
        "generator": {"train_loss": gen.get("train_loss"), "test_loss": gen.get("test_loss"),
                      "recon_norm": gen.get("recon_norm"), "epochs": gen.get("epochs"),
                      "loss_at_epoch": gen.get("loss_at_epoch")},
        "boundary": {"accuracy": bounds.get(attention, {}).get("heldout_accuracy"),
                     "plain_svm_accuracy": bounds.get("none", {}).get("heldout_accuracy"),
                     "attention": attention},
        "lad": {"attack_success_rate": summary.get("success_rate"),
                "attack_success_rate_recon_ok": summary.get("success_rate_recon_ok"),
                "targeted_rate": summary.get("targeted_rate"),
                "inconsistency_rate": summary.get("inconsistency_rate"),
                "eps_convention": self.config.normal},
        "stages_s": read_json(self.work.path("stages.json"), {}),
    }
    write_json(self.work.path("metrics.json"), metrics)
    if metrics["original"]["clean_accuracy"] is not None and metrics["defended"]["clean_accuracy"] is not None:
      figures.accuracy_bars(self.work.path("figures", "clean_accuracy.png"),
                            {"original": metrics["original"]["clean_accuracy"],
                             ("LAD" if name == "lad" else name) + "-defended": metrics["defended"]["clean_accuracy"]})
    return metrics

  def run(self, stop_after=None):
    """Every stage (up to and including `stop_after`, a name of STAGES, when given), then
    metrics.json; returns its content."""
    if stop_after is not None and stop_after not in STAGES:
      raise ConfigError(f"stop_after must be one of {STAGES}, got '{stop_after}'")
    try:
      for stage in self.config.needed_stages():
        getattr(self, f"{stage}_stage")()
        if stage == stop_after:
          break
      return self.write_metrics()
    finally:
      self.close()


def run_defend(workdir, config=DefendConfig(), progress=None):
  """Runs (or resumes) every stage of the defence in `workdir`; returns metrics.json's content (the
  command line adds the export stage: pipelines.stages.run_defend)."""
  return DefendRun(workdir, config, progress).run()
