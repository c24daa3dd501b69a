r"""vdm_jax against diffusers on one GPU, CogVideoX-2b/5b sizes in bf16, in one run within a time budget.

    PYTHONUNBUFFERED=1 python -m experiments.bench_gpu --out $OUT --budget_s 400     # on an H100/H200
    python -m experiments.bench_gpu --tiny --backend xla --out /tmp/bench_tiny         # a CPU dry run (minutes)

Measurements run in priority order, each job in its own subprocess (a crash or an out-of-memory in one framework
does not take the others down, and each framework has the GPU to itself; JAX without preallocation):
  1. diffusers pipeline (2b): one CFG step, T5 encode, VAE decode of 13x60x90 latents untiled and tiled;
  2. vdm_jax pipeline (2b, cuDNN attention): the same stages;
  3. vdm_jax 2B train step at batch 1 (no remat): seconds, TFLOP/s, MFU;
  4. attention alone at 17,776 tokens x 30 heads x 64: cuDNN vs XLA vs chunked (experiments.check_gpu_attention);
  5-6. end to end, 49x480x720, 50 DDIM steps with CFG: diffusers, then vdm_jax;
  7. train steps at larger batches (remat), 8. a vdm_jax step with XLA attention, 9. 5b steps;
  then variants: the train step at batch 1 with remat, and vdm_jax with XLA's Triton GEMMs off (cuBLAS only).
`--jobs` picks jobs by name (see JOBS) and runs them in its order. Every measurement is a JSON line on stdout and
in `<out>/results.jsonl` as soon as it exists; a job that would run past `--budget_s` is skipped (and reported so),
one that runs past its own cap is killed. JAX's persistent compilation cache (`--jax_cache`) lets later JAX jobs of
a run reuse earlier programs (at full size it is too large to carry between machines). See bench_gpu_jax and
bench_gpu_torch for each stage.
Results of an H200: docs/gpu_benchmarks.md.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time

from absl import app, flags

from experiments import bench_common
from experiments import bench_gpu_common as common

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "bench_gpu_out", "Folder for results.jsonl and summary.json.")
flags.DEFINE_float("budget_s", 400.0, "Seconds for the whole run; jobs that would start later are skipped.")
flags.DEFINE_list("jobs", [], "Job names to run (default: all, in priority order).")
flags.DEFINE_bool("tiny", False, "Tiny models and video (a CPU dry run of every code path).")
flags.DEFINE_string("backend", "cudnn", "vdm_jax attention backend of the main jobs ('xla' for a CPU dry run).")
flags.DEFINE_string("jax_cache", "/tmp/bench_gpu_jax_cache", "JAX persistent compilation cache folder.")
flags.DEFINE_integer("e2e_steps", 50, "Denoising steps of the end-to-end jobs.")

# XLA_FLAGS of the '_cublas' jobs: XLA's own Triton GEMMs off, so every matmul goes to cuBLAS (does JAX's matmul rate
# trail torch's because of them? docs/gpu_benchmarks.md).
CUBLAS = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}
DOTS = "--remat=dots_with_no_batch_dims_saveable"
# (name, worker module, arguments, cap in seconds at full size, extra environment). Order = priority.
JOBS = (
    ("torch_2b", "bench_gpu_torch", ["--size=2b", "--stages=step,t5,vae,vae_tiled"], 150, {}),
    ("jax_2b", "bench_gpu_jax", ["--job=pipeline", "--size=2b", "--stages=step,t5,vae"], 240, {}),
    ("jax_train_b1", "bench_gpu_jax", ["--job=train", "--batch=1", "--remat=none"], 150, {}),
    ("attention", "check_gpu_attention", ["--cases=1x17776", "--dtypes=bfloat16", "--repeats=5"], 90, {}),
    ("torch_2b_e2e", "bench_gpu_torch", ["--size=2b", "--stages=e2e"], 120, {}),
    ("jax_2b_e2e", "bench_gpu_jax", ["--job=pipeline", "--size=2b", "--stages=e2e"], 150, {}),
    ("jax_train_b2", "bench_gpu_jax", ["--job=train", "--batch=2", DOTS], 150, {}),
    ("jax_train_b4", "bench_gpu_jax", ["--job=train", "--batch=4", DOTS], 150, {}),
    ("jax_2b_xla", "bench_gpu_jax", ["--job=pipeline", "--size=2b", "--stages=step", "--backend=xla", "--lo=1",
                                     "--hi=2"], 150, {}),
    ("torch_5b", "bench_gpu_torch", ["--size=5b", "--stages=step"], 120, {}),
    ("jax_5b", "bench_gpu_jax", ["--job=pipeline", "--size=5b", "--stages=step"], 180, {}),
    ("jax_train_b1_dots", "bench_gpu_jax", ["--job=train", "--batch=1", DOTS], 150, {}),
    ("jax_2b_cublas", "bench_gpu_jax", ["--job=pipeline", "--size=2b", "--stages=step"], 150, CUBLAS),
    ("jax_train_b2_cublas", "bench_gpu_jax", ["--job=train", "--batch=2", DOTS], 150, CUBLAS),
    ("jax_2b_e2e_cublas", "bench_gpu_jax", ["--job=pipeline", "--size=2b", "--stages=e2e"], 150, CUBLAS),
)


def _command(module: str, args: list[str], deadline: float) -> list[str]:
  if module == "check_gpu_attention":
    tiny = ["--cases=1x300", "--dtypes=bfloat16", "--heads=2", "--repeats=1"]
    return bench_common.worker_command(f"experiments.{module}", tiny if FLAGS.tiny else args)
  if module == "bench_gpu_jax" and not any(a.startswith("--backend=") for a in args):
    args = args + [f"--backend={FLAGS.backend}"]
  if FLAGS.tiny:
    args = args + ["--tiny", "--lo=1", "--hi=2"]
  return bench_common.worker_command(f"experiments.{module}", args + [
      f"--deadline={deadline}", f"--e2e_steps={2 if FLAGS.tiny else FLAGS.e2e_steps}"])


def _run_job(name: str, command: list[str], timeout: float, results, env: dict) -> dict:
  """Runs one worker, echoing its output and appending its JSON lines to `results`; kills it after `timeout`."""
  start = time.time()
  print(f"=== {name}: {' '.join(command[2:])} (timeout {timeout:.0f} s)", flush=True)
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=dict(os.environ, **env))
  timer = threading.Timer(timeout, proc.kill)
  timer.start()
  rows = 0
  for line in proc.stdout:
    print(line, end="", flush=True)
    text = line.strip()
    if text.startswith(common.RESULT_PREFIX) or (text.startswith("{") and '"backend"' in text and '"length"' in text):
      row = dict(json.loads(text), job=name, **env)
      results.write(json.dumps(row) + "\n")
      results.flush()
      rows += 1
  proc.wait()
  timer.cancel()
  seconds = time.time() - start
  status = "ok" if proc.returncode == 0 else ("killed at timeout" if seconds >= timeout - 1 else
                                               f"exit {proc.returncode}")
  return {"job": name, "status": status, "seconds": seconds, "rows": rows}


def _environment() -> dict:
  env = {"python": platform.python_version(), "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
  try:
    env["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20, check=False).stdout.strip()
  except (OSError, subprocess.SubprocessError) as e:
    env["nvidia_smi"] = f"unavailable: {e}"
  versions = subprocess.run(
      [sys.executable, "-c", "import importlib.metadata as m\nfor p in ('jax','jaxlib','flax','optax','torch',"
       "'diffusers','transformers','numpy'):\n  try: print(p, m.version(p))\n  except Exception as e: print(p, None)"],
      capture_output=True, text=True, timeout=60, check=False).stdout.split("\n")
  env["versions"] = dict(line.split(" ", 1) for line in versions if " " in line)
  return env


def main(argv):
  del argv
  start = time.time()
  deadline = start + FLAGS.budget_s
  os.makedirs(FLAGS.out, exist_ok=True)
  os.environ.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_PYTHON_CLIENT_MEM_FRACTION="0.95",
                    JAX_COMPILATION_CACHE_DIR=FLAGS.jax_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1",
                    PYTHONUNBUFFERED="1")
  env = _environment()
  print(json.dumps(env), flush=True)
  names = [job[0] for job in JOBS]
  unknown = set(FLAGS.jobs) - set(names)
  if unknown:
    raise app.UsageError(f"--jobs {sorted(unknown)}: unknown; known: {names}")
  statuses = []
  with open(os.path.join(FLAGS.out, "results.jsonl"), "a") as results:
    by_name = {job[0]: job for job in JOBS}
    for name, module, args, cap, job_env in [by_name[n] for n in FLAGS.jobs] if FLAGS.jobs else JOBS:
      left = deadline - time.time()
      if left < 0.4 * cap:  # too little time to compile and measure: skip rather than be killed half-way
        statuses.append({"job": name, "status": f"skipped: {left:.0f} s of the budget left"})
        print(f"=== {name}: skipped ({left:.0f} s left)", flush=True)
        continue
      timeout = min(cap * (3 if FLAGS.tiny else 1), left)
      try:
        statuses.append(_run_job(name, _command(module, args, time.time() + timeout - 5), timeout, results, job_env))
      except Exception as e:  # pylint: disable=broad-except
        statuses.append({"job": name, "status": f"driver error: {bench_common.short_error(e)}"})
      print(f"=== {json.dumps(statuses[-1])}", flush=True)
  summary = {"command": " ".join(sys.argv), "environment": env, "jobs": statuses,
             "wall_s": time.time() - start}
  with open(os.path.join(FLAGS.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
