"""Robust training: classifiers that hold under white-box input-space attacks.

Every adversarial method is a per-example loss `loss_fn(model, x, y, training) -> (batch,) losses`
over the classifier (lad_tf.robust.losses), trained by the one executor of lad_tf.runtime.execution (its
LossTrainer, strategy, seeding, precision and resumable backups) and watched by a
catastrophic-overfitting guard (lad_tf.robust.guard.OverfittingGuard). LAD's parts, the decoder and
the latent boundaries, only steer the adversary during training (lad_tf.robust.boundary_start); the
trained model is the classifier alone.

  from lad_tf import robust
  model, info = robust.train(classifier, x, y, robust.RobustConfig(method="lad_robust", eps=0.1),
                             generator=G, boundaries=B)
"""
from lad_tf.defences import DEFAULT_DEFENCE, DEFENCES, DESCRIPTIONS, EQ4_DEFENCES, LR_SCHEDULES
from lad_tf.robust import adversaries, boundary_start, guard, losses, methods
from lad_tf.robust.methods import METHODS, SINGLE_STEP, OneCycle, RobustConfig, train

__all__ = ["DEFAULT_DEFENCE", "DEFENCES", "DESCRIPTIONS", "EQ4_DEFENCES", "LR_SCHEDULES", "METHODS",
           "SINGLE_STEP", "OneCycle", "RobustConfig", "train",
           "adversaries", "boundary_start", "guard", "losses", "methods"]
