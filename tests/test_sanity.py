"""Gradient-masking checks (lad_tf.evaluation.sanity) on a digits LeNet-5: the plain model passes, the same model
behind a wrapper that zeroes its input gradients (same outputs) is flagged."""
import warnings

import numpy as np
import pytest
import tensorflow as tf

from lad_tf.evaluation import sanity
from digits_models import plain_lenet, sample_images

EPS = 0.1


@pytest.fixture(scope="module")
def setup():
  model, data = plain_lenet()
  x, y = sample_images(data, 6)
  return model, x, y


def test_plain_model_passes(setup):
  model, x, y = setup
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a failed check would warn
    result = sanity.gradient_masking_checks(model, x, y, EPS)
  failed = [name for name, check in result.items() if isinstance(check, dict) and not check["passed"]]
  assert result["passed"], f"failed: {failed}"
  assert result["clean_accuracy"] > 0.9
  sweep = list(result["eps_sweep"]["accuracy"].values())
  assert len(sweep) == 4 and sweep[0] > sweep[-1] and sweep[-1] <= 0.1
  assert result["unbounded"]["accuracy"] == 0.0 and result["zero_gradient"]["fraction"] == 0.0


def test_zeroed_gradients_are_flagged(setup):
  model, x, y = setup
  masked = lambda z: model(tf.stop_gradient(z) + 0.0 * z)  # same logits, input gradient exactly 0
  np.testing.assert_allclose(masked(tf.constant(x[:4])), model(tf.constant(x[:4])), atol=1e-6)
  with pytest.warns(UserWarning) as record:
    result = sanity.gradient_masking_checks(masked, x, y, EPS, restarts=2)
  assert not result["passed"]
  assert result["zero_gradient"]["fraction"] == 1.0 and not result["zero_gradient"]["passed"]
  assert not result["unbounded"]["passed"] and not result["eps_sweep"]["passed"]
  messages = " ".join(str(w.message) for w in record)
  for name in ("zero_gradient", "unbounded", "eps_sweep"):
    assert f"'{name}' failed" in messages


def test_bad_input_is_named(setup):
  model, x, y = setup
  with pytest.raises(ValueError, match="eps > 0"):
    sanity.gradient_masking_checks(model, x, y, 0.0)
