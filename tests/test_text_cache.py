"""Caches (vdm_jax.data.cache), text kind: records round-trip bit for bit, and a grain pipeline over Captioned
Shapes (`32x32x9_tiny`) serves each example's cached embedding with its batch."""
import os

import ml_dtypes
import numpy as np
import pytest

from vdm_jax import text
from vdm_jax.data import pipeline
from vdm_jax.data import cache as cache_lib
from vdm_jax.data import records
from vdm_jax.train import config as config_lib

BATCH = 64


@pytest.fixture(scope="module")
def encoder():
  section = text.default_config()
  section.update(d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1, max_length=32)
  enc = text.build(section)
  import jax  # pylint: disable=g-import-not-at-top
  return enc, enc.init(jax.random.key(0))


@pytest.fixture(scope="module")
def input_config(shapes_data_dir):
  c = config_lib.generic_config().input
  c.builder_config = "32x32x9_tiny"
  c.data_dir = shapes_data_dir
  c.batch_size = 8
  c.num_threads = 1
  return c


@pytest.fixture(scope="module")
def train_cache(tmp_path_factory, input_config, encoder):
  directory = str(tmp_path_factory.mktemp("text_cache"))
  return cache_lib.write_text_split(directory, input_config, "train", *encoder, batch_size=BATCH)


def captions(input_config, split="train"):
  source = pipeline.data_source(input_config, split)
  return [source[i]["caption"].decode("utf-8") for i in range(len(source))]


def test_record_round_trip_is_bitwise():
  rng = np.random.default_rng(0)
  for array in (rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(2, 7)).astype(ml_dtypes.bfloat16),
                np.array([np.nan, -0.0, np.inf], np.float32)):
    back, header = records.decode_record(records.encode_record(array, {"index": 3, "caption_sha256": "x"}))
    assert back.dtype == array.dtype and back.shape == array.shape and header["index"] == 3
    assert back.tobytes() == array.tobytes()


def test_cache_round_trip_exact(train_cache, input_config, encoder):
  enc, params = encoder
  texts = captions(input_config)
  assert len(train_cache) == len(texts) == 512
  assert train_cache.meta["shape"] == [32, 16] and train_cache.meta["source"]["split"] == "train"
  for start in (0, 448):  # the cache encodes in batches of BATCH: recompute two of them the same way
    want = np.asarray(enc.encode(params, texts[start:start + BATCH]))
    _, mask = enc.tokenize(texts[start:start + BATCH])
    for i in range(BATCH):
      got = train_cache[start + i]
      assert got["text_embeds"].dtype == np.float32 and got["text_embeds"].tobytes() == want[i].tobytes()
      np.testing.assert_array_equal(got["text_mask"], mask[i])
      assert got["caption_sha256"] == cache_lib.caption_hash(texts[start + i])
  empty = train_cache.empty_prompt()
  assert empty["text_embeds"].tobytes() == np.asarray(enc.encode(params, [""]))[0].tobytes()
  assert empty["text_mask"].sum() == 1  # EOS only
  # Reopened from disk (what a worker process does): the same bytes.
  reopened = cache_lib.Cache(train_cache.directory)
  assert reopened[17]["text_embeds"].tobytes() == train_cache[17]["text_embeds"].tobytes()
  assert len(set(train_cache[i]["text_embeds"].tobytes() for i in range(64))) > 10  # captions differ


def test_pipeline_serves_cached_embeddings(train_cache, input_config, encoder):
  enc, params = encoder
  source = cache_lib.cached_source(input_config, "train", train_cache.directory)
  pp = "decode_video|value_range(-1, 1)|decode_text('caption')|keep('video', 'caption', 'text_embeds', 'text_mask')"
  ds = pipeline.make_dataset(input_config, split="train", source=source, pp=pp, shuffle=True, seed=3)
  it = iter(ds)
  for _ in range(3):
    batch = next(it)
    assert batch["video"].shape == (8, 9, 32, 32, 3) and batch["text_embeds"].shape == (8, 32, 16)
    # Recomputed for this batch's captions (another batch size, so compared with a tolerance: max |diff| <= 1e-5).
    want = np.asarray(enc.encode(params, list(batch["caption"])))
    np.testing.assert_allclose(batch["text_embeds"], want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(batch["text_mask"], enc.tokenize(list(batch["caption"]))[1])
  assert len(set(batch["caption"])) > 1  # shuffled batches of different captions


def test_mismatched_cache_is_detected(tmp_path, train_cache, input_config, encoder):
  source = pipeline.data_source(input_config, "train")
  texts = captions(input_config)
  shifted = cache_lib.write_text(str(tmp_path / "shifted"), texts[1:] + texts[:1], *encoder, batch_size=BATCH)
  joined = cache_lib.CachedSource(source, shifted)
  first_differs = next(i for i in range(len(texts)) if texts[i] != texts[(i + 1) % len(texts)])
  with pytest.raises(cache_lib.CacheMismatchError, match=f"Example {first_differs}: its caption"):
    joined[first_differs]
  with pytest.raises(cache_lib.CacheMismatchError, match="source has 64 examples, the cache .* has 512"):
    cache_lib.CachedSource(pipeline.data_source(input_config, "validation"), train_cache)
  with pytest.raises(cache_lib.CacheMismatchError, match="holds split 'train', not 'validation'"):
    cache_lib.cached_source(input_config, "validation", train_cache.directory)
  with pytest.raises(FileNotFoundError, match="No cache.json"):
    cache_lib.Cache(str(tmp_path))


def test_cache_of_replaced_t5_weights_is_refused(tmp_path, input_config, encoder):
  """A frozen encoder loaded from a folder is identified by its weights files too: the same path holding other
  weights (fine-tuned and saved over, or replaced) refuses the cache its old weights wrote."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import t2v_data  # pylint: disable=g-import-not-at-top
  enc, params = encoder
  folder = tmp_path / "t5"
  folder.mkdir()
  (folder / "config.json").write_text("{}")
  weights = folder / "model.safetensors"
  weights.write_bytes(b"0" * 64)  # only its size and mtime are read: the params come from `encoder_params`
  from_folder = dataclasses.replace(enc, weights_path=str(folder))
  config = types.SimpleNamespace(input=input_config,
                                 text=types.SimpleNamespace(cache_dir=str(tmp_path / "text_cache")))
  experiment = types.SimpleNamespace(
      config=config, text=from_folder, encoder_params=lambda: params,
      space=types.SimpleNamespace(split_dir=lambda root, name, split: os.path.join(root, split)))
  cache = t2v_data.text_cache(experiment, "validation")
  assert cache.meta["encoder"]["weights"]["model.safetensors"][0] == 64
  assert t2v_data.text_cache(experiment, "validation").meta == cache.meta  # the same weights: reused
  weights.write_bytes(b"1" * 80)
  with pytest.raises(cache_lib.CacheMismatchError, match="was written by the encoder"):
    t2v_data.text_cache(experiment, "validation")
