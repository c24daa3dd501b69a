"""Faults a careful user meets while training (docs/faults_training.md): a damaged newest checkpoint, SIGTERM and
Ctrl-C, a typo in a command-line override. Each test damages or interrupts a real `configs/toy_ae.py:runlocal` run."""
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vdm_jax import runs
from vdm_jax.train import config as config_lib
from vdm_jax.train import loop

from test_train_loop import REPO, _cli, _config, _final_state  # noqa: E402  (tests/ is on sys.path)


def _assert_same_tree(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def four_steps(shapes_data_dir, tmp_path_factory):
  """A 4-step run with checkpoints at steps 2 and 4, trained once: the runs below damage copies of it."""
  workdir = str(tmp_path_factory.mktemp("four_steps"))
  loop.train(_config(shapes_data_dir, steps=4, checkpoint_every=2), workdir)
  return workdir


def _truncate_data(step_dir):
  for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
    with open(path, "r+b") as f:
      f.truncate(10)


def _flip_manifest_byte(step_dir):
  path = os.path.join(step_dir, "state", "manifest.ocdbt")  # the root manifest: CRC-32C checked on read
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x5A
  open(path, "wb").write(bytes(data))


def _rewrite_a_leaf(step_dir):
  """Valid files holding other values than were saved, which is what a byte flipped in a compressed data chunk can
  give (OCDBT checksums its manifests and tree nodes, not the values): the state re-written with one leaf changed."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(step_dir, "state"))
    leaf = state["opt_state"][1][0]["mu"]["up_0"]["kernel"]  # an optimizer moment: l2_params would not show it
    state["opt_state"][1][0]["mu"]["up_0"]["kernel"] = leaf.at[0, 0, 0, 0].add(1e-3)
    checkpointer.save(os.path.join(step_dir, "state.rewritten"), state)
    checkpointer.wait_until_finished()
  shutil.rmtree(os.path.join(step_dir, "state"))
  os.rename(os.path.join(step_dir, "state.rewritten"), os.path.join(step_dir, "state"))


DAMAGE = {
    "truncated_data": (_truncate_data, "OUT_OF_RANGE"),
    "missing_metadata": (lambda d: os.remove(os.path.join(d, "state", "_METADATA")), "pytree structure"),
    "missing_item": (lambda d: shutil.rmtree(os.path.join(d, "state")), 'Item "state" was not found'),
    "checksum": (_flip_manifest_byte, "checksum"),
    "other_values": (_rewrite_a_leaf, "differ from the checksums saved with them"),
    "truncated_iterator_state": (lambda d: open(os.path.join(d, "data", "process_0-of-1.json"), "w").write("{"),
                                 "JSONDecodeError"),
}


def _damaged_copy(src, dst, damage, steps=(4,)):
  shutil.copytree(src, dst)
  for step in steps:
    damage(os.path.join(dst, "checkpoints", str(step)))
  return dst


def _warnings(caplog, text="does not restore"):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_one_warning_and_resumes_exactly(
    kind, four_steps, shapes_data_dir, tmp_path, caplog):
  damage, reason = DAMAGE[kind]
  workdir = _damaged_copy(four_steps, str(tmp_path / "run"), damage)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  with caplog.at_level(logging.INFO):
    loop.train(_config(shapes_data_dir, steps=4, checkpoint_every=2), workdir)
  (line,) = _warnings(caplog)  # one line, naming the step, its directory (and where it went) and the error
  assert line.startswith("Checkpoint step 4 does not restore, using step 2: " + os.path.join(ckpt_dir, "4"))
  assert reason in line and "\n" not in line
  assert "Resuming from checkpoint 2" in caplog.text
  # Moved aside, so the rerun's save at step 4 did not collide with it; the params are the undamaged run's.
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "4.damaged"]
  (s1, a), (s2, b) = _final_state(four_steps), _final_state(workdir)
  assert s1 == s2 == 4
  _assert_same_tree(a, b)
  assert "Compiling the train step" in caplog.text and "Compiled the train step in" in caplog.text


def test_no_checkpoint_restores_one_short_error_and_nothing_moved(four_steps, tmp_path, shapes_data_dir):
  workdir = _damaged_copy(four_steps, str(tmp_path / "run"), _truncate_data, steps=(2, 4))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  with pytest.raises(runs.CheckpointError) as e:
    loop.train(_config(shapes_data_dir, steps=4, checkpoint_every=2), workdir)
  message = str(e.value)
  assert message.startswith(f"No checkpoint in {ckpt_dir} restores (step 4: ValueError: OUT_OF_RANGE")
  assert "; step 2: ValueError: OUT_OF_RANGE" in message and "\n" not in message
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]  # the fault may be the target, not the files: left as they are


def test_load_params_skips_a_damaged_newest_and_names_an_asked_for_one(four_steps, tmp_path, caplog):
  workdir = _damaged_copy(four_steps, str(tmp_path / "run"), _flip_manifest_byte)
  with caplog.at_level(logging.WARNING):
    params, step = runs.load_params(workdir, "params")
  assert step == 2 and len(_warnings(caplog)) == 1
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]  # readers leave the run alone
  _assert_same_tree(params, runs.load_params(four_steps, "params", step=2)[0])
  with pytest.raises(runs.CheckpointError, match=r"checkpoints restores \(step 4: ValueError: DATA_LOSS.*checksum"):
    runs.load_params(workdir, "params", step=4)
  rewritten = _damaged_copy(four_steps, str(tmp_path / "rewritten"), _rewrite_a_leaf)
  assert runs.load_params(rewritten, "params")[1] == 2  # the values are checked against the saved checksums


def _raised_in(filename):
  """An exception whose traceback has a frame in `filename` (as if raised by that file's code)."""
  try:
    exec(compile("raise ValueError('DATA_LOSS: checksum')", filename, "exec"))  # pylint: disable=exec-used
  except ValueError as e:
    return e


def test_failed_restore_reports_are_dropped_and_others_kept(monkeypatch):
  """A failed restore's in-flight reads report `Event loop is closed` through sys.unraisablehook (~200 lines), or
  asyncio logs each as `Task exception was never retrieved` with its traceback (which of the two is timing)."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  asyncio_logger = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_logger, "filters", [])
  runs._quiet_failed_restores()  # pylint: disable=protected-access
  runs._quiet_failed_restores()  # pylint: disable=protected-access  (installed once)
  assert len(asyncio_logger.filters) == 1

  def record(msg, error):
    return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, msg, None,
                             (type(error), error, error.__traceback__))

  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
  assert not asyncio_logger.filter(record("Task exception was never retrieved\nfuture: <Task>", _raised_in(orbax_file)))
  assert asyncio_logger.filter(record("Task exception was never retrieved\nfuture: <Task>", _raised_in("mine.py")))
  assert asyncio_logger.filter(record("Unclosed client session", _raised_in(orbax_file)))

  class Unraisable:
    def __init__(self, exc):
      self.exc_value, self.object = exc, None

  sys.unraisablehook(Unraisable(RuntimeError("Event loop is closed")))
  other = Unraisable(RuntimeError("something else"))
  sys.unraisablehook(other)
  assert seen == [other]


def test_cli_damaged_checkpoint_log_is_short(four_steps, shapes_data_dir, tmp_path):
  workdir = _damaged_copy(four_steps, str(tmp_path / "run"), _flip_manifest_byte)
  result = subprocess.run(_cli(workdir, shapes_data_dir, "--config.train.steps=4", "--config.train.checkpoint_every=2",
                               "--config.train.log_every=2"), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("does not restore") == 1, result.stderr[-3000:]
  assert "Event loop is closed" not in result.stderr and "Traceback" not in result.stderr


def test_evaluate_uses_the_newest_checkpoint_that_restores(four_steps, shapes_data_dir, tmp_path):
  workdir = _damaged_copy(four_steps, str(tmp_path / "run"), _truncate_data)
  cmd = [sys.executable, "-m", "experiments.evaluate", "--config", "configs/toy_ae.py:runlocal",
         f"--config.input.data_dir={shapes_data_dir}", f"--workdir={workdir}"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.count("Checkpoint step 4 does not restore, using step 2") == 1
  assert '"step": 2' in result.stdout
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]  # an evaluation moves nothing
  asked = subprocess.run(cmd + ["--step=4"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert asked.returncode == 1 and "CheckpointError: No checkpoint in" in asked.stderr
  assert "Event loop is closed" not in asked.stderr


def _wait_for_metrics(workdir, proc, timeout=300):
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "no metric line appeared"
    time.sleep(0.2)


@pytest.mark.slow(30)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_one_line_exit_75_and_rerun_finishes_exactly(signum, shapes_data_dir, tmp_path):
  workdir = str(tmp_path / "stopped")
  proc = subprocess.Popen(_cli(workdir, shapes_data_dir, "--config.train.steps=100000",
                               "--config.train.checkpoint_every=1000"),
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_metrics(workdir, proc)
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == loop.RunStopped.exit_code == 75, stderr[-3000:]
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  (line,) = [line for line in stderr.splitlines() if "Stopped at step" in line]
  assert f"after {signal.Signals(signum).name}; rerun the same command to resume." in line
  stopped = int(line.split("Stopped at step ")[1].split()[0])
  assert 0 < stopped < 1000 and _final_state(workdir)[0] == stopped  # saved at the step it stopped

  total = stopped + 2
  rerun = subprocess.run(_cli(workdir, shapes_data_dir, f"--config.train.steps={total}",
                              "--config.train.checkpoint_every=1000"),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  straight = str(tmp_path / "straight")
  loop.train(_config(shapes_data_dir, steps=total, checkpoint_every=1000, log_every=1), straight)
  (s1, a), (s2, b) = _final_state(workdir), _final_state(straight)
  assert s1 == s2 == total
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7), a, b)


@pytest.mark.parametrize("entry", ["train", "evaluate", "plan", "ablate"])
def test_unknown_override_key_is_a_config_error_naming_key_match_and_allowed(entry, tmp_path):
  cmd = [sys.executable, "-m", f"experiments.{entry}", "--config", "configs/toy_ae.py:runlocal",
         "--config.train.stpes=3"] + ([] if entry == "plan" else [f"--workdir={tmp_path}"])
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert ("Unknown config key 'train.stpes'. Did you mean 'train.steps'? Allowed keys here: ['async_checkpoints', "
          in result.stderr), result.stderr[-3000:]
  assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3


def test_override_paths_are_checked_at_any_depth_before_they_are_applied():
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = ["prog", "--config", os.path.join(REPO, "configs", "toy_ae.py") + ":runlocal", "--config.trian.steps=3"]
  flag_values = flags.FlagValues()
  config_lib.define_config_flag(flag_values=flag_values, sys_argv=argv)
  with pytest.raises(config_lib.ConfigError, match=r"Unknown config key 'trian'. Did you mean 'train'\?"):
    flag_values(argv)
  good = ["prog", "--config", argv[2], "--config.train.steps=3", "--noconfig.train.async_checkpoints"]
  flag_values = flags.FlagValues()
  holder = config_lib.define_config_flag(flag_values=flag_values, sys_argv=good)
  flag_values(good)
  assert holder.value.train.steps == 3 and holder.value.train.async_checkpoints is False
