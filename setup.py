"""Packaging for lad_tf: the library plus its command lines and serving code.

    pip install -e .               # library, pipelines, serving
    pip install -e ".[test,bench]" # + pytest and MkDocs (the docs site), + ART for the attack benchmarks
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    """The version declared in lad_tf/__init__.py (read, not imported)."""
    with open(os.path.join(HERE, "lad_tf", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', f.read(), re.M)
    if not match:
        raise RuntimeError("lad_tf/__init__.py does not define __version__")
    return match.group(1)


def read_long_description():
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


setup(
    name="lad_tf",
    version=read_version(),
    description=(
        "Harden Keras classifiers against adversarial examples before serving them "
        "with TensorFlow Serving (with the paper's Latent Adversarial Defence)"
    ),
    long_description=read_long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(
        include=[
            "lad_tf",
            "lad_tf.*",
            "pipelines",
            "pipelines.*",
            "serving",
            "serving.*",
        ]
    ),
    python_requires=">=3.10",
    install_requires=[
        # `tensorflow`, not `tensorflow-cpu`: tensorflow-serving-api requires it.
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "tensorflow-datasets>=4.9,<5",
        "cleverhans==4.0.0",
        "numpy>=1.26,<3",
        "absl-py>=1.0,<3",
        "tensorflow-serving-api>=2.21,<2.22",
        "scikit-learn>=1.3,<2",
        "matplotlib>=3.7,<4",
        # TFDS's DatasetBuilder imports importlib_resources (through etils) before any download, but
        # tensorflow-datasets 4.9 does not require it: without it every tfds.builder(...)
        # .download_and_prepare() fails with ModuleNotFoundError (tests/test_tfds.py checks this).
        "importlib_resources>=5.10",
    ],
    extras_require={
        # the test suite also builds the documentation site (tests/test_docs.py: mkdocs build --strict)
        "test": ["pytest>=7", "mkdocs>=1.6,<2", "mkdocstrings>=1.0,<2", "mkdocstrings-python>=2.0,<3",
                 "pymdown-extensions>=10"],
        # ART's AutoAttack imports multiprocess, which ART does not declare.
        "bench": ["adversarial-robustness-toolbox==1.20.1", "multiprocess>=0.70"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
