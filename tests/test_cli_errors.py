"""Every command line ends an expected error with one message on stderr, exit status 2 for a usage
error and 1 otherwise, without a traceback; --verbose shows the traceback. Each case runs the real
command in a process of its own (a fork of one that imported TensorFlow once: tests/commands.py);
none trains anything."""
import gzip
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `python -m MODULE ARGS` with name resolution failing, as on a machine without internet, so the
# TFDS fallback fails at once (and never downloads, whatever this machine's network).
_OFFLINE = textwrap.dedent("""
    import socket
    def no_dns(*args, **kwargs):
      raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    socket.getaddrinfo = no_dns
""")


def run_command(module, *args, home):
  env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
  env.update(HOME=str(home), PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  return commands.run(module, *args, prelude=_OFFLINE, cwd=REPO, env=env, timeout=300)


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
  assert_one_message(result, "--latent_layer", "--classifier", code=2)


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


# A directory nobody may create, root included (sysfs refuses new entries).
UNWRITABLE = "/sys/lad_tf_unwritable/w"


@pytest.mark.parametrize("module", ["pipelines.defend", "pipelines.train_classifier", "pipelines.train_acgan"])
def test_unwritable_workdir(tmp_path, module):
  result = run_command(module, f"--workdir={UNWRITABLE}", home=tmp_path)
  assert_one_message(result, f"cannot write the directory {UNWRITABLE}", "give --workdir=DIR")


def test_export_unwritable_base_path(tmp_path):
  workdir = tmp_path / "w"
  (workdir / "classifier").mkdir(parents=True)
  (workdir / "classifier" / "model.keras").write_bytes(b"not a zip archive")
  result = run_command("pipelines.export", f"--workdir={workdir}", f"--base_path={UNWRITABLE}", home=tmp_path)
  assert_one_message(result, f"cannot write the directory {UNWRITABLE}", "give --base_path=DIR")


def test_non_positive_epochs_train_nothing(tmp_path):
  result = run_command("pipelines.train_classifier", "--epochs=-1", f"--workdir={tmp_path / 'w'}", home=tmp_path)
  assert_one_message(result, "--epochs=-1", "not a positive integer", code=2)
  assert not os.path.exists(tmp_path / "w" / "classifier")


@pytest.mark.parametrize("module, args, fragments", [
    ("pipelines.defend", ["--no_such_flag=1"], ["Unknown command line flag 'no_such_flag'"]),
    ("pipelines.defend", ["--seed=abc"], ["--seed=abc"]),
    ("pipelines.defend", ["--classifier_epochs=0"], ["--classifier_epochs=0", "not a positive integer"]),
    ("pipelines.defend", ["--decoder_mse_epochs=3,-1"], ["whole numbers >= 1"]),
    ("pipelines.evaluate", ["--workdir=w", "--n_per_class=0"], ["--n_per_class=0"]),
    ("pipelines.export", [], ["--workdir=... is required"]),
    ("pipelines.benchmark", ["no_such_suite"], ["SUITE one of"]),
])
def test_usage_errors_exit_2(tmp_path, module, args, fragments):
  assert_one_message(run_command(module, *args, home=tmp_path), *fragments, code=2)


@pytest.mark.parametrize("module, args", [("pipelines.defend", []), ("pipelines.evaluate", ["--workdir=w"]),
                                          ("serving.server", []), ("serving.client", ["--images=x.png"])])
def test_stray_argument_is_refused(tmp_path, module, args):
  result = run_command(module, *args, "foo", home=tmp_path)
  assert_one_message(result, "unexpected argument 'foo'", code=2)


def test_server_refuses_a_missing_model_path(tmp_path):
  missing = tmp_path / "no_model"
  result = run_command("serving.server", f"--model_base_path={missing}", "--port=0", home=tmp_path)
  assert "ready" not in result.stdout
  assert_one_message(result, str(missing), "does not exist", code=2)


@pytest.fixture(name="image")
def fixture_image(tmp_path):
  path = tmp_path / "digit.npy"
  np.save(path, np.zeros((28, 28), np.uint8))
  return path


def test_client_missing_image(tmp_path):
  result = run_command("serving.client", f"--images={tmp_path / 'none.png'}", home=tmp_path)
  assert_one_message(result, "no such file or directory", "none.png", "--images=PATH")


@pytest.mark.parametrize("protocol", ["--rest", "--norest"])
def test_client_against_a_port_nothing_listens_on(tmp_path, image, protocol):
  from serving.launch import free_port
  server = f"127.0.0.1:{free_port()}"
  result = run_command("serving.client", f"--images={image}", f"--server={server}", protocol, "--timeout=2",
                       home=tmp_path)
  assert_one_message(result, f"nothing answers at {server}", "REST" if protocol == "--rest" else "gRPC",
                     "serving.server", "--server=HOST:PORT")


HELP_COMMANDS = ["pipelines.defend", "pipelines.train_classifier", "pipelines.train_acgan", "pipelines.evaluate",
                 "pipelines.export", "pipelines.reproduce", "pipelines.benchmark", "pipelines.attack_service",
                 "serving.client", "serving.server"]


@pytest.mark.parametrize("module", HELP_COMMANDS)
def test_help_exits_0_with_only_the_commands_flags(tmp_path, module):
  result = run_command(module, "--help", home=tmp_path)
  assert result.returncode == 0, result.stderr
  assert f"usage: python -m {module}" in result.stdout
  assert "--logtostderr" not in result.stdout and "--run_with_pdb" not in result.stdout  # absl's own
  assert "\nother:" not in result.stdout  # every flag of the command is in one of its groups


# The commands a user runs; their help must not wait for TensorFlow (seconds) to print.
USER_COMMANDS = ["pipelines.defend", "pipelines.evaluate", "pipelines.export", "pipelines.train_classifier",
                 "pipelines.train_acgan", "pipelines.attack_service", "serving.server", "serving.client"]

# Runs `python -m MODULE ARGS` and says on its last stderr line which of TensorFlow and Keras it imported.
_IMPORTS_RUNNER = textwrap.dedent("""
    import atexit, runpy, sys
    atexit.register(lambda: print("imported:", *[m for m in ("tensorflow", "keras") if m in sys.modules],
                                  file=sys.stderr))
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def run_importing(module, *args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-c", _IMPORTS_RUNNER, module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("module", USER_COMMANDS)
def test_help_prints_grouped_without_starting_tensorflow(module):
  """--help and -h print the command's grouped flags, --helpfull absl's list, all with exit 0 and neither
  TensorFlow nor Keras imported."""
  for arg in ("--help", "-h", "--helpfull"):
    result = run_importing(module, arg)
    assert result.returncode == 0, (arg, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == "imported:", (arg, result.stderr[-2000:])
    if arg == "--helpfull":  # absl's list, its own flags included
      assert "--[no]helpfull" in result.stdout, result.stdout
    else:
      assert f"usage: python -m {module}" in result.stdout
      assert re.search(r"\n\n[a-z][^\n]*:\n  --\w", result.stdout), result.stdout  # a group and its first flag


def test_defend_help_lists_what_a_user_needs_grouped(tmp_path):
  out = run_command("pipelines.defend", "--help", home=tmp_path).stdout
  headings = [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
  assert headings[:2] == ["data:", "defence:"] and headings[-1] == "execution:", headings
  assert "evaluation:" in headings, headings
  for flag in ("--dataset", "--data_dir", "--workdir", "--seed", "--precision", "--defence", "--autoattack"):
    assert f"\n  {flag} " in out or f"\n  {flag}:" in out, flag
  assert len(out.splitlines()) < 150


def test_server_help_keeps_flags_without_effect_in_one_paragraph(tmp_path):
  from serving.server import FLAGS_WITHOUT_EFFECT
  out = run_command("serving.server", "--help", home=tmp_path).stdout
  paragraph = out.split("accepted for tensorflow_model_server compatibility and ignored")[1].split("\n\n")[0]
  assert all(f"--{name}" in paragraph for name, _, _ in FLAGS_WITHOUT_EFFECT)
  assert "no effect (" not in out  # none of their one-entry-each help texts
  assert len(out.splitlines()) < 80


def test_an_existing_directory_without_write_permission_is_refused(tmp_path, monkeypatch):
  """The case of a user without root (root may write anywhere, so the permission is faked)."""
  from lad_tf import cli
  from lad_tf.errors import LadError
  monkeypatch.setattr(os, "access", lambda path, mode: False)
  with pytest.raises(LadError, match=f"cannot write the directory {tmp_path} \\(permission denied\\): give --base_path"):
    cli.writable_dir(str(tmp_path), "--base_path")


def test_a_permission_error_anywhere_is_one_line(tmp_path):
  script = ("from lad_tf import cli\n"
            "def main(argv):\n"
            "  raise PermissionError(13, 'Permission denied', '/srv/models/1')\n"
            "cli.run(main)\n")
  result = commands.run_code(script, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=60)
  assert_one_message(result, "permission denied", "/srv/models/1", "a folder you can write to")


def test_attack_service_names_a_bad_budget_and_an_unreachable_server(tmp_path):
  result = run_command("pipelines.attack_service", "--images=digits", "--queries=1", home=tmp_path)
  assert_one_message(result, "--queries must be >= 2", code=2)
  result = run_command("pipelines.attack_service", "--images=digits", "--server=127.0.0.1:9",
                       f"--output={tmp_path / 'r.json'}", home=tmp_path)
  assert_one_message(result, "127.0.0.1:9 refused a first query", "check --server")
