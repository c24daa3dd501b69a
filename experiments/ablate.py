"""Runs every combination of swept config values, then tabulates them.

    python -m experiments.ablate --config configs/t2v.py:size=tiny \\
        --sweep model.activation=gelu_tanh,relu,sigmoid --sweep model.conditioning=joint,cross --workdir W

Each variant is the ordinary training command in its own workdir (`W/<key>=<value>,...`), so a finished variant
is skipped (its checkpoint is at the last step) and an interrupted one resumes. Afterwards `W/ablation.md` and
`W/ablation.csv` get one row per variant: final training loss, every `eval/*` metric of the last evaluation
(e.g. the validation-loss grid and probe accuracies), and training minutes. Extra `--config.<key>=<value>` flags
apply to every variant.
"""
import csv
import itertools
import json
import os
import subprocess
import sys

from absl import app, flags, logging

_CONFIG = flags.DEFINE_string("config", None, "Config file with its argument, e.g. configs/t2v.py:size=tiny.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "key=v1,v2,... ; repeat for a grid.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the variants' workdirs and the tables go.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_sweeps(sweeps: list[str]) -> list[tuple[str, list[str]]]:
  """['model.activation=relu,silu'] -> [('model.activation', ['relu', 'silu'])]."""
  out = []
  for sweep in sweeps:
    key, sep, values = sweep.partition("=")
    if not sep or not key.strip() or not values.strip():
      raise app.UsageError(f"--sweep {sweep!r}: expected key=value1,value2,...")
    out.append((key.strip(), [v.strip() for v in values.split(",") if v.strip()]))
  return out


def variants(sweeps: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
  """All combinations, in the order given."""
  keys = [k for k, _ in sweeps]
  return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in sweeps])]


def variant_name(variant: dict[str, str]) -> str:
  return ",".join(f"{k}={v}" for k, v in variant.items()) or "base"


def read_row(workdir: str) -> dict[str, float]:
  """Final loss, last eval metrics and training minutes from a run's metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  row: dict[str, float] = {}
  train = [m for m in lines if "loss" in m]
  if train:
    row["final_loss"] = train[-1]["loss"]
    row["steps"] = train[-1]["step"]
    row["minutes"] = train[-1].get("train_seconds", float("nan")) / 60.0
  evals = [m for m in lines if any(k.startswith("eval/") for k in m)]
  if evals:
    last_step = evals[-1]["step"]
    for m in evals:
      if m["step"] == last_step:
        row.update({k[len("eval/"):]: v for k, v in m.items() if k.startswith("eval/")})
  return row


def write_tables(workdir: str, rows: list[tuple[str, dict[str, float]]]) -> None:
  """ablation.csv and ablation.md with one row per variant (columns: the union of metrics, in first-seen order)."""
  columns: list[str] = []
  for _, row in rows:
    columns += [k for k in row if k not in columns]
  with open(os.path.join(workdir, "ablation.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["variant"] + columns)
    for name, row in rows:
      writer.writerow([name] + [row.get(c, "") for c in columns])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| variant | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
  lines += ["| " + name + " | " + " | ".join(fmt(row[c]) if c in row else "" for c in columns) + " |"
            for name, row in rows]
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


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
