"""The ablation runner: a grid of variants, each the ordinary train command; reruns skip finished variants."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vdm_jax.train import ablation as ablate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_parsing_and_grid():
  sweeps = ablate.parse_sweeps(["model.activation=relu,silu", "model.conditioning=joint,cross"])
  grid = ablate.variants(sweeps)
  assert len(grid) == 4 and grid[1] == {"model.activation": "relu", "model.conditioning": "cross"}
  assert ablate.variant_name(grid[0]) == "model.activation=relu,model.conditioning=joint"
  with pytest.raises(ablate.SweepError, match="expected key=value1,value2"):
    ablate.parse_sweeps(["model.activation"])


@pytest.mark.slow(60)
def test_ablation_runs_each_variant_and_tabulates(shapes_data_dir, tmp_path):
  cmd = [sys.executable, "-m", "experiments.ablate", "--config", "configs/toy_ae.py:runlocal",
         "--sweep", "optimizer.name=adamw,lion", f"--config.input.data_dir={shapes_data_dir}",
         "--config.train.steps=2", "--config.schedule.warmup_steps=0", f"--workdir={tmp_path}"]
  first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(tmp_path / "ablation.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["variant"] for r in rows] == ["optimizer.name=adamw", "optimizer.name=lion"]
  for r in rows:  # each row holds its own variant's run: the last logged loss and eval PSNR of W/<variant>
    logged = [json.loads(line) for line in open(tmp_path / r["variant"] / "metrics.jsonl")]
    assert r["steps"] == "2" and float(r["final_loss"]) == [m["loss"] for m in logged if "loss" in m][-1]
    assert float(r["psnr"]) == [m["eval/psnr"] for m in logged if "eval/psnr" in m][-1]
  assert rows[0]["final_loss"] != rows[1]["final_loss"]  # the variants really differ
  assert "| optimizer.name=lion |" in open(tmp_path / "ablation.md").read()

  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count("Resuming from checkpoint 2") == 2  # finished variants are not retrained
  with open(tmp_path / "ablation.csv") as f:
    assert list(csv.DictReader(f)) == rows


@pytest.mark.parametrize("to_group", [False, True], ids=["SIGTERM_to_ablate", "Ctrl-C_to_the_terminal_group"])
def test_a_stopped_variant_stops_the_grid_as_stopped(to_group, shapes_data_dir, tmp_path):
  """SIGTERM to the runner is passed on to the running variant; Ctrl-C in a terminal reaches both (their process
  group). Either way the variant saves, the grid stops there with exit status 75 and says which variant stopped."""
  cmd = [sys.executable, "-m", "experiments.ablate", "--config", "configs/toy_ae.py:runlocal",
         "--sweep", "optimizer.name=adamw,lion", f"--config.input.data_dir={shapes_data_dir}",
         "--config.train.steps=100000", "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
         "--config.schedule.warmup_steps=0", f"--workdir={tmp_path}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  metrics = tmp_path / "optimizer.name=adamw" / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.stat().st_size > 0):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.2)
  if to_group:
    os.killpg(proc.pid, signal.SIGINT)
  else:
    proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=180)
  assert proc.returncode == 75, stderr[-3000:]
  name = "SIGINT" if to_group else "SIGTERM"
  assert f"Variant optimizer.name=adamw stopped ({name}) before its last step" in stderr
  assert f"after {name}; rerun the same command to resume." in stderr  # the variant's own line: it saved
  assert "Traceback" not in stderr
  assert os.listdir(tmp_path / "optimizer.name=adamw" / "checkpoints")
  assert not (tmp_path / "optimizer.name=lion").exists() and not (tmp_path / "ablation.csv").exists()
