"""The test environment itself: the pinned stack and the project's packages import."""

import keras
import tensorflow as tf

import lad_tf


def test_lad_tf_has_a_version():
    assert isinstance(lad_tf.__version__, str) and lad_tf.__version__


def test_pinned_stack():
    # setup.py pins tensorflow 2.21.x and keras 3 (>=3.15).
    assert tf.__version__.startswith("2.21."), tf.__version__
    major, minor = (int(part) for part in keras.__version__.split(".")[:2])
    assert major == 3 and minor >= 15, keras.__version__


def test_project_packages_import():
    import lad_tf.models  # noqa: F401
    import pipelines  # noqa: F401
    import serving  # noqa: F401
