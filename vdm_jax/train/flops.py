"""FLOPs per step, achieved TFLOP/s per device and model-FLOP utilisation (MFU) against a peak-rate table.

The FLOPs of a step are XLA's count for the compiled, partitioned program of one device (`cost_analysis`), so
they include everything the step computes (remat recomputation too); an experiment can report analytic model
FLOPs instead by overriding `Experiment.flops_per_step(batch_shapes)`.
"""
from __future__ import annotations

from typing import Any

import jax

# Dense peak TFLOP/s per chip by compute dtype (vendor figures, no sparsity). Matched as substrings of
# `device.device_kind`, first match wins; override with `config.train.peak_tflops`.
PEAK_TFLOPS = (
    ("TPU v6", {"bfloat16": 918.0, "float32": 918.0 / 4}),
    ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0 / 4}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0 / 4}),
    ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0 / 4}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0 / 4}),
    ("H200", {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),
    ("H100", {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
    ("L4", {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3}),
)


def peak_tflops(device: jax.Device, compute_dtype: str, override: float = 0.0) -> float | None:
  """Peak dense TFLOP/s of one device for `compute_dtype`, or None when unknown (e.g. CPUs) and not overridden."""
  if override > 0:
    return override
  kind = getattr(device, "device_kind", "")
  for name, rates in PEAK_TFLOPS:
    if name.lower() in kind.lower():
      return rates.get(compute_dtype, rates.get("float32"))
  return None


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs per device of a compiled (partitioned) computation, from XLA's cost analysis; None if unavailable."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def memory_summary(compiled: Any) -> dict[str, float]:
  """Per-device bytes of a compiled computation: arguments, outputs, temporaries, aliased (donated), and the peak
  estimate arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if m is None:
    return {}
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes,
         "generated_code": m.generated_code_size_in_bytes}
  out["peak_estimate"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  return {k: float(v) for k, v in out.items()}


def step_flops(experiment, batch_shapes, compiled, num_devices: int) -> tuple[float | None, str]:
  """(FLOPs per device per step, source): the experiment's analytic model FLOPs (`flops_per_step(batch_shapes)`,
  total over devices) when it defines them, else XLA's count of the compiled program.

  XLA counts the body of a loop once, so a model scanned over layers (the DiT, with `nn.scan`) is undercounted by
  about the number of layers; experiments with scanned models should define `flops_per_step`.
  """
  total = experiment.flops_per_step(batch_shapes)
  if total:
    return float(total) / num_devices, "analytic"
  return compiled_flops(compiled), "xla"


def transformer_flops(tokens: int, width: int, mlp_hidden: int, layers: int, *, context: int = 0,
                      kv_tokens: int | None = None) -> float:
  """Forward FLOPs of `layers` pre-norm transformer blocks on one sequence of `tokens` tokens: the dense layers
  (2 FLOPs per multiply-add: q, k, v, o and the MLP's two matrices) plus attention scores and values
  (4 S^2 D per layer). `context` adds cross-attention to `context` key tokens (q/o on the tokens, k/v on the
  context). Gated MLPs count their extra matrix through `mlp_hidden` (pass 1.5x the hidden width)."""
  kv = tokens if kv_tokens is None else kv_tokens
  per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp_hidden) + 4 * tokens * kv * width
  if context:
    per_layer += 2 * tokens * 2 * width * width + 2 * context * 2 * width * width + 4 * tokens * context * width
  return float(layers * per_layer)


def utilisation(flops_per_step: float | None, steps_per_sec: float, peak: float | None) -> dict[str, float]:
  """{'tflops_per_device': ..., 'mfu': ...} for a measured step rate (entries omitted when unknown)."""
  out = {}
  if flops_per_step:
    out["tflops_per_device"] = flops_per_step * steps_per_sec / 1e12
    if peak:
      out["mfu"] = out["tflops_per_device"] / peak
  return out
