"""The kernels benchmark suite: its oneDNN log reading, its FLOP count, and a tiny real run."""
import pytest

from pipelines.benchmarks import kernels, windows

VERBOSE = """\
[kernels-op] -
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16,,0.5
[kernels-op] latent raw
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16,,0.5
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16,,0.4
onednn_verbose,v1,primitive,create:cache_hit,cpu,matmul,brg_matmul:avx512_core_bf16,undef,src:bf16,,0.1
some other line
[kernels-op] conv1 layer
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src:f32,,1.0
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32,,0.1
"""


def test_verbose_lines_are_counted_per_op_and_warm_up_calls_are_left_out():
  assert kernels.parse_verbose(VERBOSE) == {
      "latent raw": {"matmul/brg_matmul:avx512_core_bf16/undef": 2},
      "conv1 layer": {"convolution/jit:avx2/forward_training": 1, "reorder/jit:uni/undef": 1}}
  assert kernels.main_kernels(kernels.parse_verbose(VERBOSE)) == {
      "latent": {"raw": "brg_matmul:avx512_core_bf16 (undef)"},
      "conv1": {"layer": "jit:avx2 (forward_training)"}}


def test_layer_shapes_count_the_models_multiply_adds():
  from lad_tf import models
  model = models.build_classifier("lenet5", (28, 28, 1), 10)
  shapes = kernels.layer_shapes(model, batch=8)
  assert [kind for _, kind, _, _ in shapes] == ["Conv2D", "Conv2D", "Dense", "Dense"]
  assert shapes[0][2] == (8, 28, 28, 1)
  # by hand, per image: conv1 24x24x20 outputs of 5x5x1, conv2 8x8x50 of 5x5x20, fc 800x500, logits 500x10
  by_hand = [24 * 24 * 20 * 25, 8 * 8 * 50 * 25 * 20, 800 * 500, 500 * 10]
  assert [macs for *_, macs in shapes] == [8 * m for m in by_hand]
  assert windows.multiply_adds(model) == sum(by_hand)  # the pipeline benchmark's count, from the same layers


def test_a_tiny_run_measures_every_layer_and_the_whole_step():
  out = kernels.run(dataset="digits", batch=16, precision="float32", seconds=0, kernels=False)
  assert out["compute_dtype"] == "float32" and [r["name"] for r in out["layers"]][:2] == ["conv1", "conv2"]
  for row in out["layers"]:
    for side in ("raw", "layer"):
      assert row[side]["train_ms"] > 0 and row[side]["forward_gflops"] > 0, row
    assert row["efficiency"] == pytest.approx(row["raw"]["train_ms"] / row["layer"]["train_ms"])
  assert set(out["by_type"]) == {"Conv2D", "Dense"}
  step = out["train_step"]
  assert step["images_per_s"] == pytest.approx(16 / (step["ms"] / 1e3))
  assert 0 < step["optimizer_share"] < 1 and out["optimizer"]["parameters"] > 400_000
