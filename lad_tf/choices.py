"""The values lad_tf's settings accept, by name: plain data (no TensorFlow), so the command lines can
define their flags and print --help without starting TensorFlow. The module that implements each
setting takes its names from here, so the flags and the code cannot disagree."""

# The decoder's reconstruction loss (lad_tf.runtime.losses.reconstruction).
RECON_NORMS = ("l2", "l1")

# The attention of LAD's boundary SVMs (lad_tf.lad.boundary): the authors' exact form, a fixed budget
# redistributed over the latent units, or none (a plain linear SVM).
ATTENTION_MODES = ("authors", "budget", "none")

# AutoAttack's versions and the attacks each runs, in order (lad_tf.attacks.autoattack).
AUTOATTACK_VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
}

# LAD's named Eq. 4 fine-tuning schedules, SGD (lad_tf.lad.fine_tuning): "lad_tf", this project's default,
# and "authors", the authors' MNIST run.
FINE_TUNE_SCHEDULES = {
    "lad_tf": {"epochs": 10, "batch_size": 64, "learning_rate": 0.001, "momentum": 0.5},
    "authors": {"epochs": 100, "batch_size": 64, "learning_rate": 0.01, "momentum": 0.5},
}
DEFAULT_SCHEDULE = "lad_tf"

# The defend run's stages, in the order they run (each declared in lad_tf.run.defend_stages.STAGES).
DEFEND_STAGES = ("classifier", "generator", "boundaries", "generation", "defended", "robustness", "report")
