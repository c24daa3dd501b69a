"""Staged training (`config.init_from`): a new run starts from another run's EMA parameters with a fresh optimizer,
a resumed one continues from its own checkpoint, and parameters of another model fail naming the leaves."""
import logging
import os
import sys

import jax
import numpy as np
import pytest

from vdm_jax import runs
from vdm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import toy_ae  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _config(data_dir, **changes):
  c = toy_ae.get_config("runlocal")
  c.input.data_dir = data_dir
  c.train.update({"steps": 2, "checkpoint_every": 2, "ema_decay": 0.5})
  c.update(changes)
  return c


def test_init_from_starts_from_the_ema_params_and_resumes_its_own(shapes_data_dir, tmp_path, caplog):
  first = str(tmp_path / "stage1")
  loop.train(_config(shapes_data_dir), first)
  ema, _ = runs.load_params(first, "ema_params")
  params, _ = runs.load_params(first, "params")
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params)))

  # A learning rate of 0 leaves the parameters where the stage started: exactly stage 1's EMA parameters.
  second = str(tmp_path / "stage2")
  frozen = _config(shapes_data_dir, init_from=first)
  frozen.schedule.base_lr = 0.0
  with caplog.at_level(logging.INFO):
    loop.train(frozen, second)
  assert f"Starting from the ema_params of {first} (its step 2), with a fresh optimizer." in caplog.text
  got, _ = runs.load_params(second, "params")
  jax.tree.map(np.testing.assert_array_equal, got, ema)

  # Rerun to more steps: it resumes from its own checkpoint, not from stage 1 again.
  caplog.clear()
  longer = _config(shapes_data_dir, init_from=first)
  longer.train.steps = 3
  with caplog.at_level(logging.INFO):
    loop.train(longer, second)
  assert "Resuming from checkpoint 2" in caplog.text and "Starting from the" not in caplog.text


def test_init_from_another_model_names_the_leaves(shapes_data_dir, tmp_path):
  first = str(tmp_path / "stage1")
  loop.train(_config(shapes_data_dir), first)
  other = _config(shapes_data_dir, init_from=first)
  other.model.features = (16,)
  with pytest.raises(ValueError, match=r"init_from=.*do not fit this model \(.*\(8,\) there, \(16,\) here"):
    loop.train(other, str(tmp_path / "other"))
