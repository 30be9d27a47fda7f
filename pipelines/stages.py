"""Stages of the command lines that sit above the library: export for TF Serving.

lad_tf never imports serving: the defend command runs the library's stages (lad_tf.run.defend), then
this export stage, run and keyed like the others (WorkDir.run_stage: the defended model's fingerprint
and the export settings), so a re-run exports nothing new and a changed defence exports a new version. The model
card carries the defence's name and the robustness stage's AutoAttack figures (defended and original,
same images).
"""
import logging
import os

from lad_tf.evaluation.model_card import card_of_defend_metrics
from lad_tf.run import defend
from lad_tf.runtime.files import read_json, write_json

log = logging.getLogger("lad_tf")


def export_stage(run, metrics, export_base=None, model_name="lad"):
  """Exports DIR/defended/model.keras as the next SavedModel version under export_base (default
  DIR/export) unless the same defended model was exported there already; returns the version path.
  A stage like the library's (DIR/exported/, keyed on the defended model's fingerprint, the robustness
  stage's when the card quotes it, and the export settings), run by the same WorkDir.run_stage."""
  work = run.work
  base = export_base or work.path("export")
  settings = {"defended": work.stage_fingerprint("defended"), "base": os.path.abspath(base),
              "model_name": model_name,
              **({"robustness": work.stage_fingerprint("robustness")}
                 if metrics["defended"].get("robust_accuracy") is not None else {})}
  record = work.path("exported", "export.json")
  gone = not os.path.isdir(read_json(record, {}).get("path", ""))  # a deleted version is exported again
  folder = work.run_stage("exported", settings, lambda out: _export(run, metrics, base, model_name, out),
                          force=gone, outputs=("export.json",))
  path = read_json(os.path.join(folder, "export.json"))["path"]
  run.say(f"export: {path}")
  return path


def _export(run, metrics, base, model_name, out):
  from serving import export as serving_export
  work = run.work
  card = card_of_defend_metrics(metrics, run.spec.class_names)
  report = read_json(work.path("evaluation", "report.json"))
  if report:  # pipelines.evaluate's rows, when it ran on this work directory
    card["robustness"] = report.get("rows")
  path = serving_export.export_classifier(work.model("defended"), base, sample_images=run.evaluation.x[:16],
                                          model_name=model_name, model_card=card)
  write_json(os.path.join(out, "export.json"), {"path": path})


def run_defend(workdir, config=defend.DefendConfig(), export=True, export_base=None, model_name="lad",
               progress=None, stop_after=None, plan_batches=0):
  """The defend command: the plan (each stage's estimated time from `plan_batches` timed batches of
  its pieces, printed; 0: none), every library stage (up to stop_after), then (on the chief, when the
  defended model exists) the export stage; returns metrics.json's content, with "export_path" when
  exported."""
  run = defend.DefendRun(workdir, config, progress)
  try:
    if plan_batches and run.chief:
      _, lines = run.plan(plan_batches)
      print("\n".join(lines), flush=True)
    metrics = run.run(stop_after)
    if export and run.chief and stop_after in (None, "defended"):
      metrics["export_path"] = export_stage(run, metrics, export_base, model_name)
      write_json(run.work.path("metrics.json"), metrics)
    return metrics
  finally:
    run.close()
