"""Two processes on localhost with jax.distributed (CPU, gloo collectives): the tiny text-to-video model trains,
saves, and restores into another mesh.

Each process has 4 virtual CPU devices (8 global). Per-process input shards, global batches from process-local data,
the latent cache written by process 0 while process 1 waits, orbax's per-process checkpoint parts, the grain
iterator state of each process, and evals gathered across processes all take part.
"""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(workdir, data_dir, vae_dir, one_device_env, *overrides):
  env = dict(one_device_env, XLA_FLAGS=f"{one_device_env['XLA_FLAGS']} --xla_force_host_platform_device_count=4",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", TF_CPP_MIN_LOG_LEVEL="3")
  port = _port()
  procs = []
  for index in range(2):
    cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/t2v.py:runlocal",
           f"--config.input.data_dir={data_dir}", f"--config.vae.workdir={vae_dir}", f"--workdir={workdir}",
           "--config.distributed.enabled=True", f"--config.distributed.coordinator_address=localhost:{port}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={index}",
           "--config.train.log_every=1", "--config.eval.probe_prompts=0", "--config.sample.num_steps=2", *overrides]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True))
  logs = []
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    logs.append(err)
  return logs


def _losses(log):
  return re.findall(r"\[(\d+)/\d+\] .*?\bloss=(\S+)", log)


def _l2(pattern, log):
  found = re.findall(pattern + r": l2_params=(\S+)", log)
  assert len(found) == 1, (pattern, log[-3000:])
  return float(found[0])


@pytest.mark.slow(260)
def test_two_processes_train_save_and_restore_into_another_mesh(shapes_data_dir, vae_workdir, one_device_env,
                                                                tmp_path):
  workdir = str(tmp_path / "run")
  logs = _run_two_processes(workdir, shapes_data_dir, vae_workdir, one_device_env, "--config.train.steps=4",
                            "--config.mesh.data=-1")
  assert "jax.distributed: process 0 of 2, 4 local / 8 global devices" in logs[0]
  assert "jax.distributed: process 1 of 2, 4 local / 8 global devices" in logs[1]
  assert "Mesh {'data': 8, 'fsdp': 1, 'tensor': 1, 'context': 1} over 8 devices (2 processes)" in logs[0]
  assert _losses(logs[0]) == _losses(logs[1]) and len(_losses(logs[0])) == 4  # both processes agree
  saved = [_l2("Finished step 4", log) for log in logs]
  assert saved[0] == saved[1]
  data_state = os.listdir(os.path.join(workdir, "checkpoints", "4", "data"))
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_state)
  evals = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if "eval/val_loss_t100" in line]
  assert len(evals) == 1  # the validation loss, gathered over both processes' shards

  # Restore into fsdp 4 x context 2: parameters and optimizer state re-sharded, each process its own data state.
  logs = _run_two_processes(workdir, shapes_data_dir, vae_workdir, one_device_env, "--config.train.steps=6",
                            "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.context=2")
  for log in logs:
    assert "Resuming from checkpoint 4" in log
    assert "Mesh {'data': 1, 'fsdp': 4, 'tensor': 1, 'context': 2}" in log
    assert _l2("Restored step 4", log) == pytest.approx(saved[0], rel=1e-6)  # the same params under the new mesh
  assert _losses(logs[0]) == _losses(logs[1]) and [s for s, _ in _losses(logs[0])] == ["5", "6"]
  assert _l2("Finished step 6", logs[0]) == _l2("Finished step 6", logs[1])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))
