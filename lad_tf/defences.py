"""The defences lad_tf offers, by name, and the default: plain data (no TensorFlow), so command lines
can list them in --help without starting TensorFlow. lad_tf.robust re-exports them; `train` there
implements every one (lad_tf.robust.methods), the defend pipeline applies one (lad_tf.run.defend)."""

# What each method is, in one line (pipelines.defend's --help, the README and the model card say it).
DESCRIPTIONS = {
    "standard": "clean training, CE(f(x), y): no defence (the robust benchmark's cost reference)",
    "lad": "the paper's latent adversarial defence: Eq. 4 fine-tuning on decoded boundary-crossing "
           "examples (holds against fixed adversarial sets, not against a white-box attacker)",
    "clean": "LAD's control: the same Eq. 4 fine-tuning (examples, schedule, seed) with x' = x",
    "fgsm_rs": "FGSM adversarial training with a random start (Wong et al. 2020): one input-space step "
               "per batch",
    "pgd_at": "PGD-10 adversarial training (Madry et al. 2018): the standard, ten input-space steps per "
              "batch",
    "trades": "TRADES (Zhang et al. 2019): CE + 6 KL(clean || adversarial), 10-step inner maximisation",
    "nfgsm": "N-FGSM (de Jorge et al. 2022): one input-space step per batch from noise larger than "
             "eps; lad_robust with LAD's parts off",
    "atta": "accumulated perturbations (ATTA, Zheng et al. 2020): one projected step of eps per batch "
            "(--defence_atta_steps=K: K steps of eps / K) from where each example's perturbation ended the "
            "epoch before, so the steps add up to a multi-step attack over the epochs at the cost of a "
            "single-step method",
    "lad_robust": "ours: one N-FGSM input-space step per batch, half the batch starting from LAD's "
                  "boundary-guided direction sign(G(z + t d) - G(z)); decoder and SVMs used only in training",
}

# The defences that fine-tune by the paper's Eq. 4 on LAD's calibration examples (lad_tf.lad.fine_tuning); the
# others train on the training split against an input-space adversary (lad_tf.robust).
EQ4_DEFENCES = ("lad", "clean")

# The defences `python -m pipelines.defend --defence=NAME` offers (every method but the cost reference).
DEFENCES = ("lad", "clean", "fgsm_rs", "pgd_at", "trades", "nfgsm", "atta", "lad_robust")

# The defence `pipelines.defend` applies without --defence: the robust benchmark's choice
# (pipelines/documents/robust_benchmark.py best_within_budget over benchmarks/robust_fashion_mnist.json: the best
# AutoAttack accuracy over 3 seeds at most 3x the cost of clean training, ties broken by clean accuracy, never by a
# difference within sampling error; a test holds this constant to it). On Fashion-MNIST, eps 0.1, carried
# single steps (the benchmark's carry1 row) beat FGSM-RS and N-FGSM by about 4 points of AutoAttack at the
# same cost and matched PGD-10 at a third of its cost; on MNIST, eps 0.3, the rule picks it too (88.0%
# over 3 seeds with the step halved, against FGSM-RS's 67.6%). `lad` is the paper's method.
DEFAULT_DEFENCE = "atta"

# Learning-rate schedules of the robust defences: a constant Adam rate, or one cycle 0 -> rate -> 0 over
# the run (Wong et al. 2020's fast training; MNIST at eps 0.3 trains a robust model only with it).
LR_SCHEDULES = ("constant", "cyclic")

# Where a robust defence starts: the trained classifier, or its architecture with fresh weights.
DEFENCE_INITS = ("finetune", "scratch")

# How the overfitting guard picks the epoch a single-step defence hands back (lad_tf.robust.guard): the
# best held-out PGD-10 accuracy, or the best among the epochs within a point of the best clean accuracy.
SELECTIONS = ("robust", "balanced")
