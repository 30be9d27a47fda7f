"""docs/RESULTS.md (and the README's headline block) written from the JSON that runs leave behind.

Nothing here measures: every figure is read from a work directory (metrics.json, generator/metrics.json,
evaluation/report.json, run_info.json, config.json) or from a committed benchmark JSON, and every
sentence that reads the figures ("LAD helps on the paper's fixed set", "the clean control explains the
gain") comes from `verdict`, a rule over the figures and their sampling error. The only printed numbers
not measured here are the paper's (PAPER_MNIST), marked as the paper's wherever they appear.

Order of each dataset's section (issue 12, section 3): the adaptive white-box figures (AutoAttack and
PGD first) of the original and the defended model, then the clean control and the other baselines, then
the paper's fixed-set protocol (labelled as such), then transfer, then the gradient-masking checks.
"""
import math
import os
import re
import shutil
import subprocess

from lad_tf.evaluation.report_tables import model_label, sanity_rows, sanity_status
from lad_tf.runtime.files import read_json

# The paper's printed MNIST figures, in percent (LeNet; Tables II-IV and Section IV-B of
# /work/shared/seed/000_b471cea093738dd0.txt). Table III's defended model is FT-0.1, Table II's
# "Adv. LeNet" the one fine-tuned on the mixed eps set.
PAPER_MNIST = {
    "clean": (99.13, 99.34),
    "table2_fixed_set": {"fgsm": (1.77, 21.67), "jsma": (8.71, 39.89), "pgd": (0.6, 9.44), "cw": (98.14, 98.48)},
    "table3_transfer": {"fgsm": (41.71, 49.60), "jsma": (93.91, 92.44), "pgd": (29.93, 35.93), "ga": (99.82, 99.72),
                        "cw": (99.12, 99.38)},
    "table4_clean": {"original": 99.13, "fgsm": 93.57, "jsma": 95.71, "pgd": 90.98, "cw": 98.71, "ga": 97.23,
                     "defended": 99.34},
    "decoder_mse": {"train": 0.00757, "test": 0.00765, "epochs": 1000},
    "eps": 0.3,
}
ATTACK_ORDER = ("autoattack", "pgd", "apgd", "fgsm", "jsma", "cw", "ga")
HEADLINE_ATTACKS = ("autoattack", "pgd")
DATASET_TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST (the paper's dataset)", "digits": "digits"}
COMPANIONS = ("mnist_authors", "mnist_decoder")  # runs shown inside the MNIST-against-the-paper section
README_BEGIN = "<!-- results:begin (written by python -m pipelines.reproduce; do not edit by hand) -->"
README_END = "<!-- results:end -->"


# -- reading ------------------------------------------------------------------------------------------

def load_run(path):
  """What a work directory holds for the document (missing pieces are None)."""
  if path is None or not os.path.isdir(path):
    return None
  read = lambda *p: read_json(os.path.join(path, *p))
  return {"path": os.path.abspath(path), "config": read("config.json"), "metrics": read("metrics.json"),
          "generator": read("generator", "metrics.json"), "report": read("evaluation", "report.json"),
          "run_info": read("run_info.json"), "stages": read("stages.json")}


def pct(value):
  """An accuracy as the document prints it (percent, 2 decimals); '-' when absent."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "-"
  return f"{100 * value:.2f}"


def mse(value):
  return "-" if value is None else f"{value:.5f}"


def table(header, rows):
  out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(out)


def ordered_rows(report, setting):
  rows = [r for r in (report or {}).get("rows", []) if r["setting"] == setting]
  rank = lambda r: (ATTACK_ORDER.index(r["attack"]) if r["attack"] in ATTACK_ORDER else len(ATTACK_ORDER),
                    -1 if r["epsilon"] is None else r["epsilon"])
  return sorted(rows, key=rank)


def attack_label(row, report):
  config = (report or {}).get("config", {})
  attack = row["attack"]
  if attack == "autoattack":
    version = (config.get("attack_options", {}).get("autoattack", {}) or {}).get("version", "standard")
    name = f"AutoAttack ({version})"
  else:
    name = {"pgd": f"PGD-{config.get('pgd_iter', '')}", "apgd": f"APGD-CE-{config.get('apgd_iter', '')}",
            "fgsm": "FGSM", "jsma": "JSMA", "cw": "CW-L2", "ga": "GA (Song et al.)"}.get(attack, attack.upper())
  return name + ("" if row["epsilon"] is None else f" eps {row['epsilon']:g}")


def row_size(row, report):
  """Distinct source images, and (image, target) pairs for targeted rows (report.json's n_images /
  n_pairs; reports older than those keys attacked every other class of n / (classes - 1) images)."""
  if row.get("n_pairs") is not None:
    return f"{row['n_images']} images, {row['n_pairs']} (image, target) pairs"
  if row.get("targeted") and "n_images" not in row:
    classes = len(report.get("class_names") or []) or 10
    return f"{row['n'] // max(1, classes - 1)} images x {classes - 1} targets"
  return f"{row.get('n_images', row['n'])} images"


def baselines(report):
  names = [n for n in (report or {}).get("models", {}) if n.startswith("baseline_")]
  return sorted(names, key=lambda n: (n != "baseline_clean", n))


# -- the rule that writes the sentences ---------------------------------------------------------------

def margin(p, q, n):
  """Two standard errors of the difference of two accuracies measured on n examples each (at least
  one example): a difference smaller than this is not read as a change."""
  if n <= 0:
    return float("inf")
  return max(2 * math.sqrt((p * (1 - p) + q * (1 - q)) / n), 1.0 / n)


def verdict(original, lad, control, n):
  """The reading of one row: does LAD raise accuracy over the original, and beyond the clean control?

  Returns (code, sentence); code is one of "no_gain" (including a loss), "helps" (beyond the control), "control_explains"
  (the control gains as much), "no_control" (no control measured), "unknown" (a figure is missing)."""
  if original is None or lad is None:
    return "unknown", "not measured"
  gain = lad - original
  if gain < -margin(original, lad, n):
    return "no_gain", f"LAD lowers accuracy ({100 * gain:+.2f} points, beyond sampling error)"
  if gain <= margin(original, lad, n):
    return "no_gain", f"no gain for LAD ({100 * gain:+.2f} points, within sampling error)"
  if control is None:
    return "no_control", f"LAD {100 * gain:+.2f} points; no clean control measured, so not attributable to LAD"
  if lad - control > margin(lad, control, n):
    return "helps", (f"LAD helps on this set: {100 * gain:+.2f} points, {100 * (lad - control):+.2f} beyond the "
                     f"clean control")
  return "control_explains", (f"the clean control explains the gain (LAD {100 * gain:+.2f} points, control "
                              f"{100 * (control - original):+.2f})")


# -- provenance -----------------------------------------------------------------------------------------

def git_commit_of_file(repo, path):
  """The commit that last changed a committed file (a benchmark JSON's provenance)."""
  try:
    out = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", path], cwd=repo, capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def commits_of(run, stated=None):
  """The commit(s) recorded when the run's steps started (run_info.json), never today's; `stated`
  (the operator's word, for a directory made without pipelines.reproduce) is labelled as such."""
  info = (run or {}).get("run_info") or {}
  seen = []
  for step in ("defend", "evaluate"):
    for attempt in (info.get(step) or {}).get("attempts", []):
      label = attempt.get("commit", "?") + (" (with uncommitted changes)" if attempt.get("dirty") else "")
      if label not in seen:
        seen.append(label)
  if seen:
    return ", ".join(seen)
  if stated:
    return f"{stated} (stated at render time by the operator; the run did not record it)"
  return "not recorded (the run was not started by pipelines.reproduce)"


def commands_of(run):
  info = (run or {}).get("run_info") or {}
  out = []
  for step in ("defend", "evaluate"):
    command = (info.get(step) or {}).get("command")
    if command:
      out.append(" ".join(command))
  return out


def configuration_lines(run):
  full = ((run.get("config") or {}).get("full") or {})
  keys = ("dataset", "architecture", "classifier_epochs", "generator_epochs", "decoder_loss_epochs",
          "calibration_per_class", "attention", "eps_grid", "normal", "target", "fine_tune_mode",
          "fine_tune_eps", "fine_tune_schedule", "fine_tune_epochs")
  defend = ", ".join(f"{k}={full[k]}" for k in keys if k in full)
  defend += f", seed={(run.get('config') or {}).get('seed')}"
  lines = [f"defend (config.json): {defend}"]
  report = run.get("report")
  if report:
    c = report.get("config", {})
    keys = ("attacks", "epsilons", "n_per_class", "m_per_class", "baselines", "baseline_eps", "attack_baselines",
            "transfer", "blackbox_epochs", "blackbox_train_examples", "lad_sweep", "pgd_iter", "apgd_iter",
            "cw_binary_steps", "cw_iterations", "sanity_n", "attack_options", "seed")
    lines.append("evaluate (report.json): " + ", ".join(f"{k}={c[k]}" for k in keys if k in c))
    tune = c.get("fine_tune") or {}
    if tune:
      lines.append("fine-tuning of the baselines and the control: " + ", ".join(
          f"{k}={tune[k]}" for k in ("epochs", "batch_size", "learning_rate", "momentum", "alpha") if k in tune))
  return lines


def wall_time(run):
  stages = run.get("stages") or {}
  total = sum(v for v in stages.values() if isinstance(v, (int, float)))
  report_total = ((run.get("report") or {}).get("timings_s") or {}).get("total")
  parts = [f"defend stages {total / 60:.1f} min" if stages else None,
           f"evaluation {report_total / 60:.1f} min" if report_total else None]
  return ", ".join(p for p in parts if p) or "not recorded"


def provenance(run, stated_commit=None):
  lines = [f"- Work directory: `{run['path']}`", f"- Git commit: {commits_of(run, stated_commit)}"]
  commands = commands_of(run)
  if commands:
    lines += ["- Commands:"] + [f"  `{c}`" for c in commands]
  else:
    lines.append("- Commands: not recorded (the run was not started by pipelines.reproduce); the settings "
                 "below are the work directory's own")
  lines += [f"- Configuration, {line}" for line in configuration_lines(run)]
  lines.append(f"- Wall time on this machine: {wall_time(run)}")
  return "\n".join(lines)


# -- a dataset's sections ------------------------------------------------------------------------------

def adaptive_section(report):
  rows = ordered_rows(report, "white_box")
  body = [[attack_label(r, report), row_size(r, report), pct(r.get("original_accuracy")),
           pct(r.get("defended_accuracy")),
           verdict(r.get("original_accuracy"), r.get("defended_accuracy"), r.get("baseline_clean_accuracy"),
                   r["n"])[1]] for r in rows]
  return ("### Adaptive white-box attacks (each model attacked itself), accuracy %\n\n"
          "AutoAttack and PGD first: the figures that say whether a defence resists an attacker who holds "
          "its weights.\n\n" + table(["attack", "n", "original", "LAD-defended", "reading"], body))


def control_section(report):
  names = baselines(report)
  clean = report.get("clean", {})
  lines = ["### The clean control and the other baselines", "",
           "The clean control is the original fine-tuned exactly as the defence was, on the clean calibration "
           "images (x' = x); the other baselines are fine-tuned the same way on FGSM / PGD / JSMA / CW examples. "
           "Clean accuracy, % (the paper's Table IV shape):", ""]
  models = ["original", "defended"] + names
  lines.append(table(["model"] + [model_label(m) for m in models],
                     [["clean accuracy"] + [pct(clean.get(m)) for m in models]]))
  rows = ordered_rows(report, "white_box")
  attacked = [n for n in names if any(r.get(f"{n}_accuracy") is not None for r in rows)]
  if attacked:
    lines += ["", "Adaptive white-box accuracy of each baseline (attacked itself), %:", ""]
    body = [[attack_label(r, report), pct(r.get("defended_accuracy"))] +
            [pct(r.get(f"{n}_accuracy")) for n in attacked] for r in rows]
    lines.append(table(["attack", "LAD-defended"] + [model_label(n) for n in attacked], body))
  return "\n".join(lines)


def fixed_set_section(report):
  names = baselines(report)
  rows = ordered_rows(report, "white_box")
  body = []
  for r in rows:
    control = r.get("baseline_clean_accuracy_fixed_set")
    body.append([attack_label(r, report), row_size(r, report), pct(r.get("original_accuracy")),
                 pct(r.get("defended_accuracy_fixed_set"))] +
                [pct(r.get(f"{n}_accuracy_fixed_set")) for n in names] +
                [verdict(r.get("original_accuracy"), r.get("defended_accuracy_fixed_set"), control, r["n"])[1]])
  return ("### The paper's fixed-set protocol (Table II's): each model scored on the original's adversarial "
          "examples, accuracy %\n\nA weaker protocol than the adaptive one above: the attacked set is fixed, "
          "so a minimal perturbation crafted on the original flips back after any change of weights. Each "
          "gain is read against the clean control's on the same images.\n\n" +
          table(["attack", "n", "original", "LAD-defended (fixed set)"] +
                [f"{model_label(n)} (fixed set)" for n in names] + ["reading"], body))


def transfer_section(report):
  names = baselines(report)
  rows = ordered_rows(report, "transfer")
  if not rows:
    return "### Transfer attacks\n\nNot run."
  body = [[attack_label(r, report), row_size(r, report), pct(r.get("blackbox_accuracy")),
           pct(r.get("original_accuracy")), pct(r.get("defended_accuracy"))] +
          [pct(r.get(f"{n}_accuracy")) for n in names] +
          [verdict(r.get("original_accuracy"), r.get("defended_accuracy"), r.get("baseline_clean_accuracy"),
                   r["n"])[1]] for r in rows]
  return ("### Transfer attacks from an independently trained black-box model (Table III's protocol), "
          "accuracy %\n\n" + table(["attack", "n", "black-box model (attacked)", "original", "LAD-defended"] +
                                   [model_label(n) for n in names] + ["reading"], body))


def sanity_section(report):
  sanity = (report or {}).get("sanity") or {}
  if not sanity.get("models"):
    return "### Gradient-masking checks\n\nNot run (sanity_n = 0, or a report made before the checks existed)."
  body = [[label, check, "passed" if passed else "**FAILED**", detail.replace("|", "/")]
          for label, check, passed, detail in sanity_rows(sanity)]
  return (f"### Gradient-masking checks ({sanity.get('n')} images, eps {sanity.get('eps')}): "
          f"{sanity_status(sanity)}\n\n" +
          table(["model", "check", "result", "figures"], body))


def sweep_section(report):
  sweep = (report or {}).get("lad_sweep") or []
  if not sweep:
    return ""
  body = [[f"{r['epsilon']:g}", r["n_fit"], r["n_heldout"], pct(r["ft_clean_accuracy"]),
           pct(r["original_lad_accuracy"]), pct(r["ft_lad_accuracy"])] for r in sweep]
  return ("### LAD sweep (the paper's Fig. 7): one FT-eps model per eps, accuracy %\n\nFine-tuned on half the "
          "calibration sources, scored on the other half's LAD examples at the same eps.\n\n" +
          table(["eps", "fine-tuned on", "held out", "FT-eps clean", "original on LAD set", "FT-eps on LAD set"],
                body))


def defence_section(run):
  metrics = run.get("metrics") or {}
  gen = metrics.get("generator") or {}
  bound = metrics.get("boundary") or {}
  lines = ["### The defence", "",
           table(["", "original", "LAD-defended"],
                 [["clean accuracy %", pct((metrics.get("original") or {}).get("clean_accuracy")),
                   pct((metrics.get("defended") or {}).get("clean_accuracy"))],
                  [f"decoder loss ({gen.get('recon_norm') or '-'}) train / test", f"{mse(gen.get('train_loss'))} / "
                   f"{mse(gen.get('test_loss'))}", ""],
                  ["boundary held-out accuracy %, attention-SVM / plain SVM",
                   f"{pct(bound.get('accuracy'))} / {pct(bound.get('plain_svm_accuracy'))}", ""]])]
  lad = metrics.get("lad") or {}
  rates = lad.get("attack_success_rate") or {}
  if rates:
    eps = sorted(rates, key=float)
    get = lambda key, e: pct((lad.get(key) or {}).get(e))
    lines += ["", f"LAD generation ({lad.get('eps_convention')} eps), % of generated examples (the paper's "
              "Fig. 5 as a table):", "",
              table(["eps", "label != source", "label != source, reconstruction correct", "reached the target",
                     "Eq. 3 inconsistent"],
                    [[e, get("attack_success_rate", e), get("attack_success_rate_recon_ok", e),
                      get("targeted_rate", e), get("inconsistency_rate", e)] for e in eps])]
  return "\n".join(lines)


def figures_section(run, figure_dir, doc_dir, name):
  """Copies the run's PNG figures (the defence's figures/ and the evaluation's evaluation/figures/)
  next to the document and links them (relative links)."""
  links = []
  for folder in ("figures", os.path.join("evaluation", "figures")):
    source = os.path.join(run["path"], folder)
    if not os.path.isdir(source):
      continue
    target = os.path.join(figure_dir, name)
    os.makedirs(target, exist_ok=True)
    for png in sorted(f for f in os.listdir(source) if f.endswith(".png")):
      shutil.copyfile(os.path.join(source, png), os.path.join(target, png))
      rel = os.path.relpath(os.path.join(target, png), doc_dir)
      links.append(f"[{png[:-4].replace('_', ' ')}]({rel})")
  report_html = os.path.join(run["path"], "evaluation", "report.html")
  extra = f" The full HTML report (with its plots) is `{report_html}` in the work directory." if os.path.exists(
      report_html) else ""
  return "### Figures\n\n" + " · ".join(links) + "." + extra if links else ""


def readings(report):
  """The closing sentences of a dataset, one per claim, from `verdict`."""
  out = []
  rows = ordered_rows(report, "white_box")
  adaptive = [(r, verdict(r.get("original_accuracy"), r.get("defended_accuracy"), r.get("baseline_clean_accuracy"),
                          r["n"])) for r in rows if r["attack"] in HEADLINE_ATTACKS]
  helps = [attack_label(r, report) for r, (code, _) in adaptive if code == "helps"]
  if adaptive:
    out.append("Adaptive white-box (" + ", ".join(attack_label(r, report) for r, _ in adaptive) + "): " +
               (f"LAD adds robustness beyond the clean control on {', '.join(helps)}." if helps else
                "LAD adds no robustness beyond sampling error and the clean control: " +
                "; ".join(f"{attack_label(r, report)} {pct(r.get('original_accuracy'))} -> "
                          f"{pct(r.get('defended_accuracy'))}" for r, _ in adaptive) + "."))
  fixed = [(r, verdict(r.get("original_accuracy"), r.get("defended_accuracy_fixed_set"),
                       r.get("baseline_clean_accuracy_fixed_set"), r["n"])) for r in rows]
  helps = [attack_label(r, report) for r, (code, _) in fixed if code == "helps"]
  explained = [attack_label(r, report) for r, (code, _) in fixed if code == "control_explains"]
  if helps:
    out.append("LAD helps on the paper's fixed sets beyond the clean control for: " + ", ".join(helps) + ".")
  if explained:
    out.append("On the paper's fixed sets the clean control explains LAD's gain for: " + ", ".join(explained) + ".")
  if fixed and not helps and not explained:
    out.append("On the paper's fixed sets LAD shows no gain beyond sampling error.")
  return out


def dataset_section(name, run, figure_dir, doc_dir, stated_commit=None):
  dataset = ((run or {}).get("config") or {}).get("dataset", name)
  title = DATASET_TITLES.get(dataset, dataset)
  if run is None:
    return f"## {title}\n\nNo work directory: run `python -m pipelines.reproduce --only={name}`."
  parts = [f"## {title}", "", provenance(run, stated_commit)]
  report = run.get("report")
  commit = commits_of(run, stated_commit)
  source = lambda f: f"_Source: `{os.path.join(run['path'], f)}`, git commit {commit}; command and configuration above._"
  if report:
    for section in (adaptive_section, control_section, fixed_set_section, transfer_section, sanity_section):
      parts += [section(report), source("evaluation/report.json")]
  else:
    parts.append("No evaluation report (evaluation/report.json) in this work directory yet: the attack "
                 "tables follow once `python -m pipelines.evaluate` has run on it.")
  parts += [defence_section(run), source("metrics.json")]
  if report and report.get("lad_sweep"):
    parts += [sweep_section(report), source("evaluation/report.json")]
  parts.append(figures_section(run, figure_dir, doc_dir, name))
  if report:
    parts += ["### Reading (generated from the figures above)", "",
              "\n".join(f"- {s}" for s in readings(report))]
  return "\n\n".join(p for p in parts if p)


# -- MNIST against the paper ---------------------------------------------------------------------------

def _row(report, attack, setting, eps=None):
  for r in (report or {}).get("rows", []):
    if r["attack"] == attack and r["setting"] == setting and (eps is None or r["epsilon"] is None or
                                                             abs(r["epsilon"] - eps) < 1e-6):
      return r
  return None


def paper_section(run, authors=None, decoder=None, stated_commit=None):
  """The paper's MNIST tables next to ours, both fine-tuning schedules, the decoder's loss curve."""
  paper = PAPER_MNIST
  report = (run or {}).get("report")
  metrics = (run or {}).get("metrics") or {}
  eps = paper["eps"]
  parts = ["## MNIST against the paper's printed numbers", "",
           "The paper's figures are printed ones (LeNet, its Tables II-IV); ours are measured on the evaluation "
           "part of the MNIST test split with our protocol (sources per row as stated above). The paper's "
           "Table III defended model is FT-0.1, ours the defence as configured above.",
           f"_Ours: `{(run or {}).get('path')}` (metrics.json, evaluation/report.json), git commit "
           f"{commits_of(run, stated_commit)}; command and configuration in the MNIST section above._"]
  clean = lambda m, k: (m.get(k) or {}).get("clean_accuracy")
  parts += ["### Clean accuracy and Table IV", "",
            table(["model", "ours", "paper"],
                  [["original", pct(clean(metrics, "original")), f"{paper['clean'][0]:.2f}"],
                   ["LAD-defended", pct(clean(metrics, "defended")), f"{paper['clean'][1]:.2f}"]] +
                  [[f"FT on {b.upper()}", pct((report or {}).get("clean", {}).get(f"baseline_{b}")),
                    f"{paper['table4_clean'][b]:.2f}"] for b in ("fgsm", "jsma", "pgd", "cw", "ga")] +
                  [["clean control (not in the paper)", pct((report or {}).get("clean", {}).get("baseline_clean")),
                    "-"]])]
  body = []
  for attack in ("fgsm", "jsma", "pgd", "cw"):
    r = _row(report, attack, "white_box", eps if attack in ("fgsm", "pgd") else None)
    p = paper["table2_fixed_set"][attack]
    get = lambda k: pct((r or {}).get(k))
    body.append([attack.upper() + (f" eps {eps:g}" if attack in ("fgsm", "pgd") else ""),
                 f"{get('original_accuracy')} -> {get('defended_accuracy_fixed_set')}",
                 f"{p[0]:.2f} -> {p[1]:.2f}", get("baseline_clean_accuracy_fixed_set"),
                 get("defended_accuracy"),
                 verdict((r or {}).get("original_accuracy"), (r or {}).get("defended_accuracy_fixed_set"),
                         (r or {}).get("baseline_clean_accuracy_fixed_set"), (r or {}).get("n", 0))[1]])
  parts += ["### Table II: white-box, the fixed-set protocol", "",
            table(["attack", "ours: original -> LAD (fixed set)", "paper: original -> Adv. LeNet",
                   "ours: clean control (fixed set)", "ours: LAD attacked itself (adaptive)", "reading"], body)]
  body = []
  for attack in ("fgsm", "jsma", "pgd", "ga", "cw"):
    r = _row(report, attack, "transfer", eps if attack in ("fgsm", "pgd") else None)
    p = paper["table3_transfer"][attack]
    get = lambda k: pct((r or {}).get(k))
    body.append([attack.upper(), f"{get('original_accuracy')} -> {get('defended_accuracy')}",
                 f"{p[0]:.2f} -> {p[1]:.2f}", get("baseline_clean_accuracy"),
                 verdict((r or {}).get("original_accuracy"), (r or {}).get("defended_accuracy"),
                         (r or {}).get("baseline_clean_accuracy"), (r or {}).get("n", 0))[1]])
  parts += ["### Table III: transfer from a black-box CNN", "",
            table(["attack", "ours: original -> LAD", "paper: original -> FT-0.1", "ours: clean control", "reading"],
                  body)]
  parts.append(decoder_section(run, decoder))
  parts.append(schedules_section(run, authors))
  parts += ["### Figs. 5 and 7", "",
            "The paper prints these as plots only (success rate against its raw eps 0.1-20; FT-eps clean "
            "accuracy against eps); ours are the generation table and the LAD sweep of the MNIST section above "
            "(relative eps: units of the mean latent norm, not the paper's raw SVM-weight units)."]
  parts += ["### Which of the paper's MNIST claims reproduce (generated from the figures above)", "",
            "\n".join(f"- {s}" for s in paper_claims(run, authors, decoder))]
  return "\n\n".join(parts)


def decoder_section(run, decoder):
  paper = PAPER_MNIST["decoder_mse"]
  rows = []
  gen = ((run or {}).get("metrics") or {}).get("generator") or {}
  if gen.get("test_loss") is not None:
    epochs = ((run.get("config") or {}).get("full") or {}).get("generator_epochs", "?")
    rows.append([f"{epochs} (the defence's decoder)", mse(gen.get("train_loss")), mse(gen.get("test_loss"))])
  curve = (((decoder or {}).get("generator") or {}).get("loss_at_epoch")) or {}
  for epoch in sorted(curve, key=int):
    rows.append([f"{epoch} (one run, recorded as it trained)", mse(curve[epoch].get("train")),
                 mse(curve[epoch].get("test"))])
  rows.append([f"{paper['epochs']} (paper)", f"{paper['train']:.5f}", f"{paper['test']:.5f}"])
  note = "" if curve else ("\n\nThe decoder's loss curve run (`mnist_decoder`) is not in these work directories "
                           "yet.")
  where = f" Curve run: {run_line(decoder)}" if decoder else ""
  return ("### The decoder's reconstruction MSE against epochs\n\n" +
          table(["epochs", "train MSE", "test MSE"], rows) + note + (("\n\n" + where.strip()) if where else ""))


def run_line(run):
  """Where a companion run's figures come from: directory, commit, commands."""
  commands = "; ".join(f"`{c}`" for c in commands_of(run)) or "commands not recorded"
  return f"`{run['path']}`, git commit {commits_of(run)}, {commands}."


def schedules_section(run, authors):
  lines = ["### Two fine-tuning schedules: ours (lad_tf) and the authors' (100 epochs, SGD lr 0.01, momentum 0.5, "
           "batch 64)", ""]
  if authors is None:
    return "\n".join(lines + ["The authors'-schedule run (`mnist_authors`) is not in these work directories yet."])
  runs = [("lad_tf", run), ("authors", authors)]
  reports = [(n, (r or {}).get("report")) for n, r in runs]
  body = [["clean accuracy, LAD-defended"] + [pct((((r or {}).get("metrics") or {}).get("defended") or {}).get(
      "clean_accuracy")) for _, r in runs]]
  body.append(["clean accuracy, clean control"] + [pct(((rep or {}).get("clean") or {}).get("baseline_clean"))
                                                   for _, rep in reports])
  for attack in ("autoattack", "pgd", "fgsm", "jsma", "cw"):
    eps = PAPER_MNIST["eps"] if attack in ("autoattack", "pgd", "fgsm") else None
    for key, what in (("defended_accuracy", "adaptive"), ("defended_accuracy_fixed_set", "fixed set"),
                      ("baseline_clean_accuracy_fixed_set", "clean control, fixed set")):
      cells = [pct((_row(rep, attack, "white_box", eps) or {}).get(key)) for _, rep in reports]
      if any(c != "-" for c in cells):
        body.append([f"{attack.upper()}{'' if eps is None else f' eps {eps:g}'}, {what}"] + cells)
  lines.append(table(["figure (%)", "ours (lad_tf)", "authors'"], body))
  lines += ["", f"Authors'-schedule run: {run_line(authors)}"]
  return "\n".join(lines)


def paper_claims(run, authors=None, decoder=None):
  """One sentence per claim of the paper on MNIST: reproduced or not, with the figures."""
  out = []
  metrics = (run or {}).get("metrics") or {}
  report = (run or {}).get("report")
  n_clean = (metrics.get("evaluation_examples") or 0)
  orig = (metrics.get("original") or {}).get("clean_accuracy")
  lad = (metrics.get("defended") or {}).get("clean_accuracy")
  if orig is not None and lad is not None:
    code, _ = verdict(orig, lad, None, n_clean)
    drop = orig - lad > margin(orig, lad, n_clean)
    out.append(f"Clean accuracy {pct(orig)} -> {pct(lad)} (paper 99.13 -> 99.34): " +
               ("reproduces: LAD raises it." if code != "no_gain" else
                "LAD lowers it." if drop else "LAD keeps it (no change beyond sampling error); the paper's rise "
                "does not reproduce."))
  if not report:
    out.append("The attack tables need the evaluation report, not yet in this work directory.")
    return out
  for attack in ("fgsm", "jsma", "pgd", "cw"):
    r = _row(report, attack, "white_box", PAPER_MNIST["eps"] if attack in ("fgsm", "pgd") else None)
    if r is None:
      continue
    code, sentence = verdict(r.get("original_accuracy"), r.get("defended_accuracy_fixed_set"),
                             r.get("baseline_clean_accuracy_fixed_set"), r["n"])
    p = PAPER_MNIST["table2_fixed_set"][attack]
    status = {"helps": "reproduces, and beyond the clean control",
              "control_explains": "a gain as the paper's, but the clean control explains it",
              "no_control": "a gain, not attributable without the control",
              "no_gain": "does not reproduce"}.get(code, "not measured")
    adaptive = r.get("defended_accuracy")
    out.append(f"Table II {attack.upper()} (paper {p[0]:.2f} -> {p[1]:.2f}): ours {pct(r.get('original_accuracy'))} "
               f"-> {pct(r.get('defended_accuracy_fixed_set'))} on the fixed set: {status} ({sentence}); attacked "
               f"adaptively the defended model scores {pct(adaptive)}.")
  for attack in ("fgsm", "pgd", "cw"):
    r = _row(report, attack, "transfer", PAPER_MNIST["eps"] if attack in ("fgsm", "pgd") else None)
    if r is None:
      continue
    code, sentence = verdict(r.get("original_accuracy"), r.get("defended_accuracy"), r.get("baseline_clean_accuracy"),
                             r["n"])
    p = PAPER_MNIST["table3_transfer"][attack]
    out.append(f"Table III {attack.upper()} transfer (paper {p[0]:.2f} -> {p[1]:.2f}): ours "
               f"{pct(r.get('original_accuracy'))} -> {pct(r.get('defended_accuracy'))}: "
               f"{'reproduces' if code == 'helps' else 'does not reproduce beyond the control' if code != 'no_gain' else 'does not reproduce'} "
               f"({sentence}).")
  clean = report.get("clean", {})
  others = {b: clean.get(f"baseline_{b}") for b in ("fgsm", "jsma", "pgd", "cw", "ga") if clean.get(f"baseline_{b}")
            is not None}
  if lad is not None and others:
    best = max(others, key=others.get)
    out.append(f"Table IV (LAD's clean accuracy the best of the fine-tuned models): LAD {pct(lad)}, best attack "
               f"baseline FT on {best.upper()} {pct(others[best])}: " +
               ("reproduces." if lad >= others[best] else "does not reproduce."))
  curve = (((decoder or {}).get("generator") or {}).get("loss_at_epoch")) or {}
  if curve:
    last = max(curve, key=int)
    test = curve[last].get("test")
    out.append(f"Decoder: test MSE {mse(test)} after {last} epochs against the paper's 0.00765 after 1000 "
               f"({test / PAPER_MNIST['decoder_mse']['test']:.2f}x).")
  return out


# -- benchmarks quoted by the document ------------------------------------------------------------------

def benchmark_section(repo):
  parts = ["## Committed benchmarks quoted here", ""]
  path = os.path.join(repo, "benchmarks", "attacks.json")
  attacks = read_json(path)
  if attacks and "autoattack" in attacks:
    aa, run = attacks["autoattack"], attacks.get("autoattack_run", {})
    ours, art = aa.get("ours", {}), aa.get("art", {})
    parts += [f"### AutoAttack: ours against ART's (`benchmarks/attacks.json`, committed in "
              f"{git_commit_of_file(repo, 'benchmarks/attacks.json')})", "",
              f"Command: `{run.get('command', 'python -m pipelines.benchmark attacks')}`; {run.get('dataset')} "
              f"{run.get('model')} (test accuracy {pct(run.get('test_accuracy'))}), eps {aa.get('eps')}, "
              f"{run.get('machine', {}).get('cpus')} CPUs.", "",
              table(["", "ours (standard)", "ART AutoAttack"],
                    [["robust accuracy %", f"{pct(ours.get('robust_accuracy'))} on {aa.get('images')} images "
                      f"({pct(ours.get('robust_accuracy_on_art_images'))} on ART's {art.get('images')})",
                      f"{pct(art.get('robust_accuracy'))} on {art.get('images')} images"],
                     ["seconds per image, first call", f"{ours.get('s_per_image'):.3f}",
                      f"{art.get('s_per_image'):.3f}"],
                     ["speed-up, first call (CPU time)", f"{aa.get('speedup_cold'):.1f}x "
                      f"({aa.get('speedup_cold_cpu'):.1f}x)", ""]])]
    cross = attacks.get("crosscheck") or {}
    body = [[k, pct(v.get("ours")), pct(v.get("art")), f"{100 * v.get('difference'):+.2f}"]
            for k, v in cross.items() if isinstance(v, dict) and "ours" in v]
    if body:
      parts += ["", f"Cross-check against ART on {cross.get('images')} images (robust accuracy %):", "",
                table(["attack", "ours", "ART", "difference (points)"], body)]
  from pipelines import robust_results  # it reads this module's helpers
  robust = robust_results.section(repo)
  if robust:
    parts.append(robust)
  return "\n".join(parts) if len(parts) > 2 else ""


# -- the document ----------------------------------------------------------------------------------------

def render(runs, repo, doc_path, stated_commits=None):
  """Writes docs/RESULTS.md from the runs' JSON; returns its text.

  Args:
    runs: dict run name -> work directory ("fashion_mnist", "mnist", "mnist_authors", "mnist_decoder");
      a missing or absent directory renders as "not run".
    repo: the repository root (for the committed benchmark JSONs).
    doc_path: the document to write; figures are copied to docs/figures/results/<run>/ beside it.
    stated_commits: dict run name -> commit, for directories that did not record theirs (labelled).
  """
  stated_commits = stated_commits or {}
  loaded = {name: load_run(path) for name, path in runs.items()}
  doc_dir = os.path.dirname(os.path.abspath(doc_path))
  figure_dir = os.path.join(doc_dir, "figures", "results")
  parts = ["# Results", "",
           "Written by `python -m pipelines.reproduce` (`make results`) from the JSON its work directories hold; "
           "do not edit by hand. Every accuracy is on test images outside the calibration split. Each section "
           "states the command, the configuration and the git commit recorded when its run started. Readings "
           "are generated by a rule (pipelines/results.py `verdict`): a difference counts only beyond two "
           "standard errors, and a fixed-set gain counts for LAD only beyond the clean control's."]
  for name in runs:
    if name not in COMPANIONS:
      parts.append(dataset_section(name, loaded.get(name), figure_dir, doc_dir, stated_commits.get(name)))
  if "mnist" in runs:
    parts.append(paper_section(loaded.get("mnist"), loaded.get("mnist_authors"), loaded.get("mnist_decoder"),
                               stated_commits.get("mnist")))
  bench = benchmark_section(repo)
  if bench:
    parts.append(bench)
  text = re.sub(r"\n{3,}", "\n\n", "\n\n".join(parts)) + "\n"
  os.makedirs(doc_dir, exist_ok=True)
  with open(doc_path, "w") as f:
    f.write(text)
  return text


def headline(run, stated_commit=None):
  """The README's headline block: adaptive figures first, then the control, then the fixed set."""
  report = (run or {}).get("report")
  if not report:
    return None
  rows = [r for r in ordered_rows(report, "white_box") if r["attack"] in HEADLINE_ATTACKS + ("jsma", "cw")]
  clean = report.get("clean", {})
  body = [["clean accuracy", pct(clean.get("original")), pct(clean.get("defended")), pct(clean.get("baseline_clean"))]]
  body += [[f"{attack_label(r, report)}, adaptive (attacked itself)", pct(r.get("original_accuracy")),
            pct(r.get("defended_accuracy")), pct(r.get("baseline_clean_accuracy"))]
           for r in rows if r["attack"] in HEADLINE_ATTACKS]
  body += [[f"{attack_label(r, report)}, the paper's fixed set (the original's examples)",
            pct(r.get("original_accuracy")), pct(r.get("defended_accuracy_fixed_set")),
            pct(r.get("baseline_clean_accuracy_fixed_set"))] for r in rows]
  title = DATASET_TITLES.get(report.get("dataset"), report.get("dataset"))
  return "\n".join([f"{title}, accuracy % (git commit {commits_of(run, stated_commit)}):", "",
                    table(["", "original", "LAD-defended", "clean control"], body), ""] +
                   [f"- {s}" for s in readings(report)])


def update_readme(readme_path, runs, stated_commits=None):
  """Replaces the README's block between README_BEGIN and README_END with the headline tables; returns
  whether it changed anything (False when the markers are absent or no run has a report)."""
  stated_commits = stated_commits or {}
  with open(readme_path) as f:
    text = f.read()
  if README_BEGIN not in text or README_END not in text:
    return False
  blocks = [headline(load_run(path), stated_commits.get(name)) for name, path in runs.items()
            if name not in COMPANIONS]
  blocks = [b for b in blocks if b]
  if not blocks:
    return False
  start = text.index(README_BEGIN) + len(README_BEGIN)
  end = text.index(README_END)
  body = "\n" + "\n\n".join(blocks) + "\n\nEvery figure, command and commit: docs/RESULTS.md (`make results`).\n"
  with open(readme_path, "w") as f:
    f.write(text[:start] + body + text[end:])
  return True
