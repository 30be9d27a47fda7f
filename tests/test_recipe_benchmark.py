"""The recipe benchmark measures the command users run: the settings its default row trained with
are those `python -m pipelines.defend --dataset=D` would train with now, so a change to the dataset's
recipe (lad_tf.data.datasets.DefenceRecipe) or to the defence's settings fails here until the
benchmark is run again."""
import dataclasses
import json
import os

import pytest

from lad_tf.data import datasets
from lad_tf.run import defend_stages, stage
from lad_tf.run.defend_config import DefendConfig
from lad_tf.runtime.execution import ExecutionConfig
from pipelines.benchmarks import recipe
from pipelines.documents import recipe_benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def defended_settings(dataset, seed, data_dir=None):
  """The defended stage's settings (what its fingerprint hashes) of the default command (with
  --data_dir=data_dir, which the classifier stage's fingerprint includes)."""
  config = DefendConfig(dataset=dataset, data_dir=data_dir, execution=ExecutionConfig(seed=seed)).resolved()
  settings = stage.fingerprint_settings(defend_stages.STAGES, config, datasets.get_spec(dataset))["defended"]
  return json.loads(json.dumps(settings))


def test_the_default_rows_settings_are_those_the_default_command_uses():
  found = recipe_benchmark.committed(REPO)
  assert "fashion_mnist" in dict(found), "benchmarks/recipe_fashion_mnist.json backs the README's default figures"
  for dataset, bench in found:
    default = bench["rows"]["default"]
    assert default["sets"] == {}
    first_seed = default["seeds"][0]["seed"]
    assert default["settings"] == defended_settings(dataset, first_seed, bench.get("data_dir")), (
        f"benchmarks/recipe_{dataset}.json's default row trained other settings than `pipelines.defend "
        f"--dataset={dataset}` uses now: run `python -m pipelines.benchmark recipe --dataset={dataset}` again")


def test_a_changed_recipe_is_noticed(monkeypatch):
  """The comparison above can fail: one epoch more in the recipe changes the settings."""
  before = defended_settings("fashion_mnist", 0)
  spec = datasets.get_spec("fashion_mnist")
  monkeypatch.setitem(datasets.REGISTRY, "fashion_mnist", dataclasses.replace(
      spec, defence=dataclasses.replace(spec.defence, epochs=spec.defence.epochs + 1)))
  assert defended_settings("fashion_mnist", 0) != before


def test_rows_are_named_from_the_table():
  assert recipe._rows("default|tradeoff_3") == ["default", "tradeoff_3"]
  with pytest.raises(ValueError, match="unknown nope; the rows are default"):
    recipe._rows("default|nope")


def _row(clean, robust, cost, sets=None):
  seeds = [{"seed": s, "clean": clean + d, "autoattack": robust + d, "pgd40": robust + 0.03, "cost_ratio": cost,
            "original": {"clean_accuracy": 0.9, "robust_accuracy": 0.0}} for s, d in enumerate((-0.01, 0.01))]
  summary = {k: {"mean": sum(r[k] for r in seeds) / 2, "std": 0.01} for k in ("clean", "autoattack", "pgd40", "cost_ratio")}
  return {"sets": sets or {}, "settings": {}, "seeds": seeds, **summary}


def test_the_readme_block_and_the_pareto_figure_are_written_from_the_json(tmp_path):
  bench = {"dataset": "fashion_mnist", "eps": 0.1, "autoattack_examples": 1000,
           "autoattack_attack": "AutoAttack standard (lad_tf.attacks.autoattack), the robustness stage",
           "rows": {"default": _row(0.82, 0.65, 1.9), "tradeoff_3": _row(0.86, 0.62, 2.6, {"defence_tradeoff": 3.0})}}
  (tmp_path / "benchmarks").mkdir()
  (tmp_path / "benchmarks" / "recipe_fashion_mnist.json").write_text(json.dumps(bench))
  block = recipe_benchmark.readme_block(str(tmp_path))
  assert "**82.0% clean, 65.0% under AutoAttack standard** at eps 0.1" in block
  assert "(the undefended classifier: 90.0% and 0.0%), mean of 2 seed(s)" in block
  assert "| `tradeoff_3` (`--defence_tradeoff=3`) | 86.0 ± 1.0 | 62.0 ± 1.0 | 65.0 ± 1.0 | 2.6 ± 0.0 | 2 |" in block
  assert block.index("`default`") < block.index("`tradeoff_3`")
  paths = recipe_benchmark.write_figures(str(tmp_path))
  assert paths == [str(tmp_path / "docs" / "figures" / "tradeoff_fashion_mnist.png")]
  assert (tmp_path / "docs" / "figures" / "tradeoff_fashion_mnist.png").stat().st_size > 10_000


def test_a_screening_file_has_its_own_table_and_figure_with_the_knob_drawn_as_a_curve(tmp_path):
  rows = {"default": _row(0.84, 0.70, 2.0), "tradeoff_3": _row(0.86, 0.62, 2.6, {"defence_tradeoff": 3.0}),
          "tradeoff_1": _row(0.87, 0.58, 2.6, {"defence_tradeoff": 1.0}),
          "epochs_20": _row(0.85, 0.72, 4.2, {"defence_epochs": 20})}
  assert recipe_benchmark.knob_curve(rows, "defence_tradeoff", 0.0) == [
      (0.0, "default"), (1.0, "tradeoff_1"), (3.0, "tradeoff_3")]
  assert recipe_benchmark.knob_curve(rows, "defence_eps", 0.1) == [(0.1, "default")]
  bench = {"dataset": "fashion_mnist", "eps": 0.1, "autoattack": "fast", "autoattack_examples": 500, "rows": rows,
           "autoattack_attack": "AutoAttack fast (lad_tf.attacks.autoattack), the robustness stage"}
  (tmp_path / "benchmarks").mkdir()
  (tmp_path / "benchmarks" / "recipe_fashion_mnist_screening_x.json").write_text(json.dumps(bench))
  section = recipe_benchmark.screening_section(str(tmp_path), "recipe_fashion_mnist_screening_x.json", "../figures/")
  assert "| `tradeoff_1` (`--defence_tradeoff=1`) | 87.0 ± 1.0 | 58.0 ± 1.0 |" in section
  assert "(../figures/recipe_fashion_mnist_screening_x.png)" in section
  paths = recipe_benchmark.write_figures(str(tmp_path))  # no recipe_fashion_mnist.json: the screening's alone
  assert paths == [str(tmp_path / "docs" / "figures" / "recipe_fashion_mnist_screening_x.png")]
  assert os.path.getsize(paths[0]) > 10_000
