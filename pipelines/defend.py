"""Hardens a classifier: `python -m pipelines.defend --dataset=NAME --defence=NAME --workdir=DIR`.

Stages (each skipped once done; a killed run resumes): classifier -> generator -> boundaries ->
generation -> defended -> robustness (AutoAttack on the original and the defended classifier) ->
metrics.json, figures/ -> export/<version>/ (SavedModel of the defended classifier alone). Only the
stages the defence needs run. With no flags it runs on the embedded `digits` dataset in a few minutes
on 2 CPU cores.
"""
import json

from absl import flags

from lad_tf import defences
from pipelines import common

common.define_data_flags()
common.define_distribution_flags()
flags.DEFINE_string("classifier", None, "Path of your own Keras classifier (.keras, logits) to defend "
                    "instead of training the zoo's.")
flags.DEFINE_string("latent_layer", None, "Name of the latent layer of --classifier (default: 'latent').")
flags.DEFINE_integer("calibration_per_class", None, "Test examples per class for boundaries and generation "
                     "(the paper: 20-200; default: the spec's); excluded from every reported accuracy.")
flags.DEFINE_integer("classifier_epochs", None, "Classifier training epochs (default: the spec's).")
flags.DEFINE_integer("generator_epochs", None, "Generator training epochs (default: the spec's).")
flags.DEFINE_string("generator", None, "Decoder architecture of lad_tf.models.GENERATORS (default: the "
                    "spec's, the paper's; e.g. svhnnet_decoder_light, 3x faster but 2.4x the L1 error, "
                    "benchmarks/svhn_speed.json).")
flags.DEFINE_integer("plan_batches", 3, "Before running, time this many batches of each stage's pieces "
                     "and print the plan with each stage's estimated time (0: no plan).")
flags.DEFINE_enum("recon_norm", None, ["l1", "l2"], "Generator loss (default: the spec's).")
flags.DEFINE_enum("attention", "authors", ["authors", "budget", "none"], "Attention of the SVM.")
flags.DEFINE_list("eps", None, "eps grid (default: the spec's), in units of --normal.")
flags.DEFINE_enum("normal", "relative", ["relative", "raw"], "eps convention: relative to the mean latent "
                  "norm, or the authors' raw SVM weight.")
flags.DEFINE_enum("target", "random", ["random", "nearest"], "Target class of each generated example.")
flags.DEFINE_bool("adaptive", False, "Also find each example's smallest crossing eps.")
flags.DEFINE_enum("fine_tune_mode", "mix", ["mix", "eps", "on_the_fly"], "mix: all --fine_tune_eps; eps: the "
                  "first only (FT-eps); on_the_fly: generate from the training set during fine-tuning.")
flags.DEFINE_list("fine_tune_eps", ["0.1", "0.2", "0.3"], "eps of the fine-tuning set.")
flags.DEFINE_enum("fine_tune_schedule", "lad_tf", ["lad_tf", "authors"], "Fine-tuning schedule (SGD): "
                  "lad_tf: 10 epochs, lr 0.001, momentum 0.5, batch 64; authors: the authors' MNIST run, 100 "
                  "epochs, lr 0.01, momentum 0.5, batch 64.")
flags.DEFINE_integer("fine_tune_epochs", None, "Fine-tuning epochs (default: the schedule's).")
flags.DEFINE_list("decoder_mse_epochs", [], "Epochs at which the decoder's train and test loss (MSE with "
                  "the l2 loss) is measured during its training, e.g. 10,30,100 (generator/metrics.json "
                  "loss_at_epoch; each must be <= --generator_epochs).")
flags.DEFINE_enum("stop_after", None, ["classifier", "generator", "boundaries", "generation", "defended"],
                  "Stop after this stage (e.g. generator: only the decoder's loss curve).")
flags.DEFINE_enum("defence", defences.DEFAULT_DEFENCE, list(defences.DEFENCES), "The defence: " + "; ".join(
    f"{name}: {defences.DESCRIPTIONS[name]}" for name in defences.DEFENCES) + ". lad and clean fine-tune "
    "on the calibration examples (--fine_tune_* flags); the others train on the training split "
    "(--defence_* flags). The default is the robust benchmark's choice: the best AutoAttack accuracy "
    "over 3 seeds within 3x the cost of clean training, ties to clean accuracy beyond sampling error, else to the more "
    "robust (README, 'Robust training').")
flags.DEFINE_float("defence_eps", None, "L-inf eps of the robust defences (fgsm_rs, pgd_at, trades, nfgsm, "
                   "atta, lad_robust; default: the dataset's attack eps, e.g. 0.1 digits/Fashion-MNIST, 0.3 MNIST).")
# the robust defences' training: unset, the dataset's recipe (lad_tf.data.datasets.DefenceRecipe)
flags.DEFINE_integer("defence_epochs", None, "Epochs of the robust defences (default: the dataset's; 5, "
                     "MNIST 10).")
flags.DEFINE_float("defence_learning_rate", None, "Adam learning rate of the robust defences (with "
                   "--defence_lr_schedule=cyclic, the peak; default: the dataset's, 0.001, MNIST 0.005).")
flags.DEFINE_enum("defence_lr_schedule", None, list(defences.LR_SCHEDULES), "Learning rate of the robust "
                  "defences: constant, or cyclic (0 -> rate -> 0 over the run, Wong et al. 2020; default: "
                  "the dataset's, constant, MNIST cyclic: what eps 0.3 needs, docs/ROBUST.md).")
flags.DEFINE_integer("defence_train_examples", None, "Training images of the robust defences (default: the "
                     "whole training split; fewer for a quick run on 2 cores).")
flags.DEFINE_integer("defence_pgd_steps", 10, "Inner PGD steps of pgd_at and trades (each costs about "
                     "0.8x a clean training step on the CPU; 3 steps at MNIST eps 0.3: docs/ROBUST.md).")
flags.DEFINE_enum("defence_init", None, list(defences.DEFENCE_INITS), "Where the robust defences start: the trained "
                  "classifier (finetune), or its architecture with fresh weights (scratch; default: the "
                  "dataset's, finetune, MNIST scratch).")
flags.DEFINE_float("defence_step_scale", None, "The single-step defences' (fgsm_rs, nfgsm, atta, lad_robust) "
                   "step at the start, as a fraction of their usual step; the overfitting guard halves it after "
                   "a collapse (default: the dataset's, 1, MNIST 0.5).")
flags.DEFINE_integer("defence_atta_steps", None, "atta's projected steps per batch, eps / K each, carried over "
                     "from epoch to epoch (ATTA-K; each step costs one more input gradient per batch; "
                     "default: the dataset's, 1).")
flags.DEFINE_enum("autoattack", "standard", ["standard", "fast", "none"], "Robustness stage: AutoAttack "
                  "(APGD-CE, APGD-T, FAB-T, Square; fast: APGD-CE and APGD-T) on the original and the "
                  "defended classifier at the dataset's eps, reported as robust_accuracy in metrics.json "
                  "and the model card; none skips it.")
flags.DEFINE_integer("autoattack_examples", 1000, "Evaluation images (never the calibration ones) the "
                     "robustness stage attacks (fewer if the split has fewer; metrics.json says so).")
flags.DEFINE_bool("export", True, "Export the defended classifier as a SavedModel for TF Serving.")
flags.DEFINE_string("export_base", None, "Export base path (default: DIR/export).")
flags.DEFINE_string("model_name", "lad", "Model name in models.config.")
flags.DEFINE_bool("evaluate", False, "Run the robustness evaluation (pipelines.evaluate) at the end.")
flags.DEFINE_list("force", [], "Stages to recompute (classifier, generator, boundaries, generation, "
                  "defended, robustness) or 'all'.")
FLAGS = flags.FLAGS


def _epochs(values):
  from absl import app
  try:
    return tuple(int(e) for e in values)
  except ValueError:
    raise app.UsageError(f"--decoder_mse_epochs takes whole epoch numbers such as 10,30,100, got {','.join(values)}")


def main(argv):
  del argv
  common.setup_logging()
  execution = common.execution_config(FLAGS)
  from lad_tf.run import defend
  config = defend.DefendConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, classifier_path=FLAGS.classifier,
      latent_layer=FLAGS.latent_layer, calibration_per_class=FLAGS.calibration_per_class,
      classifier_epochs=FLAGS.classifier_epochs, generator_epochs=FLAGS.generator_epochs,
      generator_architecture=FLAGS.generator,
      recon_norm=FLAGS.recon_norm, attention=FLAGS.attention,
      eps_grid=tuple(float(e) for e in FLAGS.eps) if FLAGS.eps else None, normal=FLAGS.normal,
      target=FLAGS.target, adaptive=FLAGS.adaptive, fine_tune_mode=FLAGS.fine_tune_mode,
      fine_tune_eps=tuple(float(e) for e in FLAGS.fine_tune_eps), fine_tune_epochs=FLAGS.fine_tune_epochs,
      fine_tune_schedule=FLAGS.fine_tune_schedule,
      decoder_loss_epochs=_epochs(FLAGS.decoder_mse_epochs),
      defence=FLAGS.defence, defence_eps=FLAGS.defence_eps, defence_epochs=FLAGS.defence_epochs,
      defence_learning_rate=FLAGS.defence_learning_rate, defence_lr_schedule=FLAGS.defence_lr_schedule,
      defence_train_examples=FLAGS.defence_train_examples, defence_pgd_steps=FLAGS.defence_pgd_steps,
      defence_init=FLAGS.defence_init, defence_step_scale=FLAGS.defence_step_scale,
      defence_atta_steps=FLAGS.defence_atta_steps, robust_eval=FLAGS.autoattack,
      robust_eval_examples=FLAGS.autoattack_examples, force=tuple(FLAGS.force), execution=execution)
  if FLAGS.evaluate and FLAGS.defence not in defences.EQ4_DEFENCES:
    from lad_tf.errors import ConfigError
    raise ConfigError(f"--evaluate runs the paper's protocol, which needs LAD's generated set; "
                      f"--defence={FLAGS.defence} does not make one. Its AutoAttack figures are in "
                      f"metrics.json (--autoattack); drop --evaluate")
  workdir = common.workdir(FLAGS)
  from pipelines import stages
  metrics = stages.run_defend(workdir, config, export=FLAGS.export, export_base=FLAGS.export_base,
                              model_name=FLAGS.model_name, stop_after=FLAGS.stop_after,
                              plan_batches=FLAGS.plan_batches)
  from lad_tf.runtime import distribute
  if not distribute.is_chief(FLAGS.strategy):
    print(f"worker {distribute.task(FLAGS.strategy)}: done (the chief writes {workdir})")
    return
  if FLAGS.evaluate and not FLAGS.stop_after:
    from lad_tf.run import evaluate
    evaluate.evaluate_workdir(workdir)
  print(json.dumps({k: metrics.get(k) for k in ("dataset", "defence", "original", "defended", "robust_evaluation",
                                                "generator", "boundary", "lad")},
                   indent=1))
  print(f"work directory: {workdir} (metrics.json, figures/, export/)")


if __name__ == "__main__":
  common.run(main)
