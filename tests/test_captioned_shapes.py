"""The `captioned_shapes` tfds builder: builds offline into array_record, reads back via as_data_source and grain."""
import grain
import numpy as np
import pytest

from vdm_jax.data import captioned_shapes, shapes

HELDOUT = (("red", "circle"), ("blue", "left"))
TINY = captioned_shapes.CaptionedShapesConfig(
    name="tiny_heldout", height=32, width=32, num_frames=9, num_train=32, num_validation=16, num_heldout=16,
    heldout=HELDOUT)
SPLITS = ("train", "validation", "heldout")


def _records(source):
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  captioned_shapes.load_data_source(TINY, "train", data_dir=str(data_dir))
  return str(data_dir)


@pytest.fixture(scope="module")
def records(data_dir):
  builder = captioned_shapes.builder(TINY, data_dir)
  return {split: _records(source) for split, source in builder.as_data_source().items()}


def test_splits_and_record_format(data_dir, records):
  builder = captioned_shapes.builder(TINY, data_dir)
  assert builder.name == "captioned_shapes" and str(builder.info.file_format.value) == "array_record"
  assert {split: len(recs) for split, recs in records.items()} == dict(train=32, validation=16, heldout=16)
  record = records["train"][0]
  assert set(record) == {"video", "caption", "color", "shape", "motion", "seed"}
  assert record["video"].dtype == np.uint8 and record["video"].shape == (9, 32, 32, 3)
  assert all(isinstance(record[key], bytes) for key in ("caption", "color", "shape", "motion"))
  text = captioned_shapes.decode_text(record)
  assert shapes.parse_caption(text["caption"]) == {key: text[key] for key in ("color", "shape", "motion")}


def test_records_are_the_rendered_clips(records):
  for split in SPLITS:
    for index, record in enumerate(records[split]):
      assert record["seed"] == captioned_shapes.split_seed(TINY, split, index)  # record i is example i
      text = captioned_shapes.decode_text(record)
      attributes = {key: text[key] for key in ("color", "shape", "motion")}
      clip = shapes.render_clip(record["seed"], 9, 32, 32, **attributes)
      np.testing.assert_array_equal(record["video"], clip["video"])
      assert text["caption"] == clip["caption"]


def test_seed_ranges_are_disjoint(records):
  seeds = [{int(r["seed"]) for r in records[split]} for split in SPLITS]
  assert not seeds[0] & seeds[1] and not seeds[0] & seeds[2] and not seeds[1] & seeds[2]


def test_heldout_combinations_only_in_heldout_split(records):
  for split in SPLITS:
    held = [shapes.is_heldout(captioned_shapes.decode_text(r), HELDOUT) for r in records[split]]
    assert all(held) if split == "heldout" else not any(held), split


def test_build_is_deterministic(tmp_path, records):
  source = captioned_shapes.load_data_source(TINY, "heldout", data_dir=str(tmp_path))
  again = _records(source)
  assert len(again) == len(records["heldout"])
  for a, b in zip(again, records["heldout"]):
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(a["video"], b["video"])
    assert all(a[k] == b[k] for k in ("caption", "color", "shape", "motion", "seed"))


def test_without_heldout_records_are_plain_render_clip(tmp_path):
  config = captioned_shapes.CaptionedShapesConfig(
      name="tiny", height=32, width=32, num_frames=9, num_train=8, num_validation=4, seed_offset=5)
  source = captioned_shapes.load_data_source(config, "validation", data_dir=str(tmp_path))
  for index in range(len(source)):
    clip = shapes.render_clip(5 + captioned_shapes.SPLIT_SEED_BASE["validation"] + index, 9, 32, 32)
    np.testing.assert_array_equal(source[index]["video"], clip["video"])
    assert source[index]["caption"].decode() == clip["caption"]
  with pytest.raises(ValueError, match="heldout"):
    captioned_shapes.load_data_source(config, "heldout", data_dir=str(tmp_path))


def test_grain_reads_the_source(data_dir):
  source = captioned_shapes.load_data_source(TINY, "train", data_dir=data_dir, prepare=False)
  dataset = grain.MapDataset.source(source).shuffle(seed=0).map(captioned_shapes.decode_text)
  captions = [example["caption"] for example in dataset]
  assert len(captions) == 32 and all(isinstance(c, str) for c in captions)

  class Normalize(grain.transforms.Map):

    def map(self, record):
      return {"video": record["video"].astype(np.float32) / 127.5 - 1.0, "seed": np.int64(record["seed"])}

  sampler = grain.samplers.IndexSampler(len(source), shuffle=True, num_epochs=1, seed=0)
  loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=0,
                            operations=[Normalize(), grain.transforms.Batch(batch_size=8)])
  batches = list(loader)
  assert len(batches) == 4 and batches[0]["video"].shape == (8, 9, 32, 32, 3)
  assert sorted(np.concatenate([b["seed"] for b in batches]).tolist()) == sorted(
      captioned_shapes.split_seed(TINY, "train", i) for i in range(32))


def test_predefined_configs_and_validation(tmp_path):
  configs = {c.name: c for c in captioned_shapes.CaptionedShapes.BUILDER_CONFIGS}
  assert set(configs) == {"64x64x17", "32x32x9", "32x32x9_tiny", "64x64x17_heldout"}
  builder = captioned_shapes.builder(data_dir=str(tmp_path))
  assert builder.builder_config.name == "64x64x17"
  assert builder.info.features["video"].shape == (17, 64, 64, 3)
  assert configs["32x32x9"].splits.keys() == {"train", "validation"}
  assert configs["64x64x17_heldout"].splits.keys() == {"train", "validation", "heldout"}
  with pytest.raises(FileNotFoundError):
    captioned_shapes.load_data_source("32x32x9", "train", data_dir=str(tmp_path), prepare=False)
  with pytest.raises(ValueError, match="held-out pair"):
    captioned_shapes.CaptionedShapesConfig(name="bad", heldout=(("red", "pink"),))
  with pytest.raises(ValueError, match="num_heldout"):
    captioned_shapes.CaptionedShapesConfig(name="bad", num_heldout=4)
