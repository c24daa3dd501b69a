"""Damaged data: unreadable videos in the input pipeline are skipped and counted; damaged or half-built Captioned
Shapes folders fail naming dataset, split and file, and stale `incomplete.*` build folders are cleaned.
docs/faults_data.md lists each fault and the test here that checks it."""
import json
import logging

import ml_collections
import numpy as np
import pytest

from vdm_jax.data import pipeline, shapes
from vdm_jax.io import video as video_io
from vdm_jax.train import metrics as metrics_lib

PP = "decode_video|value_range(-1, 1)|decode_text('caption')|keep('video', 'caption')"


def _input_config(name):
  return ml_collections.ConfigDict(dict(dataset=name, builder_config="", split="train", data_dir="", shuffle_seed=0,
                                        batch_size=4, num_threads=2, prefetch=2, pp=PP))


def _mp4_source(num, bad):
  """`num` examples of Captioned Shapes clips as mp4 bytes; those at the indices in `bad` cut in half."""
  source = []
  for index in range(num):
    clip = shapes.render_clip(index, 9, 32, 32)
    data = video_io.encode_video(clip["video"], "mp4")
    source.append({"video": data[:len(data) // 2] if index in bad else data, "caption": clip["caption"].encode(),
                   "filename": f"clip_{index}.mp4"})
  return source


def test_pipeline_skips_and_counts_an_unreadable_video(caplog):
  """It used to stop training with a VideoReadError naming a deleted temporary file."""
  source = _mp4_source(8, bad={3})
  config = _input_config("faults_skip")
  with caplog.at_level(logging.WARNING):
    batches = list(pipeline.make_dataset(config, source=source, shuffle=False, repeat=False))
  assert pipeline.unreadable_count("faults_skip:train") == 1
  assert pipeline.unreadable_count() >= 1
  assert [b["video"].shape for b in batches] == [(4, 9, 32, 32, 3)] * 2  # batches keep their size
  captions = [c for b in batches for c in b["caption"]]
  assert captions == [source[i]["caption"].decode() for i in (0, 1, 2, 4, 4, 5, 6, 7)]  # 3 -> the next record
  assert "faults_skip:train[3]" in caplog.text and "clip_3.mp4" in caplog.text


def test_pipeline_order_is_unchanged_without_unreadable_videos():
  """Reading by index inside the map gives the batches the source-level pipeline gave (same shuffle, same rngs)."""
  import grain  # pylint: disable=g-import-not-at-top
  from vdm_jax.data import ops  # pylint: disable=g-import-not-at-top
  source = _mp4_source(8, bad=set())
  config = _input_config("faults_order")
  pp = PP + "|temporal_sample(3)"  # a random op: its rng must be the same too
  got = list(pipeline.make_dataset(config, source=source, pp=pp, seed=7, repeat=False))
  reference = (grain.MapDataset.source(source).shuffle(seed=7).random_map(ops.build(pp), seed=7)
               .batch(4, drop_remainder=True, batch_fn=pipeline._stack))  # pylint: disable=protected-access
  assert len(got) == len(reference) == 2
  for a, b in zip(got, reference):
    assert np.array_equal(a["video"], b["video"]) and list(a["caption"]) == list(b["caption"])
  assert pipeline.unreadable_count("faults_order:train") == 0


def test_pipeline_gives_up_on_a_mostly_unreadable_dataset(monkeypatch):
  monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_UNREADABLE", 3)
  source = _mp4_source(4, bad={0, 1, 2, 3})
  with pytest.raises(video_io.VideoReadError, match=r"3 consecutive unreadable examples in faults_all:train"):
    next(iter(pipeline.make_dataset(_input_config("faults_all"), source=source, shuffle=False)))


def test_unreadable_count_reaches_the_metrics(tmp_path, caplog):
  """The loop writes `data/unreadable` with every progress line; the console shows it once it is non-zero."""
  writer = metrics_lib.MetricWriter(str(tmp_path), total_steps=10)
  with caplog.at_level(logging.INFO):
    writer.write(1, {"loss": 1.0, "data/unreadable": 0}, progress=True)
    writer.write(2, {"loss": 1.0, "data/unreadable": 2}, progress=True)
  writer.close()
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [m["data/unreadable"] for m in lines] == [0, 2]
  progress = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
  assert "data/unreadable" not in progress[0] and "data/unreadable=2" in progress[1]
