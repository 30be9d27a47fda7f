"""Command-line flags derived from a config dataclass, so the dataclass alone says each default.

A field becomes one absl flag: its type picks the kind (bool, int, float, str; a tuple or sequence is a
comma-separated list), `metadata["choices"]` (the library's tuple of accepted values) makes it an
enum, `metadata["help"]` is its --help text and `metadata["flag"]` its name where the command line
calls it differently (None: not on the command line). A whole-number field is a count: its flag (or
each item of its list) is at least `metadata["min"]`, 1 unless said, so --classifier_epochs=-1 is a usage
error before any work rather than a run that trains nothing. `values` reads the parsed flags back as the
dataclass's keyword arguments, so a new field reaches the command line without touching a pipeline.
"""
import collections.abc
import dataclasses
import typing

from absl import app
from absl import flags

# The flags `define` makes belong to its caller (listed in that command's --help), not to this module.
flags.disclaim_key_flags()

LIST_ITEMS = {int: "whole numbers", float: "numbers", str: "names"}  # what a list flag's items must be


def flag_name(field):
  """The field's flag, or None for a field kept off the command line."""
  return field.metadata.get("flag", field.name)


def field_kind(config_class, field):
  """(scalar type, is_list, item type) of a field's annotation, Optional[...] unwrapped."""
  hint = typing.get_type_hints(config_class)[field.name]
  if typing.get_origin(hint) is typing.Union:
    hint = next(a for a in typing.get_args(hint) if a is not type(None))
  origin = typing.get_origin(hint)
  if origin in (tuple, list, collections.abc.Sequence):
    return None, True, typing.get_args(hint)[0]
  return hint, False, None


def flag_default(field):
  """The flag's default in absl's terms: the field's default (a list flag's as strings)."""
  default = field.default
  if isinstance(default, (tuple, list)):
    return [str(v) for v in default]
  return default


def flagged_fields(config_class, exclude=()):
  """The fields of `config_class` on the command line, in declaration order."""
  return [f for f in dataclasses.fields(config_class) if f.name not in exclude and flag_name(f)]


def define(config_class, exclude=(), flag_values=flags.FLAGS):
  """Defines one flag per field of `config_class` but those in `exclude`, which the caller defines
  (shared flags such as --dataset, or composed configs)."""
  definers = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}
  for field in flagged_fields(config_class, exclude):
    if "help" not in field.metadata:
      raise TypeError(f"{config_class.__name__}.{field.name} has no help: give it metadata "
                      f"{{'help': ...}}, or {{'flag': None}} to keep it off the command line")
    name, text, default = flag_name(field), field.metadata["help"], flag_default(field)
    scalar, is_list, item = field_kind(config_class, field)
    low = field.metadata.get("min", 1)
    if "choices" in field.metadata:
      flags.DEFINE_enum(name, default, list(field.metadata["choices"]), text, flag_values=flag_values)
    elif is_list:
      flags.DEFINE_list(name, default, text, flag_values=flag_values)
      if item is int:
        _require_counts(name, low, flag_values)
    elif scalar is int:
      flags.DEFINE_integer(name, default, text, lower_bound=low, flag_values=flag_values)
    elif scalar in definers:
      definers[scalar](name, default, text, flag_values=flag_values)
    else:
      raise TypeError(f"{config_class.__name__}.{field.name}: no flag kind for {scalar}")


def _require_counts(name, low, flag_values):
  def check(raw):
    try:
      return all(int(v) >= low for v in raw or ())
    except ValueError:
      return False
  flags.register_validator(name, check, f"--{name} takes comma-separated whole numbers >= {low}",
                           flag_values=flag_values)


def _items(name, raw, item):
  try:
    return tuple(item(v) for v in raw)
  except ValueError:
    raise app.UsageError(f"--{name} takes comma-separated {LIST_ITEMS[item]}, got '{','.join(raw)}'")


def values(config_class, flag_values, exclude=()):
  """The keyword arguments of `config_class` that its flags give (list flags as tuples; an empty list
  is None where the field may be None, as in 'the dataset spec's')."""
  out = {}
  for field in flagged_fields(config_class, exclude):
    name = flag_name(field)
    value = flag_values[name].value
    _, is_list, item = field_kind(config_class, field)
    if is_list:
      optional = field.default is None
      value = None if optional and not value else _items(name, value or (), item)
    out[field.name] = value
  return out
