"""The committed benchmarks docs/RESULTS.md quotes: our AutoAttack against ART's
(benchmarks/attacks.json) and the robust-training benchmark (documents.robust_benchmark)."""
import os

from lad_tf.runtime.files import read_json
from pipelines.documents import recipe_benchmark, robust_benchmark
from pipelines.documents.formatting import pct, table
from pipelines.documents.provenance import git_commit_of_file


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
  as_run = recipe_benchmark.section(repo)
  if as_run:
    parts += ["", as_run]
  robust = robust_benchmark.section(repo)
  if robust:
    parts.append(robust)
  return "\n".join(parts) if len(parts) > 2 else ""
