"""Reruns what docs/RESULTS.md shows and rewrites it: `python -m pipelines.reproduce` (`make results`).

For Fashion-MNIST and MNIST it runs `pipelines.defend` and `pipelines.evaluate` with the pinned
configuration below (the paper's method with today's other defaults, written out so a change of
defaults does not silently change the published figures) into one work directory per run under --workdir, then writes docs/RESULTS.md
(and the README's headline block) from the JSON those runs leave (pipelines/documents). Runs:
  fashion_mnist   the defence and its evaluation
  mnist           the same on MNIST (the paper's dataset; files from --mnist_dir)
  mnist_authors   MNIST with the authors' fine-tuning schedule (100 epochs, SGD lr 0.01), evaluated
                  without the LAD sweep; starts from mnist's finished classifier/decoder/generation
  mnist_decoder   the decoder trained 100 epochs, its train/test MSE recorded at 10, 30 and 100
Resumable: a step that finished with the same command is skipped (delete a run's folder to redo
it); a killed defend step resumes at its unfinished stage (the stages are fingerprinted), and an
evaluation is skipped when its report exists for the same defended model and command. Each step records the git
commit it started from in DIR/<run>/run_info.json; the document states those, never the commit at
render time. `--render_only` rewrites the document from existing work directories without running
anything; `--runs=fashion_mnist=/path,mnist=/path` points at directories made elsewhere.
"""
import dataclasses
import os
import subprocess
import sys
import time
from typing import Dict, Optional, Tuple

from absl import flags

from pipelines import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The pinned configuration: the paper's method (--defence=lad) with today's defaults of pipelines.defend /
# pipelines.evaluate otherwise, written out.
DEFEND = {"defence": "lad", "classifier_epochs": "10", "generator_epochs": "10", "calibration_per_class": "50",
          "recon_norm": "l2", "attention": "authors", "eps": "0.1,0.2,0.3,0.4,0.5,0.75,1", "normal": "relative",
          "target": "random", "fine_tune_mode": "mix", "fine_tune_eps": "0.1,0.2,0.3",
          "fine_tune_schedule": "lad_tf", "fine_tune_epochs": "10", "seed": "0"}
EVALUATE = {"attacks": "fgsm,pgd,jsma,cw,apgd,autoattack", "autoattack_version": "standard",
            "n_per_class": "50", "m_per_class": "50", "targets_per_image": "1", "baselines": "fgsm,pgd,jsma,cw,clean",
            "attack_baselines": "true", "transfer": "true", "blackbox_epochs": "3", "lad_sweep": "true",
            "pgd_iter": "40", "apgd_iter": "100", "cw_iterations": "30", "cw_binary_steps": "4",
            "sanity_n": "200", "seed": "0"}


@dataclasses.dataclass
class RunSpec:
  """One work directory of the reproduction: defend flags, evaluate flags (None: no evaluation), and
  the run whose finished stages it starts from (copied; the fingerprints decide what is reused)."""
  name: str
  dataset: str
  defend: Dict[str, str]
  evaluate: Optional[Dict[str, str]]
  reuse: Optional[Tuple[str, Tuple[str, ...]]] = None


def pinned_runs(mnist_dir):
  mnist = {"data_dir": os.path.abspath(mnist_dir)}
  return {
      "fashion_mnist": RunSpec("fashion_mnist", "fashion_mnist", dict(DEFEND), dict(EVALUATE)),
      "mnist": RunSpec("mnist", "mnist", {**mnist, **DEFEND}, dict(EVALUATE)),
      "mnist_authors": RunSpec("mnist_authors", "mnist",
                               {**mnist, **DEFEND, "fine_tune_schedule": "authors", "fine_tune_epochs": "100"},
                               {**EVALUATE, "lad_sweep": "false"},
                               reuse=("mnist", ("classifier", "generator", "boundaries", "generation"))),
      "mnist_decoder": RunSpec("mnist_decoder", "mnist",
                               {**mnist, **DEFEND, "generator_epochs": "100", "decoder_mse_epochs": "10,30,100",
                                "stop_after": "generator", "export": "false"}, None,
                               reuse=("mnist", ("classifier",))),
  }


RUN_NAMES = ("fashion_mnist", "mnist", "mnist_authors", "mnist_decoder")

flags.DEFINE_string("workdir", "runs/reproduce", "Folder of the work directories, one per run "
                    "(<workdir>/fashion_mnist, <workdir>/mnist, ...).")
flags.DEFINE_string("mnist_dir", os.path.join(os.path.dirname(REPO), "shared", "data", "mnist"),
                    "Folder with the four MNIST IDX files.")
flags.DEFINE_list("only", list(RUN_NAMES), f"Runs to execute, of {', '.join(RUN_NAMES)} (the document "
                  "shows whatever work directories exist).")
flags.DEFINE_bool("render_only", False, "Only rewrite the document from existing work directories.")
flags.DEFINE_list("runs", [], "NAME=DIR pairs overriding a run's work directory (e.g. "
                  "fashion_mnist=/work/runs/fm,mnist=/work/runs/mnist) with a directory made elsewhere: the "
                  "document reads it, nothing runs or writes there (mnist_authors / mnist_decoder start from "
                  "a copy of the mnist directory's stages).")
flags.DEFINE_list("commits", [], "NAME=COMMIT pairs for work directories that did not record their commit "
                  "(not made by this command); the document labels them as stated by you.")
flags.DEFINE_string("output", os.path.join(REPO, "docs", "RESULTS.md"), "The document to write.")
flags.DEFINE_string("readme", os.path.join(REPO, "README.md"), "README whose results block is rewritten "
                    "(empty: leave it).")
FLAGS = flags.FLAGS


# -- provenance and running ------------------------------------------------------------------------------

# What reproduce itself writes: a step that follows another run's rendering is not "dirty" for it.
OWN_OUTPUTS = ("README.md", "docs/RESULTS.md", "docs/figures/results")


def git_state(repo=REPO):
  """(commit, dirty) of the repository now: recorded when a step starts. Changes to reproduce's own
  outputs (OWN_OUTPUTS) do not count."""
  try:
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                            timeout=30, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
                                + [f":(exclude){path}" for path in OWN_OUTPUTS], cwd=repo,
                                capture_output=True, text=True, timeout=30).stdout.strip())
    return commit, dirty
  except (OSError, subprocess.SubprocessError):
    return "unknown (not a git checkout)", False


def command(module, workdir, flag_values, dataset=None):
  args = [sys.executable, "-m", module]
  if dataset:
    args.append(f"--dataset={dataset}")
  args.append(f"--workdir={workdir}")
  for key, value in flag_values.items():
    if value in ("true", "false"):
      args.append(f"--{key}" if value == "true" else f"--no{key}")
    else:
      args.append(f"--{key}={value}")
  return args


def shown(args):
  """The command as a user types it (python, not this interpreter's path)."""
  return ["python"] + args[1:]


def run_step(step, args, workdir, say, skip=None):
  """Runs one command (output to <workdir>/<step>.log), recording each attempt's commit, start, end
  and exit status in <workdir>/run_info.json; `skip(info)` True skips it."""
  from lad_tf.errors import LadError
  from lad_tf.runtime.files import read_json, write_json
  info_path = os.path.join(workdir, "run_info.json")
  info = read_json(info_path, {})
  if skip is not None and skip(info.get(step) or {}):
    say(f"{os.path.basename(workdir)}: {step} done, skipped")
    return info
  commit, dirty = git_state()
  entry = info.setdefault(step, {"attempts": []})
  entry["command"] = shown(args)
  attempt = {"commit": commit, "dirty": dirty, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
  entry["attempts"].append(attempt)
  write_json(info_path, info)
  say(f"{os.path.basename(workdir)}: {step}: {' '.join(shown(args))} (log: {workdir}/{step}.log)")
  start = time.time()
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  with open(os.path.join(workdir, f"{step}.log"), "a") as log:
    code = subprocess.call(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
  attempt.update({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - start, 1),
                  "returncode": code})
  write_json(info_path, info)
  if code != 0:
    raise LadError(f"{step} of {workdir} failed (exit {code}); see {workdir}/{step}.log, then rerun "
                   f"`python -m pipelines.reproduce`: finished stages are kept")
  return info


def finished(entry, args, output):
  """Whether a step's last attempt ran this very command to the end and its output is there. A step
  killed midway runs again; the defend pipeline's stage fingerprints then skip its finished stages,
  and the document lists the commits of every attempt that contributed."""
  last = (entry.get("attempts") or [{}])[-1]
  return last.get("returncode") == 0 and entry.get("command") == shown(args) and os.path.exists(output)


def reuse_stages(spec, source_dir, workdir, say):
  """Copies the finished stages spec.reuse names from `source_dir` (that run's work directory, only
  read) into `workdir` when it has none yet; the defend pipeline's fingerprints then decide whether
  they apply."""
  import shutil
  if spec.reuse is None or source_dir is None:
    return
  for stage in spec.reuse[1]:
    src, dst = os.path.join(source_dir, stage), os.path.join(workdir, stage)
    if os.path.isdir(src) and not os.path.exists(dst):
      shutil.copytree(src, dst)
      say(f"{spec.name}: starting from {src}")


def run(spec, root, say=print, dirs=None):
  """Runs (or resumes) one RunSpec in <root>/<name> (or dirs[name]); returns its work directory."""
  from lad_tf.run.workdir import WorkDir
  where = lambda name: os.path.abspath((dirs or {}).get(name) or os.path.join(root, name))
  workdir = where(spec.name)
  os.makedirs(workdir, exist_ok=True)
  reuse_stages(spec, where(spec.reuse[0]) if spec.reuse else None, workdir, say)
  args = command("pipelines.defend", workdir, spec.defend, spec.dataset)
  run_step("defend", args, workdir, say, skip=lambda entry: finished(entry, args, os.path.join(workdir, "metrics.json")))
  if spec.evaluate is not None:
    args = command("pipelines.evaluate", workdir, spec.evaluate)
    defended = WorkDir(workdir).stage_fingerprint("defended")
    report = os.path.join(workdir, "evaluation", "report.json")

    info = run_step("evaluate", args, workdir, say,
                    skip=lambda entry: finished(entry, args, report) and entry.get("defended") == defended)
    if info["evaluate"].get("defended") != defended:
      from lad_tf.runtime.files import write_json
      info["evaluate"]["defended"] = defended
      write_json(os.path.join(workdir, "run_info.json"), info)
  return workdir


def check_mnist(mnist_dir):
  from lad_tf.data.sources import idx
  from lad_tf.errors import ConfigError
  if not os.path.isdir(mnist_dir) or not idx.has_files(mnist_dir):
    raise ConfigError(f"no MNIST IDX files in {mnist_dir} (train-images-idx3-ubyte[.gz] and the three others): "
                      f"pass --mnist_dir=DIR, or --only=fashion_mnist to leave MNIST out")


def pairs(values, what):
  from absl import app
  out = {}
  for item in values:
    if "=" not in item:
      raise app.UsageError(f"--{what} takes NAME=VALUE pairs, got '{item}'")
    key, value = item.split("=", 1)
    if key not in RUN_NAMES:
      raise app.UsageError(f"--{what}: unknown run '{key}'; runs: {', '.join(RUN_NAMES)}")
    out[key] = value
  return out


def main(argv):
  del argv
  from absl import app
  from lad_tf import cli
  from pipelines.documents import detection_sweep, readme, results
  unknown = sorted(set(FLAGS.only) - set(RUN_NAMES))
  if unknown:
    raise app.UsageError(f"--only: unknown runs {unknown}; runs: {', '.join(RUN_NAMES)}")
  overrides = pairs(FLAGS.runs, "runs")
  root = os.path.abspath(FLAGS.workdir)
  if not FLAGS.render_only:
    cli.writable_dir(root)
    specs = pinned_runs(FLAGS.mnist_dir)
    if any(specs[name].dataset == "mnist" for name in FLAGS.only if name not in overrides):
      check_mnist(FLAGS.mnist_dir)
    started = time.time()
    for name in RUN_NAMES:
      if name in FLAGS.only and name in overrides:
        print(f"reproduce: {name}: {overrides[name]} is given by --runs: read, never run or written")
      elif name in FLAGS.only:
        run(specs[name], root, dirs=overrides)
    print(f"reproduce: runs finished in {(time.time() - started) / 60:.1f} min")
  runs = {name: overrides.get(name, os.path.join(root, name)) for name in RUN_NAMES}
  results.render(runs, REPO, FLAGS.output, pairs(FLAGS.commits, "commits"))
  print(f"reproduce: wrote {FLAGS.output}")
  for path in detection_sweep.write_figures(REPO):
    print(f"reproduce: drew {os.path.relpath(path, REPO)} from benchmarks/detection_sweep.json")
  if FLAGS.readme and readme.update_readme(FLAGS.readme, runs, pairs(FLAGS.commits, "commits")):
    print(f"reproduce: rewrote the results block of {FLAGS.readme}")
  if FLAGS.readme and readme.update_robust_readme(FLAGS.readme, REPO):
    print(f"reproduce: rewrote the robust-training block of {FLAGS.readme} from benchmarks/robust_*.json")


if __name__ == "__main__":
  common.run(main, (("runs", ("only", "workdir", "mnist_dir", "runs", "commits", "render_only")),
                    ("output", ("output", "readme")), ("execution", ("verbose",))))
