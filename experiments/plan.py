"""Plans a run without running it: compiles the train step ahead of time on abstract inputs (no parameters are
allocated) over a virtual mesh of the requested size, and prints per-device memory, FLOPs per step and the MFU a
given step time would mean.

    python -m experiments.plan --config configs/toy_ae.py:runlocal --mesh data=2,fsdp=4
    python -m experiments.plan --config configs/toy_ae.py --mesh fsdp=64 --chip H100 --step_time 1.5

The virtual mesh is made of CPU devices (`--xla_force_host_platform_device_count`), so the numbers are XLA's
per-device analysis of the partitioned program; on the real accelerator the same program's layout and fusion can
differ somewhat (a few percent to tens of percent on temporaries). XLA:CPU computes bfloat16 matmuls in float32 and
would then hoist a float32 copy of every scanned bfloat16 weight out of the layer loop, which accelerators, with
native bfloat16 matmuls, never make: the plan compiles without that hoisting (a frozen bfloat16 base's plan was 21
GiB too high with it, a float32 model's about 3% higher).

    python -m experiments.plan --config configs/cogvideox.py:size=5b,abstract,lora=64 --config.init_from=/base \
        --batch_sizes 1,2,4,6 --memory_gib 75.2      # says which batches fit in 75.2 GiB per device, and the largest
"""
import os

from absl import app, flags, logging

from vdm_jax.train import config as config_lib

_CONFIG = config_lib.define_config_flag("config", "Config file, e.g. configs/cogvideox.py:size=2b.")
_MESH = flags.DEFINE_string("mesh", "data=1", "Mesh sizes, e.g. 'data=2,fsdp=32,tensor=1,context=1' (no -1).")
_CHIP = flags.DEFINE_string("chip", "", "Chip for the peak rate (e.g. 'H100', 'TPU v5p'); see vdm_jax/train/flops.py.")
_STEP_TIME = flags.DEFINE_float("step_time", 0.0, "Seconds per step, to report the MFU it would mean.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", [], "Global batch sizes to plan (default: the config's).")
_MEMORY_GIB = flags.DEFINE_float("memory_gib", 0.0, "Usable memory per device in GiB (e.g. 75.2 for an 80 GB H100 "
                                 "at XLA_PYTHON_CLIENT_MEM_FRACTION=0.95): says which batches fit.")
flags.mark_flags_as_required(["config"])


def parse_mesh(text: str) -> dict[str, int]:
  """'data=2,fsdp=4' -> {'data': 2, 'fsdp': 4}."""
  sizes = {}
  for item in text.split(","):
    if item.strip():
      name, _, value = item.partition("=")
      sizes[name.strip()] = int(value)
  if any(v < 1 for v in sizes.values()):
    raise app.UsageError(f"--mesh {text!r}: give every size explicitly (>= 1); -1 has nothing to fill here.")
  return sizes


def main(argv):
  del argv
  mesh_sizes = parse_mesh(_MESH.value)
  num_devices = 1
  for v in mesh_sizes.values():
    num_devices *= v
  # Before the first use of the backend: a virtual device per mesh position.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={num_devices}"
                             " --xla_disable_hlo_passes=while-loop-invariant-code-motion")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from vdm_jax.train import plan  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  batch_sizes = [int(b) for b in _BATCH_SIZES.value] or [config.input.batch_size]
  fitting = []
  for batch_size in batch_sizes:
    report = plan.plan(config, mesh_sizes, batch_size=batch_size, chip=_CHIP.value, step_time=_STEP_TIME.value)
    print(plan.format_report(report, _MEMORY_GIB.value), flush=True)
    if plan.fits(report, _MEMORY_GIB.value):
      fitting.append(batch_size)
  if _MEMORY_GIB.value:
    print(f"largest global batch that fits in {_MEMORY_GIB.value:g} GiB per device: "
          f"{max(fitting) if fitting else 'none of ' + ','.join(map(str, batch_sizes))}")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
