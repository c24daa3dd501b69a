"""Runs every combination of swept config values, then tabulates them.

    python -m experiments.ablate --config configs/t2v.py:size=tiny \\
        --sweep model.activation=gelu_tanh,relu,sigmoid --sweep model.conditioning=joint,cross --workdir W

Each variant is the ordinary training command in its own workdir (`W/<key>=<value>,...`), so a finished variant
is skipped (its checkpoint is at the last step) and an interrupted one resumes. Afterwards `W/ablation.md` and
`W/ablation.csv` get one row per variant: final training loss, every `eval/*` metric of the last evaluation
(e.g. the validation-loss grid and probe accuracies), and training minutes. Extra `--config.<key>=<value>` flags
apply to every variant; they and the swept keys are checked against the config before anything runs.

Exit status: 0 when every variant finished; 75 (EX_TEMPFAIL, as experiments.train) when SIGTERM or SIGINT stopped
a variant (it saved a checkpoint; the same command resumes the grid); 1 on an error.
"""
import os
import signal
import subprocess
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vdm_jax.train import config as config_lib
from vdm_jax.train.ablation import SweepError, parse_sweeps, read_row, variant_name, variants, write_tables
from vdm_jax.train.loop import RunStopped

_CONFIG = config_lib.define_config_flag("config", "Config file with its argument, e.g. configs/t2v.py:size=tiny.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "key=v1,v2,... ; repeat for a grid.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the variants' workdirs and the tables go.")
flags.mark_flags_as_required(["config", "workdir"])


@flags.validator("sweep")
def _check_sweeps(sweeps):
  """The swept keys exist in the config (checked when flags are parsed, after --config): a typo fails at once."""
  try:
    config_lib.check_paths(_CONFIG.value, [key for key, _ in parse_sweeps(sweeps)])
  except (config_lib.ConfigError, SweepError) as e:
    raise flags.ValidationError(str(e)) from None
  return True


def run_variant(cmd: list[str]) -> tuple[int, str | None]:
  """(exit status, name of a stop signal this process got or None): runs `cmd`, passing SIGTERM on to it (a
  scheduler signals this process only); SIGINT (Ctrl-C) reaches it from the terminal on its own, so here it only
  marks the grid as stopped."""
  received = []
  proc = subprocess.Popen(cmd)

  def handle(signum, frame):
    del frame
    received.append(signal.Signals(signum).name)
    if signum == signal.SIGTERM:
      proc.send_signal(signum)

  previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    return proc.wait(), (received[0] if received else None)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def main(argv):
  del argv  # the --config.<key> overrides are parsed (and checked) by absl; the raw ones pass on to each variant
  extra = [a for a in sys.argv[1:] if a.startswith("--config.")]
  if any("=" not in a for a in extra):
    raise app.UsageError(f"Overrides {extra} pass through as --config.<key>=<value>.")
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = []
  for variant in variants(parse_sweeps(_SWEEP.value)):
    name = variant_name(variant)
    run_dir = os.path.join(_WORKDIR.value, name)
    cmd = [sys.executable, "-m", "experiments.train", "--config", config_arg, f"--workdir={run_dir}", *extra,
           *[f"--config.{k}={v}" for k, v in variant.items()]]
    logging.info("Variant %s: %s", name, " ".join(cmd))
    returncode, signal_name = run_variant(cmd)
    if returncode == RunStopped.exit_code or signal_name:
      logging.warning("Variant %s stopped (%s) before its last step: the grid is not finished; rerun the same "
                      "command to resume it.", name, signal_name or f"exit {returncode}")
      sys.exit(RunStopped.exit_code)
    if returncode != 0:
      raise RuntimeError(f"Variant {name} failed (exit {returncode}); rerun the same command to resume.")
    rows.append((name, read_row(run_dir)))
  write_tables(_WORKDIR.value, rows)
  print(open(os.path.join(_WORKDIR.value, "ablation.md")).read())


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
