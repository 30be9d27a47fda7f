"""Hardens a classifier with LAD: `python -m pipelines.defend --dataset=NAME --workdir=DIR`.

Stages (each skipped once done; a killed run resumes): classifier -> generator -> boundaries ->
generation -> defended (fine-tuning) -> metrics.json, figures/ -> export/<version>/ (SavedModel).
With no flags it runs on the embedded `digits` dataset in a few minutes on 2 CPU cores.
"""
import json

from absl import flags

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
flags.DEFINE_integer("fine_tune_epochs", 10, "Fine-tuning epochs.")
flags.DEFINE_bool("export", True, "Export the defended classifier as a SavedModel for TF Serving.")
flags.DEFINE_string("export_base", None, "Export base path (default: DIR/export).")
flags.DEFINE_string("model_name", "lad", "Model name in models.config.")
flags.DEFINE_bool("evaluate", False, "Run the robustness evaluation (pipelines.evaluate) at the end.")
flags.DEFINE_list("force", [], "Stages to recompute (classifier, generator, boundaries, generation, "
                  "defended) or 'all'.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  common.setup_logging()
  execution = common.execution_config(FLAGS)
  from lad_tf import pipeline
  config = pipeline.DefendConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, classifier_path=FLAGS.classifier,
      latent_layer=FLAGS.latent_layer, calibration_per_class=FLAGS.calibration_per_class,
      classifier_epochs=FLAGS.classifier_epochs, generator_epochs=FLAGS.generator_epochs,
      generator_architecture=FLAGS.generator,
      recon_norm=FLAGS.recon_norm, attention=FLAGS.attention,
      eps_grid=tuple(float(e) for e in FLAGS.eps) if FLAGS.eps else None, normal=FLAGS.normal,
      target=FLAGS.target, adaptive=FLAGS.adaptive, fine_tune_mode=FLAGS.fine_tune_mode,
      fine_tune_eps=tuple(float(e) for e in FLAGS.fine_tune_eps), fine_tune_epochs=FLAGS.fine_tune_epochs,
      force=tuple(FLAGS.force), execution=execution)
  workdir = common.workdir(FLAGS)
  from pipelines import stages
  metrics = stages.run_defend(workdir, config, export=FLAGS.export, export_base=FLAGS.export_base,
                              model_name=FLAGS.model_name, plan_batches=FLAGS.plan_batches)
  from lad_tf import distribute
  if not distribute.is_chief(FLAGS.strategy):
    print(f"worker {distribute.task(FLAGS.strategy)}: done (the chief writes {workdir})")
    return
  if FLAGS.evaluate:
    from lad_tf import evaluation
    evaluation.evaluate_workdir(workdir)
  print(json.dumps({k: metrics[k] for k in ("dataset", "original", "defended", "generator", "boundary", "lad")},
                   indent=1))
  print(f"work directory: {workdir} (metrics.json, figures/, export/)")


if __name__ == "__main__":
  common.run(main)
