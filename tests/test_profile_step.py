"""experiments.profile_step and vdm_jax.train.profiler: a run's input and compiled step timed, a jax.profiler trace
summed by XLA operation, and the trainer's own trace of a few steps (`train.profile_steps`)."""
import json
import os
import subprocess
import sys

from vdm_jax.train import profiler
from test_train_loop import REPO  # noqa: E402  (tests/ is on sys.path)

HLO = ("""HloModule jit_train_step

%fused_computation.1 (param_0: f32[4,8]) -> f32[8,4] {
  ROOT %t = f32[8,4]{1,0} transpose(%param_0), dimensions={1,0}
}

ENTRY %main (p: f32[4,8]) -> f32[8,4] {
  %p = f32[4,8]{1,0} parameter(0)
  ROOT %copy_bitcast_fusion.35 = f32[8,4]{1,0} fusion(%p), kind=kLoop, calls=%fused_computation.1, """
    """metadata={op_name="jit(train_step)/transpose(jvp(DiT))/layers/mlp/fc_out/transpose" source_file="x.py"}
}
""")


def test_op_info_names_each_instructions_shape_and_source():
  info = profiler.op_info(HLO)
  assert info["copy_bitcast_fusion.35"] == "f32[8,4] mlp/fc_out/transpose"  # the last three parts of op_name
  assert info["p"] == "f32[4,8]"
  assert profiler.by_kind({"copy_bitcast_fusion.35": 2.0, "copy_bitcast_fusion.3": 1.0, "ynn_fusion": 0.5,
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
  assert 0 < len(r["top_ops"]) <= 5 and r["ops_per_step"] > 0 and all(op["what"] for op in r["top_ops"])
  assert abs(sum(r["kinds"].values()) - r["ops_per_step"]) < 1e-6 * max(1.0, r["ops_per_step"])
  assert not os.listdir(tmp_path / "run") or "checkpoints" not in os.listdir(tmp_path / "run")  # nothing saved


def test_step_profiler_traces_the_asked_steps_and_summarises_them(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  step = jax.jit(lambda x: jnp.tanh(x @ x.T) + 1.0)
  x = jnp.ones((64, 64))
  prof = profiler.StepProfiler(str(tmp_path / "profile"), first=2, num_steps=3, hlo_text=lambda: HLO)
  for i in range(1, 9):
    prof.before_step(i)
    x = step(x)
    prof.after_step(i, x)
  prof.close(x)  # already stopped after step 5: nothing more
  summary = json.loads((tmp_path / "profile" / "summary.json").read_text())
  assert summary["steps"] == [3, 5] and summary["seconds_per_step"] > 0 and summary["ops_per_step"] > 0
  # a run that ends inside the window: close() stops the trace and summarises the steps it recorded
  early = profiler.StepProfiler(str(tmp_path / "early"), first=0, num_steps=10)
  for i in range(1, 3):
    early.before_step(i)
    x = step(x)
    early.after_step(i, x)
  early.close(x)
  assert json.loads((tmp_path / "early" / "summary.json").read_text())["steps"] == [1, 2]
  # a step that raises: abort() stops the trace unsummarised, and the process can trace again
  failed = profiler.StepProfiler(str(tmp_path / "failed"), first=0, num_steps=10)
  failed.before_step(1)
  failed.abort()
  assert not os.path.exists(tmp_path / "failed" / "summary.json")
  again = profiler.StepProfiler(str(tmp_path / "again"), first=0, num_steps=1)
  again.before_step(1)
  x = step(x)
  again.after_step(1, x)
  assert json.loads((tmp_path / "again" / "summary.json").read_text())["steps"] == [1, 1]
  off = profiler.StepProfiler(str(tmp_path / "off"), first=0, num_steps=0)
  off.before_step(1)
  off.after_step(1, x)
  off.close(x)
  assert not os.path.exists(tmp_path / "off")
