"""What the documents read: a work directory's JSON, and its evaluation report's rows in reading order."""
import os

from lad_tf.runtime.files import read_json

ATTACK_ORDER = ("autoattack", "pgd", "apgd", "fgsm", "jsma", "cw", "ga")
HEADLINE_ATTACKS = ("autoattack", "pgd")
DATASET_TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST (the paper's dataset)", "digits": "digits"}
COMPANIONS = ("mnist_authors", "mnist_decoder")  # runs shown inside the MNIST-against-the-paper section


def load_run(path):
  """What a work directory holds for the document (missing pieces are None)."""
  if path is None or not os.path.isdir(path):
    return None
  read = lambda *p: read_json(os.path.join(path, *p))
  return {"path": os.path.abspath(path), "config": read("config.json"), "metrics": read("metrics.json"),
          "generator": read("generator", "metrics.json"), "report": read("evaluation", "report.json"),
          "run_info": read("run_info.json"), "stages": read("stages.json")}


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
