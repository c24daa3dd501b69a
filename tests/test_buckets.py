"""Buckets: the table gives the sizes Open-Sora's rule gives (area about R^2 at each aspect ratio, sides multiples
of 16) and names bad keys; every block of steps serves each bucket in proportion to its weight, in an order fixed by
the seed; a bucketed toy run compiles its step once per bucket however often it comes back, and a run resumed from
its checkpoint draws the same batches (bit-identical final parameters) as an uninterrupted one."""
import json
import logging
import os
import sys

import numpy as np
import pytest

from vdm_jax.data import buckets
from vdm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import toy_ae  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tests.test_train_loop import assert_same_final_state  # noqa: E402  pylint: disable=g-import-not-at-top


def test_table_sizes_and_errors():
  table = buckets.parse_table({"64": {"17": (1.0, 16), "1": (0.5, 64)}, "96": {"17": (0.0, 4)}},
                              ("1:1", "3:5", "5:3"))
  assert [(b.name, b.keep, b.batch_size) for b in table] == [
      ("64x64x1", 0.5, 64), ("64x64x17", 1.0, 16), ("48x80x1", 0.5, 64), ("48x80x17", 1.0, 16),
      ("80x48x1", 0.5, 64), ("80x48x17", 1.0, 16)]  # keep 0 drops 96x96x17
  assert buckets.size_for(768, 9 / 16) == (576, 1024) and buckets.size_for(20, 1.0) == (16, 16)
  for table_, match in (({"64": {"17": (1.5, 16)}}, r"input.buckets\['64'\]\['17'\] = \(1.5, 16\)"),
                        ({"64": {"x": (1.0, 16)}}, r"input.buckets\['64'\]\['x'\]: the frame count"),
                        ({"sd": {"17": (1.0, 16)}}, "input.buckets key 'sd'"),
                        ({"64": {"17": (1.0,)}}, r"expected \(keep_probability, batch_size\)"), ({}, "empty")):
    with pytest.raises(ValueError, match=match):
      buckets.parse_table(table_)
  with pytest.raises(ValueError, match="'3-5' is not 'height:width'"):
    buckets.parse_table({"64": {"17": (1.0, 16)}}, ("3-5",))


def test_block_order_is_proportional_and_fixed_by_the_seed():
  weights = [10.0, 5.0, 1.0, 0.01]
  counts = buckets.block_counts(weights, 64)
  assert counts.tolist() == [39, 20, 4, 1]  # shares 39.98/19.99/4.00/0.04: largest remainders, at least 1 each
  a, b = buckets.block_order(counts, seed=0, index=3), buckets.block_order(counts, seed=0, index=3)
  np.testing.assert_array_equal(a, b)
  assert np.bincount(a, minlength=4).tolist() == counts.tolist()
  assert not np.array_equal(a, buckets.block_order(counts, seed=1, index=3))
  assert not np.array_equal(a, buckets.block_order(counts, seed=0, index=4))
  with pytest.raises(ValueError, match="input.bucket_block=2 is smaller than the number of buckets"):
    buckets.block_counts(weights, 2)


def _bucketed(data_dir, **train):
  c = toy_ae.get_config("runlocal")
  c.input.data_dir = data_dir
  c.input.builder_config = "{height}x{width}x{frames}_tiny"  # Captioned Shapes at any size
  c.input.aspect_ratios = ("1:1", "1:2")
  c.input.buckets = {"32": {"9": (1.0, 8), "5": (1.0, 8)}}  # 32x32 and 16x48, 9 and 5 frames
  c.input.bucket_block = 4
  c.schedule.name = "constant"
  c.schedule.warmup_steps = 0
  c.train.update({"checkpoint_every": 6, "log_every": 4, **train})
  return c


def test_bucketed_input_resumes_from_its_iterator_state(shapes_data_dir):
  c = _bucketed(shapes_data_dir)
  table = buckets.table(c.input)
  sources = [buckets.bucket_input(c.input, b) for b in table]
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  sources = [pipeline.data_source(s, "train") for s in sources]
  it = iter(buckets.make_dataset(c.input, sources, seed=5))
  shapes = [next(it)["video"].shape for _ in range(6)]
  state = it.get_state()
  rest = [next(it)["video"] for _ in range(6)]
  # each block of 4 steps serves each of the 4 (equal-weight) buckets once
  assert sorted(shapes[:4]) == sorted((8, b.frames, b.height, b.width, 3) for b in table)
  fresh = iter(buckets.make_dataset(c.input, sources, seed=5))
  fresh.set_state(state)
  for expected in rest:
    np.testing.assert_array_equal(next(fresh)["video"], expected)


def test_packed_steps_hold_every_bucket_and_resume(shapes_data_dir):
  c = _bucketed(shapes_data_dir)
  c.input.pack_length = 64
  table = buckets.table(c.input)
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  sources = [pipeline.data_source(buckets.bucket_input(c.input, b), "train") for b in table]
  it = iter(buckets.make_dataset(c.input, sources, seed=5))
  first = next(it)
  parts = buckets.split_packed(first)
  assert sorted(parts) == sorted(b.name for b in table)
  for b in table:
    assert parts[b.name]["video"].shape == (8, b.frames, b.height, b.width, 3)
  state = it.get_state()
  rest = [next(it) for _ in range(2)]
  fresh = iter(buckets.make_dataset(c.input, sources, seed=5))
  fresh.set_state(state)
  for expected in rest:
    got = next(fresh)
    for key in expected:
      if expected[key].dtype.kind not in "OUS":
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  with pytest.raises(ValueError, match="'video' of a packed step has no '@bucket' suffix"):
    buckets.split_packed({"video": 0})


def test_one_compile_per_bucket_and_resume_equals_uninterrupted(shapes_data_dir, tmp_path, caplog):
  straight = str(tmp_path / "straight")
  with caplog.at_level(logging.INFO):
    loop.train(_bucketed(shapes_data_dir, steps=12), straight)
  # 12 steps visit each of the 4 buckets 3 times; each compiles once
  assert caplog.text.count("Compiled the train step in") == 4
  lines = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
  assert [m["compiles"] for m in lines if "loss" in m] == [4, 4, 4]

  split = str(tmp_path / "split")
  loop.train(_bucketed(shapes_data_dir, steps=6), split)
  loop.train(_bucketed(shapes_data_dir, steps=12), split)
  assert_same_final_state(straight, split, 12)
