"""The one entry every command line goes through (`pipelines.*`, `serving.client`, `serving.server`).

`run(main)` parses the flags, answers --help, and ends every expected error as one `error: ...` line
on stderr, so no command needs a try/except of its own. Exit statuses:

- 0: done, and --help;
- 1: an expected error, whose message names the problem and the way out (`LadError`: a missing
  dataset or file, an unreachable server, a directory that cannot be written);
- 2: a usage error (an unknown flag, a bad or non-positive value, a stray argument, settings that do
  not fit together: absl's flag errors, `app.UsageError`, `ConfigError`).

Anything else is a bug and keeps its traceback; --verbose shows the traceback of an expected error too.
"""
import os
import re
import sys

from absl import app
from absl import flags

from lad_tf import cli_help
from lad_tf.errors import ConfigError, LadError

EXIT_ERROR = 1
EXIT_USAGE = 2

# absl's help flags print and exit 1; these print the command's own grouped help and exit 0
HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
FULL_HELP_ARGS = ("--helpfull", "-helpfull")


def run(main, *, help_groups=(), arguments=None):
  """Runs `main(argv)` as the command line: absl.app.run with the exits above.

  `help_groups`: (title, flag names) pairs that --help lists in that order (see `cli_help.render`).
  `arguments`: the name of the positional arguments `main` takes (e.g. "SUITE"); by default a command
  takes none and a stray one is a usage error, not silently ignored.
  """
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Show the Python traceback of an expected error (a missing dataset, "
                      "a corrupt file, settings that do not fit together) instead of its one-line message.")
  app.run(lambda argv: _guarded(main, argv), flags_parser=lambda argv: _parse(argv, help_groups, arguments))


def fail(message, usage=False):
  """Ends the command with one line on stderr: status 2 for a usage error, 1 otherwise."""
  hint = " (see --help)" if usage else ""
  print(f"error: {' '.join(str(message).split())}{hint}", file=sys.stderr)
  sys.exit(EXIT_USAGE if usage else EXIT_ERROR)


def _parse(argv, help_groups, arguments):
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if any(arg in HELP_ARGS for arg in args):
    print(cli_help.render(flags.FLAGS, help_groups, usage=_usage_line(argv[0], arguments)))
    sys.exit(0)
  if any(arg in FULL_HELP_ARGS for arg in args):
    app.usage(writeto_stdout=True, exitcode=0)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    required = re.search(r"Flag (--\w+) must have a value other than None", str(e))
    fail(f"{required[1]}=... is required" if required else e, usage=True)
  if arguments is None and len(rest) > 1:
    fail(f"unexpected argument '{rest[1]}': this command takes only --flag=value settings", usage=True)
  return rest


def _usage_line(program, arguments):
  command = sys.modules["__main__"].__spec__
  name = command.name if command is not None else os.path.basename(program)
  return f"usage: python -m {name} [--flag=value ...]{' ' + arguments if arguments else ''}"


def _guarded(main, argv):
  """main(argv), its expected errors turned into one line and an exit status."""
  try:
    return main(argv)
  except (app.UsageError, ConfigError) as e:
    if flags.FLAGS.verbose:
      raise
    fail(e, usage=True)
  except LadError as e:
    if flags.FLAGS.verbose:
      raise
    fail(f"{e} (--verbose shows the traceback)")
  except PermissionError as e:
    if flags.FLAGS.verbose:
      raise
    fail(f"permission denied: cannot write {e.filename}; choose a folder you can write to "
         f"(--verbose shows the traceback)")


def writable_dir(path, flag="--workdir"):
  """`path`, created if missing, or a LadError naming it and the flag that chooses another."""
  try:
    os.makedirs(path, exist_ok=True)
    writable = os.access(path, os.W_OK | os.X_OK)
    reason = "permission denied"
  except OSError as e:
    writable, reason = False, e.strerror or type(e).__name__
  if not writable:
    raise LadError(f"cannot write the directory {path} ({reason.lower()}): give {flag}=DIR in a folder "
                   f"you can write to")
  return path
