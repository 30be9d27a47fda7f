"""The decoder benchmark suite: its summary arithmetic, and a tiny real run on digits."""
import pytest

from pipelines.benchmarks import decoder as suite

PEAK = {"fp32_peak_gflops": 100.0, "bf16_peak_gflops": 200.0}


def test_summary_reads_best_epochs_after_the_first():
  raw = {"conv_float32": {"precision": "float32", "epoch_wall_s": [9.0, 4.0, 5.0], "epoch_cpu_s": [8.0, 4.0, 4.5],
                          "train_loss": 0.030, "test_loss": 0.031},
         "float32": {"precision": "float32", "epoch_wall_s": [9.0, 3.0, 4.0], "epoch_cpu_s": [8.0, 3.5, 3.2],
                     "train_loss": 0.029, "test_loss": 0.030},
         "mixed_bfloat16": {"precision": "mixed_bfloat16", "epoch_wall_s": [1.0, 2.0, 8.0],
                            "epoch_cpu_s": [1.0, 2.5, 2.0], "train_loss": 0.029, "test_loss": 0.0305}}
  out = suite.summarize(raw, 1000, 1_000_000, PEAK)
  assert out["baseline"] == "conv_float32"
  assert out["variants"]["float32"]["best_epoch_cpu_s"] == 3.2  # the traced first epoch is left out
  assert out["speedup_wall"]["float32"] == pytest.approx(4.0 / 3.0)
  assert out["speedup_cpu"]["mixed_bfloat16"] == pytest.approx(4.0 / 2.0)
  assert out["float32_speedup_cpu_over_conv_float32"] == pytest.approx(4.0 / 3.2)
  assert out["test_loss_noise_floor"] == pytest.approx(0.001)
  assert out["mixed_bfloat16_test_loss_minus_float32"] == pytest.approx(0.0005)
  # 1000 images in 2 s, 6 FLOPs per multiply-add: 3 GFLOP/s of the bfloat16 peak (200)
  assert out["variants"]["mixed_bfloat16"]["achieved_gflops"] == pytest.approx(3.0)
  assert out["variants"]["mixed_bfloat16"]["fraction_of_peak"] == pytest.approx(0.015)


def test_tiny_run_on_digits_trains_every_variant():
  out = suite.run(dataset="digits", n=400, epochs=3, classifier_epochs=1, xla_steps=0)
  assert set(out["variants"]) == set(suite.VARIANTS)
  for name, figures in out["variants"].items():
    assert len(figures["epoch_cpu_s"]) == 3 and figures["images_per_cpu_s"] > 0
    # training lowers the loss by a margin in every variant
    assert figures["epoch_loss"][-1] < 0.8 * figures["epoch_loss"][0], (name, figures["epoch_loss"])
  assert out["image_layer_fwd_bwd_ms"]["float32"]["SpaceToDepthConv2D"] > 0


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="unknown decoder variants"):
    suite.run(dataset="digits", variants="float16")
