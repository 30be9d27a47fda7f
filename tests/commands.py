"""Command lines run as processes without each paying TensorFlow's import.

`run(module, *args, env=..., cwd=...)` runs `python -m MODULE ARGS` in a child process of one server
process per test process. The server imports TensorFlow and Keras once (5 s of CPU each time on a
2-core EPYC, more than most commands take to fail) and forks a child for each command; the child runs
the module as `python -m` does (runpy, as __main__) with its own environment, working directory,
stdout and stderr, and its exit status is the command's. Everything the command imports beyond
TensorFlow and Keras (the command's module and its flags included) it imports itself, as a fresh process
would. `run_code(source)` runs `python -c SOURCE` the same way.
"""
import atexit
import json
import os
import subprocess
import sys
import tempfile
import textwrap

_SERVER = textwrap.dedent("""
    import atexit, json, os, signal, sys, traceback
    import numpy, tensorflow, keras  # what every command imports: once, here

    def child(request):
      signal.alarm(request["timeout"])  # a hung command dies as subprocess.run's timeout would end it
      os.chdir(request["cwd"])
      os.environ.clear()
      os.environ.update(request["env"])
      for fd, name, mode in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                             (2, request["stderr"], os.O_WRONLY)):
        os.dup2(os.open(name, mode), fd)
      sys.argv = ["-c"] + request["argv"]
      code = 0
      try:
        exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
      except SystemExit as e:  # what the interpreter does with it at exit
        if e.code is None or isinstance(e.code, int):
          code = e.code or 0
        else:
          print(e.code, file=sys.stderr)
          code = 1
      except BaseException:
        traceback.print_exc()
        code = 1
      try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
      finally:
        os._exit(code)

    for line in sys.stdin:
      request = json.loads(line)
      pid = os.fork()
      if pid == 0:
        child(request)
      _, status = os.waitpid(pid, 0)
      print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
""")

# `python -m MODULE ARGS` as the server's child runs it
_RUN_MODULE = textwrap.dedent("""
    import runpy, sys
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_server = []


def _start():
  if not _server:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=REPO, env=env)
    atexit.register(_stop, process)
    _server.append(process)
  return _server[0]


def _stop(process):
  process.stdin.close()  # the server's loop ends
  try:
    process.wait(timeout=30)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()


def run_code(source, *args, env=None, cwd=None, timeout=300):
  """`python -c SOURCE ARGS` in a forked child of the server: a CompletedProcess (text stdout and stderr)."""
  server = _start()
  with tempfile.TemporaryDirectory(prefix="lad_tf-command-") as folder:
    out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
    for name in (out, err):
      open(name, "w").close()
    request = {"code": source, "argv": [str(a) for a in args], "env": dict(os.environ if env is None else env),
               "cwd": str(cwd or os.getcwd()), "stdout": out, "stderr": err, "timeout": int(timeout)}
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    answer = server.stdout.readline()
    if not answer:
      raise RuntimeError(f"the command server died (exit status {server.wait()})")
    with open(out) as f, open(err) as g:
      return subprocess.CompletedProcess([sys.executable, "-c", source, *args], json.loads(answer), f.read(),
                                         g.read())


def run(module, *args, prelude="", **kwargs):
  """`python -m MODULE ARGS` in a forked child of the server (`prelude`: code run first, e.g. a patch)."""
  return run_code(prelude + _RUN_MODULE, module, *args, **kwargs)
