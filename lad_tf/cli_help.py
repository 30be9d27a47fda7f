"""A command's --help: its own flags in the groups it names, without absl's flags.

absl's --help lists only the flags the main module itself defines (not the shared --dataset or
--workdir) and --helpfull adds absl's own flags, which no user of lad_tf sets. This help lists every
flag defined by lad_tf, pipelines or serving (or the command itself), grouped as the command says; a
flag the command left out of its groups still shows, under "other". Defining the flags imports no
TensorFlow, so the help prints at once.
"""
import sys
import textwrap

from absl import flags

OWN_PACKAGES = ("lad_tf", "pipelines", "serving")
WIDTH = 100


def brief(title, names):
  """A group listed as one paragraph of names, without their help (e.g. flags accepted but ignored)."""
  return (title, tuple(names), "brief")


def own_flags(flag_values):
  """{name: Flag} of the flags lad_tf's packages and the running command define."""
  out = {}
  for module, module_flags in flag_values.flags_by_module_dict().items():
    if module.split(".")[0] in OWN_PACKAGES or module == sys.argv[0]:
      out.update((flag.name, flag) for flag in module_flags)
  return out


def render(flag_values, groups, usage):
  """The help text: the command's docstring, `usage`, then each group of `groups` ((title, names) or
  `brief(title, names)`), then the command's flags no group names."""
  doc = (sys.modules["__main__"].__doc__ or "").strip()
  lines = [doc, "", usage] if doc else [usage]
  flags_ = own_flags(flag_values)
  listed = set()
  for title, names, *style in groups:
    present = [name for name in names if name in flags_]
    listed.update(present)
    if not present:
      continue
    lines += ["", f"{title}:"]
    if style:
      lines += textwrap.wrap(", ".join(f"--{name}" for name in present), WIDTH, initial_indent="  ",
                             subsequent_indent="  ")
    else:
      lines += [entry(flags_[name]) for name in present]
  rest = sorted(set(flags_) - listed)
  if rest:
    lines += ["", "other:"] + [entry(flags_[name]) for name in rest]
  lines += ["", "--helpfull also lists absl's own flags."]
  return "\n".join(lines)


def entry(flag):
  """One flag: name and default, then its help, wrapped and indented under the name."""
  name = f"--[no]{flag.name}" if isinstance(flag.default, bool) else f"--{flag.name}"
  default = _default(flag.default)
  head = f"{name} (default: {default})" if default is not None else name
  text = f"{head}: {flag.help}"  # absl starts an enum's help with its choices, <a|b>
  return textwrap.fill(text, WIDTH, initial_indent="  ", subsequent_indent="      ")


def _default(value):
  if value is None or value == [] or value == "":
    return None
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  return str(value)
