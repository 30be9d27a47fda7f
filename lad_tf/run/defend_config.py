"""The defend pipeline's settings: `DefendConfig`, what each stage computes, checked and resolved
against the dataset's spec. The stages are declared in lad_tf.run.defend_stages; lad_tf.run.defend runs
them.

This module imports no TensorFlow (the choices come from lad_tf.choices, the parts that train are
imported where they are used), so `python -m pipelines.defend --help` prints without starting it."""
import dataclasses
from typing import Optional, Sequence, Tuple

from lad_tf import choices, defences
from lad_tf.data import datasets
from lad_tf.lad import generation
from lad_tf.errors import ConfigError
from lad_tf.runtime.execution_config import ExecutionConfig


STAGES = choices.DEFEND_STAGES  # as lad_tf.run.defend_stages declares them
FINE_TUNE_MODES = ("mix", "eps", "on_the_fly")
ROBUST_EVALS = (*choices.AUTOATTACK_VERSIONS, "none")  # AutoAttack version of the robustness stage ("none": skip it)


def _setting(default, help_text, **command_line):
  """A DefendConfig field and what it means; pipelines.config_flags makes its flag of it (command_line:
  flag= its name on the command line where it differs, None to keep it off; choices= the library's
  tuple of accepted values; min= the lowest value of a count, 1 unless said)."""
  return dataclasses.field(default=default, metadata={"help": help_text, **command_line})


_DEFENCE_HELP = (
    "The defence: " + "; ".join(f"{name}: {defences.DESCRIPTIONS[name]}" for name in defences.DEFENCES) +
    ". lad and clean fine-tune on the calibration examples (--fine_tune_* flags); the others train on the "
    "training split (--defence_* flags). The default is the robust benchmark's choice: the best AutoAttack "
    "accuracy over 3 seeds within 3x the cost of clean training, ties to clean accuracy beyond sampling "
    "error, else to the more robust (README, 'Robust training').")


@dataclasses.dataclass
class DefendConfig:
  """Everything `run_defend` needs; None fields take the dataset spec's defaults. Each field's help is
  its `python -m pipelines.defend` flag's (pipelines.config_flags)."""
  dataset: str = "digits"
  data_dir: Optional[str] = None
  classifier_path: Optional[str] = _setting(None, "Path of your own Keras classifier (.keras, logits) to "
                                            "defend instead of training the zoo's.", flag="classifier")
  latent_layer: Optional[str] = _setting(None, "Name of the latent layer of --classifier (default: "
                                         "'latent'); only the defences that use LAD's parts (lad, clean, "
                                         "lad_robust) read it.")
  allow_weak_classifier: bool = _setting(False, "Defend --classifier even when it is no better than chance "
                                         "on the evaluation images (it is refused otherwise).")
  architecture: Optional[str] = _setting(None, "Zoo classifier to train (default: the spec's; "
                                         "pipelines.train_classifier --architecture).", flag=None)
  generator_architecture: Optional[str] = _setting(
      None, "Decoder architecture of lad_tf.models.GENERATORS (default: the spec's, the paper's; e.g. "
      "svhnnet_decoder_light, 3x faster but 2.4x the L1 error, benchmarks/svhn_speed.json).", flag="generator")
  calibration_per_class: Optional[int] = _setting(
      None, "Test examples per class for boundaries and generation (the paper: 20-200; default: the "
      "spec's); excluded from every reported accuracy.")
  classifier_epochs: Optional[int] = _setting(None, "Classifier training epochs (default: the spec's).")
  generator_epochs: Optional[int] = _setting(None, "Generator training epochs (default: the spec's).")
  recon_norm: Optional[str] = _setting(None, "Generator loss (default: the spec's).",
                                       choices=choices.RECON_NORMS)
  attention: str = _setting("authors", "Attention of the SVM.", choices=choices.ATTENTION_MODES)
  eps_grid: Optional[Tuple[float, ...]] = _setting(None, "eps grid (default: the spec's), in units of "
                                                   "--normal.", flag="eps")
  normal: str = _setting("relative", "eps convention: relative to the mean latent norm, or the authors' "
                         "raw SVM weight.", choices=generation.NORMALS)
  target: str = _setting("random", "Target class of each generated example.", choices=generation.TARGETS)
  adaptive: bool = _setting(False, "Also find each example's smallest crossing eps.")
  fine_tune_mode: str = _setting("mix", "mix: all --fine_tune_eps; eps: the first only (FT-eps); "
                                 "on_the_fly: generate from the training set during fine-tuning.",
                                 choices=FINE_TUNE_MODES)
  fine_tune_eps: Tuple[float, ...] = _setting((0.1, 0.2, 0.3), "eps of the fine-tuning set.")
  fine_tune_schedule: str = _setting(
      choices.DEFAULT_SCHEDULE, "Fine-tuning schedule (SGD): " + "; ".join(
          f"{name}: {s['epochs']} epochs, lr {s['learning_rate']}, momentum {s['momentum']}, batch "
          f"{s['batch_size']}" for name, s in choices.FINE_TUNE_SCHEDULES.items()) +
      " (authors: the authors' MNIST run).", choices=tuple(choices.FINE_TUNE_SCHEDULES))
  fine_tune_epochs: Optional[int] = _setting(None, "Fine-tuning epochs (default: the schedule's).")
  decoder_loss_epochs: Tuple[int, ...] = _setting(
      (), "Epochs at which the decoder's train and test loss (MSE with the l2 loss) is measured during its "
      "training, e.g. 10,30,100 (generator/metrics.json loss_at_epoch; each must be <= --generator_epochs).",
      flag="decoder_mse_epochs")
  on_the_fly_per_epoch: int = _setting(2000, "Examples generated per epoch of on_the_fly fine-tuning.",
                                       flag=None)
  defence: str = _setting(defences.DEFAULT_DEFENCE, _DEFENCE_HELP, choices=defences.DEFENCES)
  defence_eps: Optional[float] = _setting(
      None, "L-inf eps of the robust defences (fgsm_rs, pgd_at, trades, nfgsm, atta, lad_robust; default: "
      "the dataset's attack eps, e.g. 0.1 digits/Fashion-MNIST, 0.3 MNIST).")
  # the robust defences' training: None, the dataset's recipe (lad_tf.data.datasets.DefenceRecipe)
  defence_epochs: Optional[int] = _setting(None, "Epochs of the robust defences (default: the dataset's; "
                                           "5; Fashion-MNIST and MNIST 10).")
  defence_learning_rate: Optional[float] = _setting(
      None, "Adam learning rate of the robust defences (with --defence_lr_schedule=cyclic, the peak; "
      "default: the dataset's, 0.001, MNIST 0.005).")
  defence_lr_schedule: Optional[str] = _setting(
      None, "Learning rate of the robust defences: constant, or cyclic (0 -> rate -> 0 over the run, Wong "
      "et al. 2020; default: the dataset's, constant, MNIST cyclic: what eps 0.3 needs, docs/ROBUST.md).",
      choices=defences.LR_SCHEDULES)
  defence_train_examples: Optional[int] = _setting(
      None, "Training images of the robust defences (default: the whole training split; fewer for a "
      "quick run on 2 cores).")
  defence_pgd_steps: int = _setting(10, "Inner PGD steps of pgd_at and trades (each costs about 0.8x a "
                                    "clean training step on the CPU; 3 steps at MNIST eps 0.3: "
                                    "docs/ROBUST.md).")
  defence_init: Optional[str] = _setting(
      None, "Where the robust defences start: the trained classifier (finetune), or its architecture "
      "with fresh weights (scratch; default: the dataset's, finetune, MNIST scratch).",
      choices=defences.DEFENCE_INITS)
  defence_step_scale: Optional[float] = _setting(
      None, "The single-step defences' (fgsm_rs, nfgsm, atta, lad_robust) step at the start, as a "
      "fraction of their usual step; the overfitting guard halves it after a collapse (default: the "
      "dataset's, 1, MNIST 0.5).")
  defence_atta_steps: Optional[int] = _setting(
      None, "atta's projected steps per batch, eps / K each, carried over from epoch to epoch (ATTA-K; "
      "each step costs one more input gradient per batch; default: the dataset's, 1).")
  defence_selection: Optional[str] = _setting(
      None, "Which epoch the single-step defences hand back: robust, the best held-out PGD-10 accuracy; "
      "balanced, the best among the epochs within a point of the best held-out clean accuracy (default: "
      "the dataset's).", choices=defences.SELECTIONS)
  defence_weight_averaging: Optional[float] = _setting(
      None, "Momentum per step of a moving average of the robust defences' weights, handed back instead of "
      "the weights as trained (e.g. 0.999; 0: none; default: the dataset's).")
  defence_tradeoff: Optional[float] = _setting(
      None, "atta's clean/robust trade-off: 0 trains on the adversarial examples alone; beta > 0 on "
      "CE(clean) + beta KL(clean || adversarial) (TRADES on the carried perturbations): smaller beta, more "
      "clean accuracy and less robustness (default: the dataset's).")
  defence_generated_weight: Optional[float] = _setting(
      None, "atta with LAD's generator as a data source: W > 0 adds W x CE on LAD's decoded boundary examples "
      "(one per training image, labelled with its source class; runs the generator and boundaries stages; "
      "default: the dataset's, 0).")
  robust_eval: str = _setting(
      "standard", "Robustness stage: AutoAttack (APGD-CE, APGD-T, FAB-T, Square; fast: APGD-CE and "
      "APGD-T) on the original and the defended classifier at the dataset's eps, reported as "
      "robust_accuracy in metrics.json and the model card; none skips it.",
      flag="autoattack", choices=ROBUST_EVALS)
  robust_eval_examples: int = _setting(
      1000, "Evaluation images (never the calibration ones) the robustness stage attacks (fewer if the "
      "split has fewer; metrics.json says so).", flag="autoattack_examples")
  report_images: int = _setting(100, "Evaluation images of the report's accuracy-against-eps curve and "
                                "gradient-masking checks (DIR/report/report.html; 0: no report).", min=0)
  force: Sequence[str] = _setting((), f"Stages to recompute ({', '.join(STAGES)}) or 'all'.")
  # seed, strategy, loop, determinism, precision, XLA, verbosity (the seed is part of the identity)
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)

  @property
  def seed(self):
    return self.execution.seed

  def resolved(self, spec=None):
    """The config with every default filled in from `spec` (the dataset's DatasetSpec; looked up by
    name when not given), checked."""
    from lad_tf.lad import fine_tuning
    spec = spec or datasets.get_spec(self.dataset)
    if self.fine_tune_mode not in FINE_TUNE_MODES:
      raise ConfigError(f"fine_tune_mode must be one of {FINE_TUNE_MODES}, got '{self.fine_tune_mode}'")
    if self.latent_layer and not self.classifier_path:
      raise ConfigError("--latent_layer names a layer of your own --classifier; the zoo's classifiers "
                        "have theirs (drop --latent_layer, or pass --classifier=FILE.keras)")
    if not self.fine_tune_eps or any(e <= 0 for e in self.fine_tune_eps):
      raise ConfigError(f"fine_tune_eps must be positive values, got {tuple(self.fine_tune_eps)}")
    schedule = fine_tuning.schedule_config(self.fine_tune_schedule, self.fine_tune_epochs)  # checks the name
    generator_epochs = self.generator_epochs or spec.generator_epochs
    late = [e for e in self.decoder_loss_epochs if not 1 <= e <= generator_epochs]
    if late:
      raise ConfigError(f"decoder loss epochs {late} are outside the decoder's 1..{generator_epochs} training "
                        f"epochs: raise --generator_epochs or drop them from --decoder_mse_epochs")
    defence_name = self.defence or defences.DEFAULT_DEFENCE
    recipe = {f.name: getattr(spec.defence, f.name) if getattr(self, f"defence_{f.name}") is None
              else getattr(self, f"defence_{f.name}") for f in dataclasses.fields(spec.defence)}
    if defence_name not in defences.DEFENCES:
      raise ConfigError(f"unknown defence '{defence_name}'; choose from {', '.join(defences.DEFENCES)}")
    if self.defence_eps is not None and not 0 < self.defence_eps <= 1:
      raise ConfigError(f"defence_eps is an L-inf radius on [0, 1] images: give one in (0, 1], "
                        f"got {self.defence_eps}")
    if recipe["epochs"] < 1 or (self.defence_train_examples is not None and self.defence_train_examples < 100):
      raise ConfigError(f"defence_epochs must be >= 1 and defence_train_examples >= 100, got "
                        f"{recipe['epochs']} and {self.defence_train_examples}")
    if defence_name == "clean" and self.fine_tune_mode == "on_the_fly":
      raise ConfigError("the clean control fine-tunes on the generated set's examples with x' = x: use "
                        "--fine_tune_mode=mix or eps with --defence=clean")
    if recipe["lr_schedule"] not in defences.LR_SCHEDULES or not recipe["learning_rate"] > 0:
      raise ConfigError(f"defence_lr_schedule must be one of {defences.LR_SCHEDULES} and defence_learning_rate "
                        f"> 0, got '{recipe['lr_schedule']}' and {recipe['learning_rate']}")
    if self.defence_pgd_steps < 1:
      raise ConfigError(f"defence_pgd_steps must be >= 1, got {self.defence_pgd_steps}")
    if recipe["init"] not in defences.DEFENCE_INITS:
      raise ConfigError(f"defence_init must be one of {defences.DEFENCE_INITS}, got '{recipe['init']}'")
    if not 0 < recipe["step_scale"] <= 1:
      raise ConfigError(f"defence_step_scale multiplies the single-step defences' step: give one in (0, 1], "
                        f"got {recipe['step_scale']}")
    if recipe["atta_steps"] < 1:
      raise ConfigError(f"defence_atta_steps is how many steps of eps / K atta takes per batch: give K >= 1, "
                        f"got {recipe['atta_steps']}")
    if recipe["selection"] not in defences.SELECTIONS:
      raise ConfigError(f"defence_selection must be one of {defences.SELECTIONS}, got '{recipe['selection']}'")
    if not 0 <= recipe["weight_averaging"] < 1:
      raise ConfigError(f"defence_weight_averaging is a momentum per step: give one in [0, 1), got "
                        f"{recipe['weight_averaging']}")
    if recipe["generated_weight"] < 0 or (recipe["generated_weight"] and defence_name != "atta"):
      raise ConfigError(f"defence_generated_weight is atta's weight on LAD's decoded examples (>= 0); got "
                        f"{recipe['generated_weight']} with --defence={defence_name}")
    if recipe["tradeoff"] < 0 or (recipe["tradeoff"] and defence_name != "atta"):
      raise ConfigError(f"defence_tradeoff is atta's TRADES weight (>= 0); got {recipe['tradeoff']} with "
                        f"--defence={defence_name} (trades has its own weight of 6)")
    if self.report_images < 0:
      raise ConfigError(f"report_images must be >= 0 (0: no report), got {self.report_images}")
    if self.robust_eval not in ROBUST_EVALS or self.robust_eval_examples < 1:
      raise ConfigError(f"robust_eval must be one of {ROBUST_EVALS} and robust_eval_examples >= 1, got "
                        f"'{self.robust_eval}' and {self.robust_eval_examples}")
    return dataclasses.replace(
        self, dataset=spec.name, defence=defence_name, defence_eps=float(self.defence_eps or spec.attack_eps),
        **{f"defence_{k}": v for k, v in recipe.items()},
        latent_layer=self.latent_layer or spec.latent_layer,
        calibration_per_class=self.calibration_per_class or spec.calibration_per_class,
        architecture=self.architecture or spec.classifier,
        classifier_epochs=self.classifier_epochs or spec.classifier_epochs,
        generator_epochs=generator_epochs,
        fine_tune_epochs=schedule.epochs,
        decoder_loss_epochs=tuple(sorted(set(int(e) for e in self.decoder_loss_epochs))),
        recon_norm=self.recon_norm or spec.recon_norm,
        eps_grid=tuple(self.eps_grid or spec.eps_grid),
        force=tuple(STAGES) if "all" in self.force else tuple(self.force))

  def robust_config(self):
    """The lad_tf.robust.RobustConfig of a robust defence (of a resolved config)."""
    from lad_tf import robust
    return robust.RobustConfig(method=self.defence, eps=self.defence_eps, epochs=self.defence_epochs,
                               learning_rate=self.defence_learning_rate,
                               lr_schedule=self.defence_lr_schedule, pgd_steps=self.defence_pgd_steps,
                               step_scale=self.defence_step_scale, atta_steps=self.defence_atta_steps,
                               selection=self.defence_selection, weight_averaging=self.defence_weight_averaging,
                               tradeoff=self.defence_tradeoff, generated_weight=self.defence_generated_weight,
                               latent_layer=self.latent_layer, execution=self.execution)

  @property
  def robust_training(self):
    """Whether the defence trains against an input-space adversary (not the paper's Eq. 4)."""
    return self.defence not in defences.EQ4_DEFENCES

  def needed_stages(self):
    """The stages this defence runs (of a resolved config): LAD's parts only where they are used."""
    from lad_tf.run import defend_stages, stage
    return stage.needed(defend_stages.STAGES, self)
