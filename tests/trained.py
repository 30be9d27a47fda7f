"""Artifacts trained once per test run and shared by every test file that needs them.

Bazel runs each test file in its own process (two at a time), so a module-scoped fixture alone would
train the same digits LeNet once per file. `artifact(name, build, **params)` keeps what `build(folder)`
writes in a cache folder shared by every process of the run: the first caller builds it under a file
lock while the others wait, and later callers read the finished folder. The key is the name, the
params, the CPU's vector ISA, TensorFlow's thread count and a hash of the code that trains (lad_tf/, pipelines/ and these helpers),
so changed code never reads a stale model.

The folder is $LAD_TF_TEST_CACHE (`make test` points it at a fresh .test-cache/ per run); without it,
a temporary folder of this process (`pytest tests/` in one process still shares across files).
"""
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time

CACHE_ENV = "LAD_TF_TEST_CACHE"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CODE = ("lad_tf", "pipelines", os.path.join("tests", "trained.py"), os.path.join("tests", "digits_models.py"))


@functools.lru_cache(maxsize=1)
def cache_root():
  root = os.environ.get(CACHE_ENV) or tempfile.mkdtemp(prefix="lad_tf-test-cache-")
  os.makedirs(root, exist_ok=True)
  return root


@functools.lru_cache(maxsize=1)
def code_hash():
  """sha256 over the Python sources that train the cached artifacts."""
  digest = hashlib.sha256()
  for entry in _CODE:
    path = os.path.join(REPO, entry)
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(".py"))
    for name in files:
      digest.update(os.path.relpath(name, REPO).encode())
      with open(name, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _cpu_flags():
  """/proc/cpuinfo's flags, read here rather than through lad_tf.runtime.execution, which imports TensorFlow."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
  except OSError:
    return set()


def _vector_isa():
  """Float32 kernels sum in another order on AVX2 than on AVX-512: a model trained on one is not
  the other's (tests/test_lad.py pins figures per ISA)."""
  flags = _cpu_flags()
  return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "unknown"


_waited = [0.0]
_built = []  # (name, seconds) of every artifact this process built


def waited_s():
  """Seconds this process has spent waiting for another process to build a shared artifact."""
  return _waited[0]


def builds():
  """(name, seconds) of the shared artifacts this process built, in order."""
  return list(_built)


@contextlib.contextmanager
def _locked(path):
  with open(path, "w") as handle:
    start = time.perf_counter()
    fcntl.flock(handle, fcntl.LOCK_EX)
    _waited[0] += time.perf_counter() - start
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def artifact(name, build, **params):
  """The folder `build(folder)` filled for (name, params), built at most once per test run."""
  # TensorFlow's thread count changes float sums as the ISA does (tests/BUILD sets it per file)
  threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "default")
  key = json.dumps({"params": params, "isa": _vector_isa(), "threads": threads, "code": code_hash()},
                   sort_keys=True)
  final = os.path.join(cache_root(), f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
  if os.path.isdir(final):
    return final
  with _locked(final + ".lock"):
    if not os.path.isdir(final):  # another process may have built it while this one waited
      partial = final + ".partial"
      shutil.rmtree(partial, ignore_errors=True)
      os.makedirs(partial)
      start = time.perf_counter()
      build(partial)
      _built.append((name, time.perf_counter() - start))
      with open(os.path.join(partial, "key.json"), "w") as f:
        f.write(key)
      os.replace(partial, final)
  return final


def copy_of(name, build, destination, **params):
  """A private copy of a shared artifact folder at `destination` (for tests that change what they get)."""
  shutil.copytree(artifact(name, build, **params), destination, dirs_exist_ok=True)
  return destination


def keras_model(name, train, **params):
  """A Keras model trained by `train(**params)` once per test run, loaded fresh for each caller."""
  from lad_tf.runtime.files import load_model

  def build(folder):
    train(**params).save(os.path.join(folder, "model.keras"))
  return load_model(os.path.join(artifact(name, build, **params), "model.keras"))
