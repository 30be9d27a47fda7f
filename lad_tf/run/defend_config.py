"""The defend pipeline's settings: `DefendConfig`, what each stage computes, checked and resolved
against the dataset's spec. The stages are declared in lad_tf.run.defend_stages; lad_tf.run.defend runs
them."""
import dataclasses
from typing import Optional, Sequence, Tuple

from lad_tf import defences, robust
from lad_tf.data import datasets
from lad_tf.lad import fine_tuning
from lad_tf.errors import ConfigError
from lad_tf.run import defend_stages, stage
from lad_tf.runtime.execution import ExecutionConfig


STAGES = tuple(s.name for s in defend_stages.STAGES)
FINE_TUNE_MODES = ("mix", "eps", "on_the_fly")
ROBUST_EVALS = ("standard", "fast", "none")  # AutoAttack version of the robustness stage ("none": skip it)


@dataclasses.dataclass
class DefendConfig:
  """Everything `run_defend` needs; None fields take the dataset spec's defaults."""
  dataset: str = "digits"
  data_dir: Optional[str] = None
  classifier_path: Optional[str] = None     # a user's Keras classifier (.keras) instead of training one
  latent_layer: Optional[str] = None        # default: the spec's ("latent")
  architecture: Optional[str] = None        # zoo classifier to train; default: the spec's
  generator_architecture: Optional[str] = None
  calibration_per_class: Optional[int] = None
  classifier_epochs: Optional[int] = None
  generator_epochs: Optional[int] = None
  recon_norm: Optional[str] = None
  attention: str = "authors"
  eps_grid: Optional[Tuple[float, ...]] = None
  normal: str = "relative"
  target: str = "random"
  adaptive: bool = False
  fine_tune_mode: str = "mix"
  fine_tune_eps: Tuple[float, ...] = (0.1, 0.2, 0.3)
  fine_tune_schedule: str = fine_tuning.DEFAULT_SCHEDULE  # fine_tuning.FINE_TUNE_SCHEDULES: "lad_tf" or "authors"
  fine_tune_epochs: Optional[int] = None    # default: the schedule's
  decoder_loss_epochs: Tuple[int, ...] = ()  # epochs at which the decoder's train / test loss is recorded
  on_the_fly_per_epoch: int = 2000
  defence: Optional[str] = None             # lad_tf.robust.DEFENCES; default lad_tf.robust.DEFAULT_DEFENCE
  defence_eps: Optional[float] = None       # robust methods' L-inf eps; default: the spec's attack_eps
  # the robust methods' training; None: the spec's DefenceRecipe (lad and clean: fine_tune_epochs)
  defence_epochs: Optional[int] = None
  defence_learning_rate: Optional[float] = None  # Adam (the peak of a cyclic schedule)
  defence_lr_schedule: Optional[str] = None  # defences.LR_SCHEDULES: "constant" or "cyclic" (0 -> rate -> 0)
  defence_train_examples: Optional[int] = None  # robust methods' training images (default: the split)
  defence_pgd_steps: int = 10               # inner steps of pgd_at and trades (PGD-3 at MNIST eps 0.3: docs/ROBUST.md)
  defence_init: Optional[str] = None        # defences.DEFENCE_INITS: start from the trained classifier, or anew
  defence_step_scale: Optional[float] = None  # single-step defences' first step, in units of their step
  defence_atta_steps: Optional[int] = None  # atta's carried steps per batch, eps / K each (ATTA-K)
  robust_eval: str = "standard"             # ROBUST_EVALS
  robust_eval_examples: int = 1000          # evaluation images the robustness stage attacks
  force: Sequence[str] = ()
  # seed, strategy, loop, determinism, precision, XLA, verbosity (the seed is part of the identity)
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)

  @property
  def seed(self):
    return self.execution.seed

  def resolved(self, spec=None):
    """The config with every default filled in from `spec` (the dataset's DatasetSpec; looked up by
    name when not given), checked."""
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
    defence_name = self.defence or robust.DEFAULT_DEFENCE
    recipe = {f.name: getattr(spec.defence, f.name) if getattr(self, f"defence_{f.name}") is None
              else getattr(self, f"defence_{f.name}") for f in dataclasses.fields(spec.defence)}
    if defence_name not in robust.DEFENCES:
      raise ConfigError(f"unknown defence '{defence_name}'; choose from {', '.join(robust.DEFENCES)}")
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
    if self.robust_eval not in ROBUST_EVALS or self.robust_eval_examples < 1:
      raise ConfigError(f"robust_eval must be one of {ROBUST_EVALS} and robust_eval_examples >= 1, got "
                        f"'{self.robust_eval}' and {self.robust_eval_examples}")
    return dataclasses.replace(
        self, defence=defence_name, defence_eps=float(self.defence_eps or spec.attack_eps),
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
    return robust.RobustConfig(method=self.defence, eps=self.defence_eps, epochs=self.defence_epochs,
                               learning_rate=self.defence_learning_rate,
                               lr_schedule=self.defence_lr_schedule, pgd_steps=self.defence_pgd_steps,
                               step_scale=self.defence_step_scale, atta_steps=self.defence_atta_steps,
                               latent_layer=self.latent_layer, execution=self.execution)

  @property
  def robust_training(self):
    """Whether the defence trains against an input-space adversary (not the paper's Eq. 4)."""
    return self.defence not in defences.EQ4_DEFENCES

  def needed_stages(self):
    """The stages this defence runs (of a resolved config): LAD's parts only where they are used."""
    return stage.needed(defend_stages.STAGES, self)
