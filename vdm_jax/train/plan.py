"""Ahead-of-time planning of a train step: per-device memory and FLOPs over a mesh, with nothing allocated."""
from __future__ import annotations

import types
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from vdm_jax.parallel import sharding
from vdm_jax.train import flops as flops_lib
from vdm_jax.train import loop
from vdm_jax.train import setup as setup_lib
from vdm_jax.train.state import make_optimizer, make_schedule


def plan(config: ml_collections.ConfigDict, mesh_sizes: dict[str, int], *, batch_size: int | None = None,
         chip: str = "", step_time: float = 0.0) -> dict[str, Any]:
  """Compiles the train step of `config` over a mesh of `mesh_sizes` on abstract inputs; returns the analysis."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.update(mesh_sizes)
  batch_size = batch_size or config.input.batch_size
  config.input.batch_size = batch_size
  run = setup_lib.setup(config)
  mesh, rules, experiment = run.mesh, run.rules, run.experiment
  shapes = setup_lib.batch_shapes(run, batch_size)
  tx, schedule = make_optimizer(config), make_schedule(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    _, abstract_state, state_shardings = loop.state_initializer(experiment, tx, shapes, mesh, rules)
    abstract_frozen = experiment.frozen_params(abstract=True)
    frozen_shardings = sharding.logical_shardings(abstract_frozen, mesh, rules) if abstract_frozen else {}
    compiled = loop.compile_train_step(experiment, tx, schedule, config, mesh, abstract_state, state_shardings,
                                       shapes, sharding.strip_boxes(abstract_frozen), frozen_shardings)
  flops, flops_source = flops_lib.step_flops(experiment, shapes, compiled, mesh.size)
  peak = flops_lib.peak_tflops(types.SimpleNamespace(device_kind=chip), config.train.compute_dtype,
                               config.train.peak_tflops)
  report = {"experiment": config.experiment, "mesh": dict(mesh.shape), "devices": mesh.size,
            "global_batch": batch_size, "per_device_batch": batch_size / mesh.size,
            "per_shard_batch": batch_size / (mesh.shape["data"] * mesh.shape["fsdp"]),
            "params": sum(x.size for x in jax.tree.leaves(abstract_state.params)),
            "memory_bytes": flops_lib.memory_summary(compiled), "flops_per_device": flops,
            "flops_source": flops_source, "chip": chip,
            "peak_tflops": peak}
  if step_time > 0:
    report.update(flops_lib.utilisation(flops, 1.0 / step_time, peak))
  return report


def fits(r: dict[str, Any], memory_gib: float) -> bool:
  """Whether the plan's peak estimate per device is within `memory_gib` (0: no limit given, never fits)."""
  return memory_gib > 0 and r["memory_bytes"]["peak_estimate"] <= memory_gib * 2**30


def format_report(r: dict[str, Any], memory_gib: float = 0.0) -> str:
  """A few readable lines; with `memory_gib`, whether the peak fits in that much per device."""
  gib = {k: f"{v / 2**30:.3f}" for k, v in r["memory_bytes"].items()}
  lines = [f"{r['experiment']}: {r['params'] / 1e6:.2f}M params, mesh {r['mesh']} ({r['devices']} devices), "
           f"global batch {r['global_batch']} ({r['per_device_batch']:g} per device, {r['per_shard_batch']:g} per "
           "data-parallel shard)",
           f"  memory per device (GiB): {gib}",
           f"  FLOPs per device per step: {r['flops_per_device'] or 0:.4g} ({r['flops_source']})"]
  if memory_gib > 0:
    peak = r["memory_bytes"]["peak_estimate"] / 2**30
    lines.append(f"  {'fits' if fits(r, memory_gib) else 'does not fit'} in {memory_gib:g} GiB per device "
                 f"(peak {peak:.1f} GiB)")
  if "tflops_per_device" in r:
    mfu = f", MFU {r['mfu']:.1%} of {r['peak_tflops']} TFLOP/s ({r['chip']})" if "mfu" in r else ""
    lines.append(f"  at the given step time: {r['tflops_per_device']:.3f} TFLOP/s per device{mfu}")
  return "\n".join(lines)
