"""Start `python -m serving.server` as a subprocess on free loopback ports (tests, benchmarks).

A subprocess, not a thread: the server then has its own interpreter lock, as in production, so
load figures and crash isolation are real.
"""
import os
import signal
import socket
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(host="127.0.0.1"):
  """A port the kernel just handed out for `host` (bind port 0, read it, release it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind((host, 0))
    return sock.getsockname()[1]


def process_rss_mb(pid):
  """Resident memory of process `pid` in MiB, from /proc (Linux)."""
  with open(f"/proc/{pid}/statm") as f:
    resident_pages = int(f.read().split()[1])
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def process_cpu_seconds(pid):
  """CPU time (user + system) of process `pid` and of its live descendants, from /proc (Linux): a
  server's detector or helper processes count toward what the server costs."""
  tick = os.sysconf("SC_CLK_TCK")
  total, todo = 0.0, [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f"/proc/{p}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick
      for task in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{task}/children") as f:
          todo.extend(int(c) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError):  # It ended meanwhile.
      continue
  return total


class ServerProcess:
  """`serving.server` in a subprocess; use as a context manager or call stop()."""

  def __init__(self, model_base_path, *, model_name="lad", poll_seconds=0.2, extra_flags=(),
               log_path=None, host="127.0.0.1"):
    self.host = host
    self.grpc_port = free_port(host)
    self.rest_port = free_port(host)
    while self.rest_port == self.grpc_port:
      self.rest_port = free_port(host)
    self.model_name = model_name
    self.args = [
        sys.executable, "-m", "serving.server",
        f"--model_name={model_name}", f"--model_base_path={model_base_path}",
        f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", f"--host={host}",
        f"--file_system_poll_wait_seconds={poll_seconds}", *extra_flags,
    ]
    self.log_path = log_path
    self.process = None
    self._log = None

  @property
  def grpc_address(self):
    return f"{self.host}:{self.grpc_port}"

  @property
  def rest_address(self):
    return f"{self.host}:{self.rest_port}"

  def start(self, timeout=120.0):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
    self.process = subprocess.Popen(self.args, cwd=REPO_ROOT, env=env, stdout=self._log,
                                    stderr=subprocess.STDOUT)
    self.wait_ready(timeout)
    return self

  def wait_ready(self, timeout):
    """Until the gRPC port answers GetModelStatus for some version (or the process died)."""
    from serving import client as client_lib

    deadline = time.time() + timeout
    with client_lib.PredictClient(self.grpc_address, model_name=self.model_name,
                                  timeout=2.0) as probe:
      while time.time() < deadline:
        if self.process.poll() is not None:
          raise RuntimeError(f"serving.server exited with {self.process.returncode}; "
                             f"see {self.log_path or 'its output'}")
        try:
          probe.status()
          return
        except client_lib.RequestError as e:
          if e.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return  # It answers: a refusal is an answer.
        time.sleep(0.2)
    self.stop()
    raise TimeoutError(f"serving.server did not answer within {timeout:.0f}s")

  def rss_mb(self):
    """Resident memory of the server process in MiB (Linux /proc)."""
    return process_rss_mb(self.process.pid)

  def alive(self):
    return self.process is not None and self.process.poll() is None

  def stop(self, timeout=15.0):
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      try:
        self.process.wait(timeout)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(5)
    if self._log not in (None, subprocess.DEVNULL):
      self._log.close()
      self._log = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
