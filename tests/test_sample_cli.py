"""`experiments.sample` as a careful user meets it (issue [P] cases 4 and 8): bad --out and --num_samples fail before
any work, existing samples are never replaced silently, samples.jsonl always matches the files, sampling an unfinished
run says so, and the console carries no third-party noise."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vdm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import t2v as t2v_configs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

NOISE = ("could not be restored", "os.fork", "libtpu", "checkpoint_manager.py", "event_tracking.py")


def _sample(*args, env=None):
  cmd = [sys.executable, "-m", "experiments.sample", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def unfinished_run(shapes_data_dir, vae_workdir, tmp_path_factory):
  """A t2v run at step 2 whose config asks for 4: what a run launched for 4 steps and stopped after its step-2
  checkpoint leaves (the loop writes config.json before training)."""
  workdir = str(tmp_path_factory.mktemp("t2v_unfinished"))
  c = t2v_configs.get_config("runlocal")
  c.input.data_dir = shapes_data_dir
  c.vae.workdir = vae_workdir
  c.train.update(steps=2, checkpoint_every=2, eval_every=0, sample_every=0)
  loop.train(c, workdir)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    config = json.load(f)
  config["train"]["steps"] = 4
  with open(path, "w") as f:
    json.dump(config, f)
  return workdir


def test_bad_out_and_num_samples_fail_before_any_work(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  missing = str(tmp_path / "no_such_run")  # never opened: the arguments fail first
  result = _sample(f"--workdir={missing}", "--prompt=a red circle", f"--out={a_file}")
  assert result.returncode != 0 and f"--out '{a_file}' is a file, not a folder" in result.stderr
  result = _sample(f"--workdir={missing}", "--prompt=a red circle", "--num_samples=0", f"--out={tmp_path}/s")
  assert result.returncode != 0 and "--num_samples=0" in result.stderr
  assert not os.path.exists(tmp_path / "s")


def _rows(out):
  with open(os.path.join(out, "samples.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _assert_jsonl_matches_files(out):
  rows = _rows(out)
  listed = [os.path.basename(r[k]) for r in rows for k in ("mp4", "npy")]
  assert len(listed) == len(set(listed))  # each file once
  assert sorted(listed) == sorted(n for n in os.listdir(out) if n.endswith((".mp4", ".npy")))


def test_existing_samples_are_kept_unless_overwrite(unfinished_run, tmp_path, one_device_env):
  out = str(tmp_path / "samples")
  args = [f"--workdir={unfinished_run}", "--num_samples=2", "--seed=5", f"--out={out}", "--num_steps=2"]
  first = _sample("--prompt=a red circle moving left", *args, env=one_device_env)
  assert first.returncode == 0, first.stderr[-3000:]
  # One line says the run is unfinished; the third-party lines a user cannot act on are gone.
  assert first.stderr.count("Sampling an unfinished run") == 1
  assert "is at step 2 of train.steps=4" in first.stderr
  assert not [line for line in first.stderr.splitlines() if any(n in line for n in NOISE)], first.stderr
  _assert_jsonl_matches_files(out)
  kept = {r["npy"]: np.load(r["npy"]) for r in _rows(out)}

  # The same names again: refused before sampling, nothing touched.
  again = _sample("--prompt=a blue square moves up", *args, env=one_device_env)
  assert again.returncode != 0 and "already holds 4 of the files to write" in again.stderr
  assert "--overwrite" in again.stderr
  assert [r["prompt"] for r in _rows(out)] == ["a red circle moving left"] * 2
  for path, video in kept.items():
    np.testing.assert_array_equal(np.load(path), video)

  # --overwrite: the files are replaced and samples.jsonl names the new prompt for them, each file once.
  replaced = _sample("--prompt=a blue square moves up", *args, "--overwrite", env=one_device_env)
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert [(r["prompt"], r["seed"]) for r in _rows(out)] == [("a blue square moves up", 5), ("a blue square moves up", 6)]
  _assert_jsonl_matches_files(out)
