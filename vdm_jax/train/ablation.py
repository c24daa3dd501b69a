"""Ablation grids: variants from `key=v1,v2` sweeps, and their results tabulated from each run's metrics.jsonl.

The runner is `experiments/ablate.py`; this module holds the parts that are plain functions (and tested as such).
"""
from __future__ import annotations

import csv
import itertools
import json
import os


class SweepError(ValueError):
  """A --sweep argument is not `key=value1,value2,...`."""


def parse_sweeps(sweeps: list[str]) -> list[tuple[str, list[str]]]:
  """['model.activation=relu,silu'] -> [('model.activation', ['relu', 'silu'])]."""
  out = []
  for sweep in sweeps:
    key, sep, values = sweep.partition("=")
    if not sep or not key.strip() or not values.strip():
      raise SweepError(f"--sweep {sweep!r}: expected key=value1,value2,...")
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
