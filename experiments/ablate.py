"""Runs every combination of swept config values, then tabulates them.

    python -m experiments.ablate --config configs/t2v.py:size=tiny \\
        --sweep model.activation=gelu_tanh,relu,sigmoid --sweep model.conditioning=joint,cross --workdir W

Each variant is the ordinary training command in its own workdir (`W/<key>=<value>,...`), so a finished variant
is skipped (its checkpoint is at the last step) and an interrupted one resumes. Afterwards `W/ablation.md` and
`W/ablation.csv` get one row per variant: final training loss, every `eval/*` metric of the last evaluation
(e.g. the validation-loss grid and probe accuracies), and training minutes. Extra `--config.<key>=<value>` flags
apply to every variant.
"""
import os
import subprocess
import sys

from absl import app, flags, logging

from vdm_jax.train.ablation import parse_sweeps, read_row, variant_name, variants, write_tables

_CONFIG = flags.DEFINE_string("config", None, "Config file with its argument, e.g. configs/t2v.py:size=tiny.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "key=v1,v2,... ; repeat for a grid.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the variants' workdirs and the tables go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  extra = [a for a in argv[1:] if a.startswith("--config.")]
  unknown = [a for a in argv[1:] if not a.startswith("--config.")]
  if unknown or any("=" not in a for a in extra):
    raise app.UsageError(f"Unexpected arguments {unknown or extra}; overrides pass through as --config.<key>=<value>.")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = []
  for variant in variants(parse_sweeps(_SWEEP.value)):
    name = variant_name(variant)
    run_dir = os.path.join(_WORKDIR.value, name)
    cmd = [sys.executable, "-m", "experiments.train", "--config", _CONFIG.value, f"--workdir={run_dir}", *extra,
           *[f"--config.{k}={v}" for k, v in variant.items()]]
    logging.info("Variant %s: %s", name, " ".join(cmd))
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"Variant {name} failed (exit {result.returncode}); rerun the same command to resume.")
    rows.append((name, read_row(run_dir)))
  write_tables(_WORKDIR.value, rows)
  print(open(os.path.join(_WORKDIR.value, "ablation.md")).read())


def _parse_flags(argv):
  """Our flags as usual; `--config.<key>=<value>` overrides are passed through to every variant's command."""
  passthrough = [a for a in argv[1:] if a.startswith("--config.")]
  return flags.FLAGS([argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]) + passthrough


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=_parse_flags)
