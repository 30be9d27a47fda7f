"""Robustness report of a defended work directory: `python -m pipelines.evaluate --workdir=DIR`.

Runs the paper's protocol (lad_tf.run.evaluate): white-box and transfer attacks on the original and the
LAD-defended classifier, the fine-tuning baselines and the LAD eps sweep; writes
DIR/evaluation/report.json and a self-contained DIR/evaluation/report.html.
"""
import os

from absl import app
from absl import flags

from lad_tf import cli
from pipelines import common

flags.DEFINE_string("workdir", None, "Work directory of `python -m pipelines.defend`.")
flags.DEFINE_list("attacks", ["fgsm", "pgd", "jsma", "cw", "apgd", "autoattack"], "Attacks to run "
                  "(autoattack: the standard version; --autoattack_version=fast for APGD-CE + APGD-T); add `ga` after "
                  "`python -m pipelines.train_acgan --workdir=DIR` (a white-box row on every model, a transfer row, "
                  "the GA baseline; each GA run takes --ga_per_class x classes tries of --ga_steps steps).")
flags.DEFINE_enum("autoattack_version", "standard", ["standard", "fast"], "AutoAttack version: standard "
                  "(APGD-CE, APGD-T, FAB-T, Square) or fast (APGD-CE, APGD-T).")
flags.DEFINE_integer("n_per_class", 50, "Untargeted attack sources per class (the paper: 450).", lower_bound=1)
flags.DEFINE_integer("m_per_class", 50, "Targeted attack source images per class (the paper: 50).", lower_bound=1)
flags.DEFINE_integer("targets_per_image", 1, "Targets per targeted source image, spread evenly over the other "
                     "classes; 0: every other class (the paper's protocol, 9x the pairs and the time).", lower_bound=0)
flags.DEFINE_list("eps", None, "L-inf eps of FGSM / PGD / APGD (default: 0.3 as in the paper and the "
                  "dataset's usual eps).")
flags.DEFINE_list("baselines", ["fgsm", "pgd", "jsma", "cw", "clean"], "Fine-tuning baselines (empty: "
                  "none): the original fine-tuned on FGSM / PGD / JSMA / CW examples, and `clean`, the control "
                  "fine-tuned exactly as the defence on the clean images (x' = x).")
flags.DEFINE_float("baseline_eps", None, "eps of the FGSM / PGD baseline examples (default: the dataset's).")
flags.DEFINE_bool("attack_baselines", True, "Attack each baseline white-box too (adaptive, like the "
                  "defended model). --noattack_baselines scores baselines only on the original's examples (the "
                  "fixed-set columns, always reported), at a fraction of the attack time.")
flags.DEFINE_integer("ga_per_class", 50, "GA tries per source class.", lower_bound=1)
flags.DEFINE_integer("ga_steps", 1000, "GA latent-search steps per try.", lower_bound=1)
flags.DEFINE_bool("transfer", True, "Transfer attacks from an independently trained black-box model.")
flags.DEFINE_integer("blackbox_epochs", 3, "Training epochs of the black-box model.", lower_bound=1)
flags.DEFINE_integer("blackbox_train_examples", 10000, "Training images of the black-box model (a stratified "
                     "subset of the train split; 0: all of it).", lower_bound=0)
flags.DEFINE_bool("lad_sweep", True, "Fine-tune one FT-eps model per generated eps (paper Fig. 7).")
flags.DEFINE_integer("fine_tune_epochs", None, "Epochs of baseline / FT-eps fine-tuning (default: as the "
                     "defended model).", lower_bound=1)
flags.DEFINE_integer("pgd_iter", 40, "PGD iterations.", lower_bound=1)
flags.DEFINE_integer("apgd_iter", 100, "APGD-CE iterations.", lower_bound=1)
flags.DEFINE_integer("cw_iterations", 30, "CW-L2 Adam steps per binary-search step.", lower_bound=1)
flags.DEFINE_integer("cw_binary_steps", 4, "CW-L2 binary-search steps.", lower_bound=1)
flags.DEFINE_integer("sanity_n", 200, "Images of the gradient-masking checks of the original and the "
                     "defended model and of every model's accuracy-against-eps sweep (0: skip both).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir=DIR is required (the work directory of pipelines.defend)")
  if os.path.isdir(FLAGS.workdir):
    cli.writable_dir(FLAGS.workdir)  # it writes DIR/evaluation/ after the attacks: refuse before them
  common.setup_logging()
  from lad_tf.run import evaluate
  config = evaluate.EvalConfig(
      attacks=tuple(a.strip().lower() for a in FLAGS.attacks if a.strip()),
      n_per_class=FLAGS.n_per_class, m_per_class=FLAGS.m_per_class,
      targets_per_image=FLAGS.targets_per_image or None,
      epsilons=tuple(float(e) for e in FLAGS.eps) if FLAGS.eps else None,
      baselines=tuple(b.strip().lower() for b in FLAGS.baselines if b.strip()),
      baseline_eps=FLAGS.baseline_eps, attack_baselines=FLAGS.attack_baselines,
      transfer=FLAGS.transfer, blackbox_epochs=FLAGS.blackbox_epochs,
      blackbox_train_examples=FLAGS.blackbox_train_examples or None, lad_sweep=FLAGS.lad_sweep,
      fine_tune_epochs=FLAGS.fine_tune_epochs, pgd_iter=FLAGS.pgd_iter, apgd_iter=FLAGS.apgd_iter,
      cw_iterations=FLAGS.cw_iterations, cw_binary_steps=FLAGS.cw_binary_steps, ga_per_class=FLAGS.ga_per_class,
      ga_steps=FLAGS.ga_steps, seed=FLAGS.seed, sanity_n=FLAGS.sanity_n,
      attack_options={"autoattack": {"version": FLAGS.autoattack_version}})
  report = evaluate.evaluate_workdir(FLAGS.workdir, config)
  print(f"{'attack':<10} {'setting':<10} {'eps':>6} {'images':>6} {'pairs':>6} {'original':>9} {'defended':>9} "
        f"{'defended (fixed set)':>21}")
  for row in report["rows"]:
    eps = "-" if row["epsilon"] is None else f"{row['epsilon']:g}"
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    pairs = "-" if row.get("n_pairs") is None else str(row["n_pairs"])
    print(f"{row['attack']:<10} {row['setting']:<10} {eps:>6} {row.get('n_images', row['n']):>6} {pairs:>6} "
          f"{fmt(row['original_accuracy']):>9} {fmt(row['defended_accuracy']):>9} "
          f"{fmt(row.get('defended_accuracy_fixed_set')):>21}")
  print(f"report: {FLAGS.workdir}/evaluation/report.html")


if __name__ == "__main__":
  common.run(main, (
      ("data", ("workdir",)),
      ("attacks", ("attacks", "autoattack_version", "eps", "n_per_class", "m_per_class", "targets_per_image",
                   "pgd_iter", "apgd_iter", "cw_iterations", "cw_binary_steps", "ga_per_class", "ga_steps",
                   "transfer", "blackbox_epochs", "blackbox_train_examples")),
      ("baselines and checks", ("baselines", "baseline_eps", "attack_baselines", "lad_sweep", "fine_tune_epochs",
                                "sanity_n")),
      ("execution", ("seed", "verbose"))))
