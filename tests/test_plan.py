"""Ahead-of-time planning: XLA's per-device FLOPs and memory of the train step, with no parameters allocated."""
import os
import re
import subprocess
import sys

import pytest

from vdm_jax.train import flops as flops_lib
from vdm_jax.train import plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import toy_ae  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_plan_scales_with_batch_and_splits_over_devices(shapes_data_dir):
  c = toy_ae.get_config("runlocal")
  c.input.data_dir = shapes_data_dir
  small = plan.plan(c, {"data": 2, "fsdp": 4}, batch_size=8)
  large = plan.plan(c, {"data": 2, "fsdp": 4}, batch_size=16)
  assert small["devices"] == 8 and small["per_device_batch"] == 1 and large["per_device_batch"] == 2
  assert large["flops_per_device"] == pytest.approx(2 * small["flops_per_device"], rel=0.02)
  assert large["memory_bytes"]["temporaries"] > small["memory_bytes"]["temporaries"] > 0
  # the same global batch on 4 data-parallel shards instead of 8: twice the work per device
  fewer = plan.plan(c, {"data": 4, "tensor": 2}, batch_size=8)
  assert fewer["flops_per_device"] == pytest.approx(2 * small["flops_per_device"], rel=0.02)


def test_peak_table_and_mfu():
  class Device:
    device_kind = "NVIDIA H100 80GB HBM3"
  assert flops_lib.peak_tflops(Device(), "bfloat16") == 989.0
  assert flops_lib.peak_tflops(Device(), "bfloat16", override=500.0) == 500.0
  assert flops_lib.peak_tflops(type("Cpu", (), {"device_kind": "cpu"})(), "float32") is None
  u = flops_lib.utilisation(2e12, 0.5, 989.0)
  assert u["tflops_per_device"] == pytest.approx(1.0) and u["mfu"] == pytest.approx(1 / 989.0)


@pytest.mark.slow(35)
def test_plan_command_builds_its_own_virtual_mesh(shapes_data_dir):
  cmd = [sys.executable, "-m", "experiments.plan", "--config", "configs/toy_ae.py:runlocal",
         f"--config.input.data_dir={shapes_data_dir}", "--mesh", "data=2,fsdp=2", "--chip", "H100",
         "--step_time", "0.5", "--batch_sizes", "4,8", "--memory_gib", "0.003"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(4 devices)" in result.stdout and "memory per device (GiB)" in result.stdout
  assert "MFU" in result.stdout
  # each plan says whether its peak fits in the given memory, and the last line names the largest batch that does
  peaks = [float(p) for p in re.findall(r"'peak_estimate': '([0-9.]+)'", result.stdout)]
  verdicts = re.findall(r"  (fits|does not fit) in 0.003 GiB per device", result.stdout)
  assert len(peaks) == len(verdicts) == 2 and peaks[1] > peaks[0]
  assert verdicts == ["fits" if p <= 0.003 else "does not fit" for p in peaks]
  largest = max([b for b, v in zip((4, 8), verdicts) if v == "fits"], default=None)
  assert f"largest global batch that fits in 0.003 GiB per device: {largest or 'none of 4,8'}" in result.stdout


def test_transformer_flops_by_hand():
  # 2 layers, 10 tokens, width 8, MLP 32: dense 2*10*(4*64 + 2*8*32) = 15360, attention 4*10*10*8 = 3200
  assert flops_lib.transformer_flops(10, 8, 32, 2) == 2 * (15360 + 3200)
  # cross-attention to 5 context tokens adds q/o on the 10 tokens, k/v on the 5, and 4*10*5*8 score FLOPs
  extra = 2 * 10 * 2 * 64 + 2 * 5 * 2 * 64 + 4 * 10 * 5 * 8
  assert flops_lib.transformer_flops(10, 8, 32, 2, context=5) == 2 * (15360 + 3200 + extra)
