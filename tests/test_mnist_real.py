"""Real MNIST, the paper's own dataset, from the project's shared folder (../shared/data/mnist beside
the repository, present on CI): the IDX files load through the registry with MNIST's published counts."""
import os

import numpy as np
import pytest

from lad_tf.data import datasets

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
MNIST_DIR = os.environ.get("LAD_MNIST_DIR", os.path.join(os.path.dirname(REPO), "shared", "data", "mnist"))

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=f"no real MNIST at {MNIST_DIR} (set LAD_MNIST_DIR)")
def test_real_mnist_loads_with_published_counts():
  data = datasets.load("mnist", data_dir=MNIST_DIR)
  assert data.source == "local"
  assert data.train.x.shape == (60000, 28, 28, 1) and data.test.x.shape == (10000, 28, 28, 1)
  assert np.bincount(data.train.y).tolist() == TRAIN_COUNTS
  assert np.bincount(data.test.y).tolist() == TEST_COUNTS
  assert data.train.x.dtype == np.float32 and data.train.x.min() == 0.0 and data.train.x.max() == 1.0
  # MNIST digits are centred by mass in the 28x28 frame: the outer 2-pixel border is almost empty
  border = np.concatenate([data.test.x[:, :2].ravel(), data.test.x[:, -2:].ravel()])
  assert border.mean() < 0.01 < data.test.x.mean()
