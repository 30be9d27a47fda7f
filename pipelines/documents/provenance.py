"""Where a figure comes from: the commits, commands, settings and wall time a run recorded, and the
commit of a committed benchmark JSON. The documents state these, never the commit at render time."""
import subprocess


def git_commit_of_file(repo, path):
  """The commit that last changed a committed file (a benchmark JSON's provenance)."""
  try:
    out = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", path], cwd=repo, capture_output=True,
                         text=True, timeout=30)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def commits_of(run, stated=None):
  """The commit(s) recorded when the run's steps started (run_info.json), never today's; `stated`
  (the operator's word, for a directory made without pipelines.reproduce) is labelled as such."""
  info = (run or {}).get("run_info") or {}
  seen = []
  for step in ("defend", "evaluate"):
    for attempt in (info.get(step) or {}).get("attempts", []):
      label = attempt.get("commit", "?") + (" (with uncommitted changes)" if attempt.get("dirty") else "")
      if label not in seen:
        seen.append(label)
  if seen:
    return ", ".join(seen)
  if stated:
    return f"{stated} (stated at render time by the operator; the run did not record it)"
  return "not recorded (the run was not started by pipelines.reproduce)"


def commands_of(run):
  info = (run or {}).get("run_info") or {}
  out = []
  for step in ("defend", "evaluate"):
    command = (info.get(step) or {}).get("command")
    if command:
      out.append(" ".join(command))
  return out


def configuration_lines(run):
  full = ((run.get("config") or {}).get("full") or {})
  keys = ("dataset", "architecture", "classifier_epochs", "generator_epochs", "decoder_loss_epochs",
          "calibration_per_class", "attention", "eps_grid", "normal", "target", "fine_tune_mode",
          "fine_tune_eps", "fine_tune_schedule", "fine_tune_epochs")
  defend = ", ".join(f"{k}={full[k]}" for k in keys if k in full)
  defend += f", seed={(run.get('config') or {}).get('seed')}"
  lines = [f"defend (config.json): {defend}"]
  report = run.get("report")
  if report:
    c = report.get("config", {})
    keys = ("attacks", "epsilons", "n_per_class", "m_per_class", "baselines", "baseline_eps", "attack_baselines",
            "transfer", "blackbox_epochs", "blackbox_train_examples", "lad_sweep", "pgd_iter", "apgd_iter",
            "cw_binary_steps", "cw_iterations", "sanity_n", "attack_options", "seed")
    lines.append("evaluate (report.json): " + ", ".join(f"{k}={c[k]}" for k in keys if k in c))
    tune = c.get("fine_tune") or {}
    if tune:
      lines.append("fine-tuning of the baselines and the control: " + ", ".join(
          f"{k}={tune[k]}" for k in ("epochs", "batch_size", "learning_rate", "momentum", "alpha") if k in tune))
  return lines


def wall_time(run):
  stages = run.get("stages") or {}
  total = sum(v for v in stages.values() if isinstance(v, (int, float)))
  report_total = ((run.get("report") or {}).get("timings_s") or {}).get("total")
  parts = [f"defend stages {total / 60:.1f} min" if stages else None,
           f"evaluation {report_total / 60:.1f} min" if report_total else None]
  return ", ".join(p for p in parts if p) or "not recorded"


def provenance(run, stated_commit=None):
  lines = [f"- Work directory: `{run['path']}`", f"- Git commit: {commits_of(run, stated_commit)}"]
  commands = commands_of(run)
  if commands:
    lines += ["- Commands:"] + [f"  `{c}`" for c in commands]
  else:
    lines.append("- Commands: not recorded (the run was not started by pipelines.reproduce); the settings "
                 "below are the work directory's own")
  lines += [f"- Configuration, {line}" for line in configuration_lines(run)]
  lines.append(f"- Wall time on this machine: {wall_time(run)}")
  return "\n".join(lines)


def run_line(run):
  """Where a companion run's figures come from: directory, commit, commands."""
  commands = "; ".join(f"`{c}`" for c in commands_of(run)) or "commands not recorded"
  return f"`{run['path']}`, git commit {commits_of(run)}, {commands}."
