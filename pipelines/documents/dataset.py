"""A dataset's section of docs/RESULTS.md, in the order of issue 12 (section 3): the adaptive white-box
figures (AutoAttack and PGD first) of the original and the defended model, then the clean control and
the other baselines, then the paper's fixed-set protocol (labelled as such), then transfer, then the
gradient-masking checks; the defence, the LAD sweep and the figures follow, and the readings close it."""
import os
import shutil

from lad_tf.evaluation.report_tables import model_label, sanity_rows, sanity_status
from pipelines.documents.formatting import mse, pct, table
from pipelines.documents.provenance import commits_of, provenance
from pipelines.documents.rule import verdict
from pipelines.documents.runs import (DATASET_TITLES, HEADLINE_ATTACKS, attack_label, baselines, ordered_rows,
                                      row_size)


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
