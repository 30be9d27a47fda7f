"""A stage of a run declares what it reads, what its content depends on and what it writes (TFX's
idea): the fingerprints that decide what reruns, and the stages a run needs, are derived from those
declarations, never kept in a table beside them. The work directory (lad_tf.run.workdir) is the one
cache: `WorkDir.run_stage` runs a stage unless its folder holds the current fingerprint."""
import dataclasses
from typing import Callable, Tuple

from lad_tf.runtime.files import fingerprint

_NOTHING = lambda config: ()
_NO = lambda config: False


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage.

  name: its folder in the work directory.
  run: run(context, out) writes the stage's files into the folder `out`.
  settings: settings(config, spec) -> dict: what its content depends on, its inputs aside.
  inputs: inputs(config) -> the names of the stages whose content it reads under `config`.
  wanted: wanted(config) -> whether a run must make it even when no wanted stage reads it.
  outputs: the files it must leave in its folder (checked when it finishes).
  """
  name: str
  run: Callable
  settings: Callable
  inputs: Callable = _NOTHING
  wanted: Callable = _NO
  outputs: Tuple[str, ...] = ()


def fingerprint_settings(stages, config, spec):
  """{stage name: its settings plus the fingerprints of its inputs' settings}, so a changed setting
  reruns the stage it belongs to and every stage downstream, and nothing else. `stages` come in an
  order where inputs precede the stages reading them."""
  out = {}
  for stage in stages:
    inputs = stage.inputs(config)
    missing = [name for name in inputs if name not in out]
    if missing:
      raise ValueError(f"stage {stage.name} reads {missing}, which are not declared before it")
    out[stage.name] = {**stage.settings(config, spec), **{name: fingerprint(out[name]) for name in inputs}}
  return out


def needed(stages, config):
  """The names of the stages a run under `config` makes: the wanted ones and, transitively, what they
  read; in the order of `stages`."""
  by_name = {stage.name: stage for stage in stages}
  todo = [stage.name for stage in stages if stage.wanted(config)]
  keep = set()
  while todo:
    name = todo.pop()
    if name not in keep:
      keep.add(name)
      todo.extend(by_name[name].inputs(config))
  return tuple(stage.name for stage in stages if stage.name in keep)
