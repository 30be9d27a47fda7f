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

import numpy as np

from lad_tf.lad import boundary as boundary_lib
from lad_tf import models, robust
from lad_tf.data import datasets
from lad_tf.lad import fine_tuning, generation
from lad_tf.runtime import distribute, execution
from lad_tf.run import defend_stages
from lad_tf.run.defend_config import STAGES, DefendConfig
from lad_tf.run.stage import fingerprint_settings, needed
from lad_tf.errors import ConfigError
from lad_tf.run.workdir import WorkDir
from lad_tf.runtime.files import load_model, read_json, write_json

log = logging.getLogger("lad_tf")


STAGE_BY_NAME = {declared.name: declared for declared in defend_stages.STAGES}
ROBUST_MEMORY_BYTES = 4 * 2**30  # float32 training images a robust defence may decode into memory


class DefendRun:
  """One run of the pipeline over a work directory; each stage method is idempotent."""

  def __init__(self, workdir, config, progress=None):
    self.spec = datasets.get_spec(config.dataset)  # the one lookup of the dataset's spec in a run
    self.config = config.resolved(self.spec)
    c = self.config
    self.strategy = c.execution.get_strategy()  # first: MultiWorkerMirroredStrategy needs it
    self.chief = distribute.is_chief(self.strategy)
    self.work = WorkDir(workdir if self.chief else self._worker_dir(workdir))
    self.say = progress or log.info
    self.settings = fingerprint_settings(defend_stages.STAGES, self.config, self.spec)
    self.needed = needed(defend_stages.STAGES, self.config)
    self.prepared = False
    self.data = datasets.load(self.spec, data_dir=self.config.data_dir)
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

  def run_stage(self, name):
    """Runs stage `name` (lad_tf.run.defend_stages) unless it is done with this run's settings;
    returns its folder."""
    self.prepare()
    declared = STAGE_BY_NAME[name]
    force = name in self.config.force
    settings = self.settings[name]
    if distribute.num_workers(self.strategy) > 1:
      done = self.work.done(name, settings) and not force
      if not distribute.all_equal(self.strategy, int(done)):
        raise RuntimeError(f"stage {name} is done on some workers only: every worker must see the "
                           f"chief's work directory (a shared filesystem) to resume, or use --force")
    return self.work.run_stage(name, settings, lambda out: declared.run(self, out), force=force,
                               outputs=declared.outputs)

  def classifier(self):
    return self.work.model("classifier")

  def build_generator(self, latent_dim):
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
    return self.build_generator(latent_dim)[1]

  def plan(self, batches=3):
    """(lad_tf.run.plan.StageEstimate list, printable lines): each stage's time estimated from `batches`
    timed batches of its pieces."""
    from lad_tf.run import plan as plan_lib
    self.prepare()
    return plan_lib.plan(self, batches)

  def boundary_config(self, mode):
    """The boundary fit's settings: the authors', XLA where the spec measured it faster."""
    return boundary_lib.BoundaryConfig(mode=mode, seed=self.config.seed,
                                       jit_compile=self.spec.boundary_jit_compile)

  def boundaries(self):
    return self.work.boundaries()

  def generation_config(self, eps_grid=None):
    c = self.config
    return generation.GenerationConfig(eps_grid=tuple(eps_grid or c.eps_grid), normal=c.normal,
                                       target=c.target, adaptive=c.adaptive, seed=c.seed)

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

  # -- summary and export -------------------------------------------------------------------
  def summary(self):
    """The run's figures from each stage's files (only what this run's stages made with its settings)."""
    needed = self.needed

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
    return metrics

  def write_metrics(self):
    """DIR/metrics.json: the summary of every stage this run made; returns it."""
    metrics = self.summary()
    write_json(self.work.path("metrics.json"), metrics)
    return metrics

  def run(self, stop_after=None):
    """Every stage (up to and including `stop_after`, a name of STAGES, when given), then
    metrics.json; returns its content."""
    if stop_after is not None and stop_after not in STAGES:
      raise ConfigError(f"stop_after must be one of {STAGES}, got '{stop_after}'")
    try:
      for name in self.needed:
        self.run_stage(name)
        if name == stop_after:
          break
      return self.write_metrics()
    finally:
      self.close()


def run_defend(workdir, config=DefendConfig(), progress=None):
  """Runs (or resumes) every stage of the defence in `workdir`; returns metrics.json's content (the
  command line adds the export stage: pipelines.stages.run_defend)."""
  return DefendRun(workdir, config, progress).run()
