"""The test environment itself: the pinned stack and the project's packages import."""

import keras
import tensorflow as tf

import lad_tf


def test_lad_tf_version_is_valid_and_matches_the_installed_package():
    from importlib import metadata

    from packaging.version import Version
    Version(lad_tf.__version__)  # raises InvalidVersion on anything pip would refuse
    try:
        installed = metadata.version("lad_tf")
    except metadata.PackageNotFoundError:  # run from a checkout that was never pip-installed
        return
    assert installed == lad_tf.__version__, (installed, lad_tf.__version__)


def test_pinned_stack():
    # setup.py pins tensorflow 2.21.x and keras 3 (>=3.15).
    assert tf.__version__.startswith("2.21."), tf.__version__
    major, minor = (int(part) for part in keras.__version__.split(".")[:2])
    assert major == 3 and minor >= 15, keras.__version__


def test_project_packages_import():
    import lad_tf.models  # noqa: F401
    import pipelines  # noqa: F401
    import serving  # noqa: F401
