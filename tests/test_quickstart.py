"""The quickstart command end to end at `--preset=runlocal`: VAE, text-to-video, samples, probe report.

It runs on one CPU device, as on a user's machine (not the tests' 8 virtual ones): the same programs as the
quickstart notebook's test, so whichever of the two runs second finds them in the run's compilation cache."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a subprocess: importing experiments.quickstart here would define its absl flags next to those of other
# entry points the tests import (experiments.evaluate's --workdir), which absl refuses.
# The configs come from the quickstart's own builders, with its flags parsed as for `--workdir=/unused`, and are
# compared with the config files' defaults (with the frame-condition mix) plus the two keys docs/recipes.md says the quickstart sets.
_CHECK_CONFIGS = """
from configs import t2v, vae
from experiments import quickstart as q
from vdm_jax.train import config
q.flags.FLAGS(["quickstart", "--workdir=/unused"])
v = config.validate(q._vae_config())
assert v.to_json_best_effort(sort_keys=True) == vae.get_config().to_json_best_effort(sort_keys=True)
out = [v.model.patch_size]
for dtype in ("float32", "bfloat16"):  # what --dit_dtype=auto picks depends on the CPU
  q.flags.FLAGS.dit_dtype = dtype
  t = config.validate(q._t2v_stages("/unused/vae", "/unused/t2v")[0][2])
  expected = t2v.get_config(f"dtype={dtype},conditions=all")
  expected.vae.workdir, expected.eval.probe_prompts = "/unused/vae", 0
  assert t.to_json_best_effort(sort_keys=True) == expected.to_json_best_effort(sort_keys=True), dtype
  out += [t.diffusion.prediction_type, t.sample.sampler, t.train.compute_dtype, t.train.steps]
print(*out)
"""


def test_default_preset_is_the_configs_default_recipe():
  """The full quickstart (not run by the test below: runlocal skips it) trains exactly the config files' default
  recipes at both DiT dtypes, and they pass validation, so a renamed key fails here, not 15 minutes into a run."""
  result = subprocess.run([sys.executable, "-c", _CHECK_CONFIGS], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.split() == ["2", "flow", "euler", "float32", "4000", "flow", "euler", "bfloat16", "5500"]


def _quickstart(workdir, data_dir, preset="runlocal"):
  """The quickstart's command line for `workdir` at `preset` on the tests' Captioned Shapes data_dir."""
  return [sys.executable, "-m", "experiments.quickstart", f"--workdir={workdir}", f"--preset={preset}",
          f"--data_dir={data_dir}"]


@pytest.fixture(scope="module")
def runlocal_run(shapes_data_dir, one_device_env, tmp_path_factory):
  """One `--preset=runlocal --profile` quickstart from an empty workdir, shared by this file's tests (the suite's
  scheduler gives a test file to one worker): its workdir and its stderr."""
  workdir = tmp_path_factory.mktemp("quickstart")
  result = subprocess.run(_quickstart(workdir, shapes_data_dir) + ["--profile"], cwd=REPO, env=one_device_env,
                          capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir, result.stderr


@pytest.mark.slow(440)
def test_quickstart_runlocal_writes_its_report(runlocal_run, shapes_data_dir, one_device_env):
  workdir, stderr = runlocal_run
  cmd = _quickstart(workdir, shapes_data_dir)
  # --profile: each training stage traced steps 2-3 and the report has where their time went
  assert stderr.count("Profiled steps 2-3:") == 2
  assert "Expected from an empty workdir on this kind of CPU: about " in stderr
  assert re.search(r"\[\d+/\d+\] .* \| ETA \dh\d\dm\d\ds \(job \dh\d\dm\d\ds\)", stderr)  # whole-job ETA
  report = json.load(open(workdir / "report.json"))
  assert report["num_videos"] == 4 and set(report["probe"]) >= {"color", "shape", "motion", "all"}
  assert all(0.0 <= report["probe"][k] <= 1.0 for k in ("color", "shape", "motion", "all"))
  diagnosis = report["probe_diagnosis"]
  readable = 4 - sum(diagnosis["unreadable"].values())
  assert sum(sum(row.values()) for row in diagnosis["confusion"]["color"].values()) == readable
  # the DiT trained the frame-condition mix: every image and video prompt task is scored on 2 new clips
  assert set(report["tasks"]) == {"i2v", "interpolate", "extend", "extend_backward", "v2v"}
  assert all(scores["num_videos"] == 2 for scores in report["tasks"].values())
  assert report["tasks"]["i2v"]["first_frame_psnr_mean"] > 0
  for name in ("contact_sheet.png", "loss_curves.png", "tasks_contact_sheet.png"):
    assert os.path.getsize(workdir / name) > 1000
  assert len(os.listdir(workdir / "videos")) == 4
  # the report names the checkpoints it sampled, and the DiT's latents came from that same (final) VAE
  from vdm_jax import runs  # pylint: disable=g-import-not-at-top
  _, vae_step = runs.load_params(str(workdir / "vae"))
  cache = json.load(open(workdir / "vae" / "latent_cache" / "32x32x9_tiny" / "train" / "cache.json"))
  assert report["vae"]["step"] == vae_step == cache["vae"]["step"]
  assert report["vae"]["weights_sha256"] == cache["vae"]["weights_sha256"]
  assert report["t2v"]["step"] == report["t2v"]["steps"]
  for stage in ("vae", "t2v"):
    profiled = report["profile"][stage]
    assert profiled["steps"] == [2, 3] and profiled["seconds_per_step"] > 0 and profiled["ops_per_step"] > 0
    assert 0 < len(profiled["top_ops"]) <= 10 and abs(sum(profiled["kinds"].values()) - profiled["ops_per_step"]) < 1e-6
    assert os.path.exists(workdir / stage / "profile" / "summary.json")
  # a second run reuses both trained models (their checkpoints are at the last step); --fvd reports FVD beside its
  # reference points (4 clips per set of the tiny validation split)
  again = subprocess.run(cmd + ["--fvd=4"], cwd=REPO, env=one_device_env, capture_output=True, text=True,
                         timeout=1200)
  assert again.returncode == 0, again.stderr[-4000:]
  assert again.stderr.count("Resuming from checkpoint") == 2
  assert again.stderr.count("nothing to train") == 2  # and neither step is compiled again
  fvd = json.load(open(workdir / "report.json"))["fvd"]
  assert fvd["num_clips"] == 4 and 0 < fvd["fvd_floor"] and 0 < fvd["fvd_reconstruction"] and 0 < fvd["fvd_samples"]


@pytest.mark.slow(300)
def test_staged_preset_trains_each_stage_from_the_previous_one(runlocal_run, shapes_data_dir, one_device_env,
                                                               tmp_path):
  """--preset=sizes_staged(_runlocal): images, then video, then the full sizes, three runs each starting from the
  previous one's EMA parameters (a stage's own checkpoint would win on a rerun); the last is sampled at every size.
  Both presets train the same runlocal VAE, so this run starts from the runlocal run's finished one (the quickstart
  restores a finished stage and trains nothing), and only the three DiT stages train here."""
  shutil.copytree(runlocal_run[0] / "vae", tmp_path / "vae")
  cmd = _quickstart(tmp_path, shapes_data_dir, "sizes_staged_runlocal") + ["--num_probe=1"]
  result = subprocess.run(cmd + ["--probe_seed=500"], cwd=REPO, env=one_device_env, capture_output=True, text=True,
                          timeout=1200)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stderr.count("nothing to train") == 1  # the VAE's; each DiT stage trained
  report = json.load(open(tmp_path / "report.json"))
  assert list(report["workdirs"]) == ["vae", "t2v_stage1", "t2v_stage2", "t2v"]
  assert list(report["minutes"]) == ["vae", "t2v_stage1", "t2v_stage2", "t2v", "sample_and_score"]
  assert set(report["sizes"]) == {"32x32x9", "16x48x9", "32x32x5"} and report["probe_seeds"] == [500, 500]
  frames = {}
  for stage, previous in (("t2v_stage1", ""), ("t2v_stage2", "t2v_stage1"), ("t2v", "t2v_stage2")):
    config = json.load(open(tmp_path / stage / "config.json"))
    assert config["init_from"] == (str(tmp_path / previous) if previous else "")
    frames[stage] = {f for row in config["input"]["buckets"].values() for f in row}
  assert frames["t2v_stage1"] == {"1"} and "1" not in frames["t2v_stage2"]  # images first, then video
  started = re.findall(r"Starting from the ema_params of (\S+) \(its step (\d+)\)", result.stderr)
  assert [(os.path.basename(path), int(step)) for path, step in started] == [("t2v_stage1", 4), ("t2v_stage2", 4)]
  # one --t2v_steps cannot size three stages: refused before anything runs
  refused = subprocess.run(cmd + ["--t2v_steps=2", f"--workdir={tmp_path / 'refused'}"], cwd=REPO,
                           env=one_device_env, capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0 and "--t2v_steps=2: the sizes_staged_runlocal preset" in refused.stderr
  assert not (tmp_path / "refused" / "vae").exists()


@pytest.mark.slow(260)
def test_stopped_in_the_vae_stage_exits_75_and_the_rerun_trains_the_dit_on_the_final_vae(shapes_data_dir,
                                                                                       one_device_env, tmp_path):
  """SIGTERM while the VAE trains: the VAE saves, the quickstart exits 75 and runs nothing after it (no DiT, no
  latent cache from the half-trained VAE); rerun to the end, the DiT's latents come from the VAE's final step."""
  cmd = _quickstart(tmp_path, shapes_data_dir)
  proc = subprocess.Popen(cmd + ["--vae_steps=100000"], cwd=REPO, env=one_device_env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  metrics, deadline = tmp_path / "vae" / "metrics.jsonl", time.time() + 600
  while not (metrics.exists() and metrics.stat().st_size > 0):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "the VAE logged no metrics"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 75, stderr[-3000:]
  stopped = int(re.search(r"Stopped at step (\d+)", stderr).group(1))
  assert not (tmp_path / "t2v").exists() and not (tmp_path / "vae" / "latent_cache").exists()
  assert "2/3" not in stderr  # the text-to-video stage never started

  rerun = subprocess.run(cmd + [f"--vae_steps={stopped + 2}"], cwd=REPO, env=one_device_env, capture_output=True,
                         text=True, timeout=1200)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  report = json.load(open(tmp_path / "report.json"))
  cache = json.load(open(tmp_path / "vae" / "latent_cache" / "32x32x9_tiny" / "train" / "cache.json"))
  assert report["vae"]["step"] == cache["vae"]["step"] == stopped + 2
  assert report["vae"]["weights_sha256"] == cache["vae"]["weights_sha256"]
