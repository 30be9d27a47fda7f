"""Every command line ends an expected error with one message on stderr and a non-zero exit, without
a traceback; --verbose shows the traceback. Each case runs the real command in a subprocess."""
import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `python -m MODULE ARGS` with name resolution failing, as on a machine without internet, so the
# TFDS fallback fails at once (and never downloads, whatever this machine's network).
_OFFLINE_RUNNER = textwrap.dedent("""
    import runpy, socket, sys
    def no_dns(*args, **kwargs):
      raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    socket.getaddrinfo = no_dns
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def run_command(module, *args, home):
  env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
  env.update(HOME=str(home), PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-c", _OFFLINE_RUNNER, module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def assert_one_message(result, *fragments, code=1):
  assert result.returncode == code, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in last, last
  return last


def test_dataset_not_found(tmp_path):
  result = run_command("pipelines.defend", "--dataset=svhn", f"--workdir={tmp_path / 'w'}", home=tmp_path)
  assert_one_message(result, "dataset 'svhn' was not found", "--data_dir=DIR with train_32x32.mat",
                     "TensorFlow Datasets", "cannot resolve")
  assert not os.path.exists(tmp_path / "w" / "classifier")


def test_corrupt_file(tmp_path):
  data = tmp_path / "mnist"
  data.mkdir()
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"):
    with gzip.open(data / f"{name}.gz", "wb") as f:
      f.write(b"\x00\x00\x08\x03truncated")
  result = run_command("pipelines.train_classifier", "--dataset=mnist", f"--data_dir={data}",
                       f"--workdir={tmp_path / 'w'}", home=tmp_path)
  assert_one_message(result, "idx3-ubyte")


def test_bad_flag_combination(tmp_path):
  result = run_command("pipelines.defend", "--latent_layer=fc1", f"--workdir={tmp_path / 'w'}", home=tmp_path)
  assert_one_message(result, "--latent_layer", "--classifier")


def test_unreadable_classifier_file(tmp_path):
  model = tmp_path / "mine.keras"
  model.write_bytes(b"not a zip archive")
  result = run_command("pipelines.defend", f"--classifier={model}", f"--workdir={tmp_path / 'w'}",
                       home=tmp_path)
  assert_one_message(result, "cannot read the classifier", str(model), "model.save")


def test_missing_acgan_for_ga(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"dataset": "digits", "seed": 0, "calibration_per_class": 15}))
  result = run_command("pipelines.evaluate", f"--workdir={workdir}", "--attacks=fgsm,ga", home=tmp_path)
  assert_one_message(result, "no trained AC-GAN", "pipelines.train_acgan")


def test_usage_error_and_verbose_traceback(tmp_path):
  result = run_command("pipelines.evaluate", home=tmp_path)
  assert_one_message(result, "--workdir=DIR is required", code=2)
  result = run_command("pipelines.defend", "--latent_layer=fc1", "--verbose", f"--workdir={tmp_path / 'w'}",
                       home=tmp_path)
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_benchmark_set_values_are_literals_and_false_is_false():
  from absl import app
  from pipelines.benchmarks import suite_options
  assert suite_options(["bfloat16=false", "epochs=3", "only=nfgsm|pgd_at", "x=True"]) == {
      "bfloat16": False, "epochs": 3, "only": "nfgsm|pgd_at", "x": True}
  with pytest.raises(app.UsageError, match="key=value"):
    suite_options(["epochs"])


def test_attack_service_names_a_bad_budget_and_an_unreachable_server(tmp_path):
  result = run_command("pipelines.attack_service", "--images=digits", "--queries=1", home=tmp_path)
  assert_one_message(result, "--queries must be >= 2", code=2)
  result = run_command("pipelines.attack_service", "--images=digits", "--server=127.0.0.1:9",
                       f"--output={tmp_path / 'r.json'}", home=tmp_path)
  assert_one_message(result, "127.0.0.1:9 refused a first query", "check --server")
