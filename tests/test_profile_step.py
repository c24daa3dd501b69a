"""experiments.profile_step: times a run's input and compiled step, and sums a jax.profiler trace by XLA operation."""
import json
import os
import subprocess
import sys

from experiments import profile_step
from test_train_loop import REPO  # noqa: E402  (tests/ is on sys.path)

HLO = """HloModule jit_train_step

%fused_computation.1 (param_0: f32[4,8]) -> f32[8,4] {
  ROOT %t = f32[8,4]{1,0} transpose(%param_0), dimensions={1,0}
}

ENTRY %main (p: f32[4,8]) -> f32[8,4] {
  %p = f32[4,8]{1,0} parameter(0)
  ROOT %copy_bitcast_fusion.35 = f32[8,4]{1,0} fusion(%p), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train_step)/transpose(jvp(DiT))/layers/mlp/fc_out/transpose" source_file="x.py"}
}
"""


def test_op_info_names_each_instructions_shape_and_source():
  info = profile_step.op_info(HLO)
  assert info["copy_bitcast_fusion.35"] == "f32[8,4] mlp/fc_out/transpose"  # the last three parts of op_name
  assert info["p"] == "f32[4,8]"
  assert profile_step.by_kind({"copy_bitcast_fusion.35": 2.0, "copy_bitcast_fusion.3": 1.0, "ynn_fusion": 0.5,
                               "dot.12": 0.25}) == {"copy_bitcast_fusion": 3.0, "ynn_fusion": 0.5, "dot": 0.25}


def test_profiles_a_tiny_run(shapes_data_dir, one_device_env, tmp_path):
  out = tmp_path / "profile.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.profile_step", "--config", "configs/toy_ae.py:runlocal",
       f"--config.input.data_dir={shapes_data_dir}", f"--workdir={tmp_path / 'run'}", "--steps=2", "--warmup=1",
       "--trace_steps=1", "--top=5", f"--json={out}"],
      cwd=REPO, env=one_device_env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "per step: data" in result.stdout and "top operations" in result.stdout
  r = json.loads(out.read_text())
  assert r["step"] > 0 and r["loop"] > 0 and r["data"] >= 0 and r["compile"] > 0
  assert 0 < len(r["top_ops"]) <= 5 and r["ops_per_step"] > 0
  assert abs(sum(r["kinds"].values()) - r["ops_per_step"]) < 1e-6 * max(1.0, r["ops_per_step"])
  assert not os.listdir(tmp_path / "run") or "checkpoints" not in os.listdir(tmp_path / "run")  # nothing saved
