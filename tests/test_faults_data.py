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


# ------------------------------------------------------------------------------------ damaged Captioned Shapes


TINY = "32x32x9_tiny"
NAME = f"captioned_shapes/{TINY}"


@pytest.fixture(scope="module")
def _built(tmp_path_factory):
  """`32x32x9_tiny` built once for this module; tests damage copies of it (never the shared fixture)."""
  from vdm_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds_faults")
  captioned_shapes.load_data_source(TINY, "train", data_dir=str(data_dir))
  return data_dir


@pytest.fixture
def data_dir(_built, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(_built, tmp_path / "tfds")
  return tmp_path / "tfds"


def _version(data_dir):
  return data_dir / "captioned_shapes" / TINY / "1.0.0"


def _train_shard(data_dir):
  (shard,) = _version(data_dir).glob("captioned_shapes-train.array_record-*")
  return shard


def _load(data_dir, split="train"):
  from vdm_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  return captioned_shapes.load_data_source(TINY, split, data_dir=str(data_dir))


def test_truncated_shard_names_dataset_split_and_file(data_dir):
  """It used to load, then fail at the first read with a Riegeli error naming no file."""
  from vdm_jax.data import sources  # pylint: disable=g-import-not-at-top
  shard = _train_shard(data_dir)
  shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
  expected = (rf"{NAME}, split 'train', file {shard}.*delete the folder {_version(data_dir)} and run again")
  with pytest.raises(sources.DatasetError, match=expected):
    _load(data_dir)
  config = _input_config("captioned_shapes")
  config.builder_config, config.data_dir = TINY, str(data_dir)
  with pytest.raises(sources.DatasetError, match=expected):  # what make_dataset reads through
    pipeline.data_source(config)
  with pytest.raises(sources.DatasetError, match=rf"{NAME}, split 'train', file {shard}"):  # any tfds dataset
    pipeline.tfds_source(NAME, "train", str(data_dir))
  assert len(_load(data_dir, "validation")) == 64  # the other split's file is intact


def test_overwritten_record_names_record_and_file(data_dir):
  """Bytes overwritten inside a shard (same size): the split loads, the read of a damaged record names it."""
  from vdm_jax.data import sources  # pylint: disable=g-import-not-at-top
  shard = _train_shard(data_dir)
  data = bytearray(shard.read_bytes())
  quarter = len(data) // 4
  data[quarter:2 * quarter] = b"\xff" * quarter
  shard.write_bytes(bytes(data))
  source = _load(data_dir)
  with pytest.raises(sources.DatasetError, match=rf"record \d+ of {NAME}, split 'train' from file {shard}"):
    for index in range(len(source)):
      source[index]  # pylint: disable=pointless-statement


def test_missing_dataset_info_says_incomplete_and_what_to_delete(data_dir):
  """It used to read as "Unknown split 'train'; allowed values: []"."""
  from vdm_jax.data import sources  # pylint: disable=g-import-not-at-top
  (_version(data_dir) / "dataset_info.json").unlink()
  with pytest.raises(sources.DatasetError,
                     match=rf"{NAME} in {_version(data_dir)} is incomplete: it has no dataset_info.json.*"
                           rf"delete the folder {_version(data_dir)}"):
    _load(data_dir)


def _incomplete(folder, name, age):
  """An `incomplete.*` build folder with one file, last written `age` seconds ago."""
  import os  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  path = folder / name
  path.mkdir(parents=True)
  (path / "captioned_shapes-train.array_record-00000-of-00001").write_bytes(b"partial")
  for p in (path / "captioned_shapes-train.array_record-00000-of-00001", path):
    os.utime(p, (time.time() - age, time.time() - age))
  return path


def test_stale_incomplete_folders_are_removed_with_a_log_line(data_dir, caplog):
  """Interrupted builds used to leave their `incomplete.*` folders behind for good."""
  from vdm_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  folder = data_dir / "captioned_shapes" / TINY
  stale = _incomplete(folder, "incomplete.OLD123_1.0.0", age=captioned_shapes.STALE_BUILD_SECONDS + 60)
  recent = _incomplete(folder, "incomplete.NEW456_1.0.0", age=5)  # maybe another tool building right now
  with caplog.at_level(logging.INFO):
    assert len(_load(data_dir)) == 512
  assert not stale.exists() and recent.exists()
  assert f"Deleting {stale}" in caplog.text and "interrupted build" in caplog.text


def test_stale_incomplete_folder_is_removed_before_building(tmp_path):
  from vdm_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  stale = _incomplete(tmp_path / "captioned_shapes" / TINY, "incomplete.OLD123_1.0.0",
                      age=captioned_shapes.STALE_BUILD_SECONDS + 60)
  assert len(_load(tmp_path, "validation")) == 64
  assert not stale.exists() and not list(stale.parent.glob("incomplete.*"))
