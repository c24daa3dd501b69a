"""T5 v1.1 encoder: parity with transformers' T5EncoderModel (fp32, random weights; tiny and XXL widths, with and
without a mask), the HF-folder loader (sharded, bf16, mismatch errors; folders written by transformers), logical-axis
sharding, and the text-encoder factory ('t5' from a folder, 'byte' trainable). Without torch and transformers
the parity tests and those on folders transformers writes are skipped."""
import gc
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from reference_extra import need

from vdm_jax.convert import safetensors_io as st
from vdm_jax.convert.t5 import load_encoder
from vdm_jax.models.t5 import T5Encoder, relative_position_bucket
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.parallel import sharding

TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4)
# T5-XXL v1.1 widths with 2 layers (the second reuses the first's position bias); a small vocab keeps it light.
XXL_2 = dict(vocab_size=128, d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64)


def max_rel_err(a, b):
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def save_t5(path, widths, seed=0, **save_kwargs):
  """A randomly initialised transformers T5EncoderModel (v1.1: gated-gelu), norms randomised too, saved to path."""
  torch, transformers = need("torch"), need("transformers")
  torch.manual_seed(seed)
  config = transformers.T5Config(**widths, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 dropout_rate=0.0, relative_attention_num_buckets=32,
                                 relative_attention_max_distance=128)
  model = transformers.T5EncoderModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:  # ones at init: randomise so a dropped norm scale cannot pass
        p.uniform_(0.5, 1.5)
  model.save_pretrained(str(path), **save_kwargs)
  return model


def reference(model, ids, mask):
  torch = need("torch")
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask))
  return out.last_hidden_state.numpy()


def inputs(vocab_size, batch, length, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  mask[0, length * 2 // 3:] = 0  # padded tail, as a tokenizer pads
  ids[mask == 0] = 0
  return ids, mask


def test_relative_position_bucket_matches_transformers(torch, transformers):
  bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket  # pylint: disable=protected-access
  rel = np.arange(-3000, 3001)
  for buckets, distance in ((32, 128), (64, 256), (8, 20)):
    want = bucket(torch.tensor(rel), True, buckets, distance).numpy()
    got = relative_position_bucket(rel, bidirectional=True, num_buckets=buckets, max_distance=distance)
    np.testing.assert_array_equal(got, want)
  want = bucket(torch.tensor(rel), False, 32, 128).numpy()
  np.testing.assert_array_equal(relative_position_bucket(rel, bidirectional=False), want)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny T5 encoder folder written by transformers (the tests that use it are parity tests)."""
  path = tmp_path_factory.mktemp("t5_tiny")
  model = save_t5(path, TINY)
  module, params = load_encoder(str(path))
  return path, model, module, params


def test_tiny_parity_with_and_without_mask(tiny):
  _, model, module, params = tiny
  # 150 tokens: relative distances beyond max_distance=128 reach the last buckets.
  ids, mask = inputs(TINY["vocab_size"], 2, 150)
  apply = jax.jit(module.apply)
  for m in (None, mask):
    want = reference(model, ids, m)
    got = np.asarray(apply({"params": params}, ids, m))
    assert got.shape == (2, 150, TINY["d_model"]) and got.dtype == np.float32
    assert max_rel_err(got, want) <= 1e-5, (m is None, max_rel_err(got, want))
  # The mask matters (else the test above could not tell a dropped mask).
  assert max_rel_err(reference(model, ids, None), reference(model, ids, mask)) > 1e-2


def test_xxl_widths_parity_sharded_folder(tmp_path):
  # A sharded folder (model.safetensors.index.json + shards), as the released T5-XXL text encoders are stored.
  model = save_t5(tmp_path, XXL_2, max_shard_size="400MB")
  assert os.path.isfile(tmp_path / "model.safetensors.index.json")
  ids, mask = inputs(XXL_2["vocab_size"], 2, 12)
  want = {m is None: reference(model, ids, m) for m in (None, mask)}
  del model
  gc.collect()
  module, params = load_encoder(str(tmp_path))
  assert params["block_0"]["attention"]["q"].shape == (4096, 64, 64)
  assert params["block_1"]["mlp"]["wi_0"]["kernel"].shape == (4096, 10240)
  apply = jax.jit(module.apply)
  for m in (None, mask):
    err = max_rel_err(apply({"params": params}, ids, m), want[m is None])
    print(f"XXL widths, 2 layers, mask={m is not None}: max relative error {err:.2e}")
    assert err <= 1e-5


def test_bfloat16_load(tiny):
  path, model, _, _ = tiny
  module, params = load_encoder(str(path), dtype=jnp.bfloat16)
  assert params["block_0"]["attention"]["q"].dtype == jnp.bfloat16
  assert params["block_0"]["mlp"]["wo"]["kernel"].dtype == np.float32  # as transformers' _keep_in_fp32_modules
  ids, _ = inputs(TINY["vocab_size"], 2, 16)
  got = module.apply({"params": params}, ids)
  assert got.dtype == jnp.bfloat16
  assert max_rel_err(got.astype(jnp.float32), reference(model, ids, None)) < 3e-2


def test_mismatch_errors_name_the_tensor(tiny, tmp_path):
  path, _, _, _ = tiny
  tensors = dict(st.read_safetensors(str(path / "model.safetensors")))
  config = json.loads((path / "config.json").read_text())

  def folder(name, tensors, **config_changes):
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**config, **config_changes}))
    st.write_safetensors(str(out / "model.safetensors"), tensors)
    return str(out)

  missing = {k: v for k, v in tensors.items() if k != "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"}
  with pytest.raises(st.WeightsMismatchError, match="block_1/mlp/wi_1/kernel"):
    load_encoder(folder("missing", missing))
  extra = {**tensors, "encoder.block.0.layer.2.layer_norm.weight": np.ones(32, np.float32)}
  with pytest.raises(st.WeightsMismatchError, match="encoder.block.0.layer.2.layer_norm.weight"):
    load_encoder(folder("extra", extra))
  with pytest.raises(st.WeightsMismatchError, match="block_0/mlp/wi_0/kernel has shape"):
    load_encoder(folder("wrong_d_ff", tensors, d_ff=40))
  with pytest.raises(st.WeightsMismatchError, match="block_3"):  # config says 4 layers, the file has 3
    load_encoder(folder("layers", tensors, num_layers=4))
  with pytest.raises(ValueError, match="feed_forward_proj='gated-swish'"):
    load_encoder(folder("act", tensors, feed_forward_proj="gated-swish"))


def test_logical_axes_shard_and_match_unsharded():
  module = T5Encoder(**TINY)
  ids, mask = inputs(TINY["vocab_size"], 8, 16)
  boxed = jax.eval_shape(module.init, jax.random.key(0), ids)
  specs = nn.get_partition_spec(boxed)["params"]
  assert specs["token_embedding"]["embedding"] == P("vocab", "embed")
  assert specs["relative_attention_bias"] == P(None, "heads")
  assert specs["block_0"]["attention"]["q"] == P("embed", "heads", "kv")
  assert specs["block_0"]["attention"]["o"] == P("heads", "kv", "embed")
  assert specs["block_0"]["mlp"]["wi_0"]["kernel"] == P("embed", "mlp")
  assert specs["block_0"]["mlp"]["wo"]["kernel"] == P("mlp", "embed")
  assert specs["block_0"]["attention_norm"]["scale"] == P("norm")

  params = nn.meta.unbox(module.init(jax.random.key(0), ids))
  want = module.apply(params, ids, mask)
  mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    sharded = jax.device_put(params, shardings)
    assert sharded["params"]["block_0"]["attention"]["q"].sharding.spec == P("fsdp", "tensor", None)
    got = jax.jit(module.apply)(sharded, sharding.shard_batch(ids, mesh), sharding.shard_batch(mask, mesh))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_factory_t5_folder_matches_transformers_pipeline(transformers, tiny, tmp_path):
  """'t5' from a diffusers-style folder (text_encoder/ + tokenizer/): tokenizer + encoder end to end, no mask."""
  from vdm_jax import text  # pylint: disable=g-import-not-at-top
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  path, model, _, _ = tiny
  os.symlink(path, tmp_path / "text_encoder")
  (tmp_path / "tokenizer").mkdir()
  lines = ["a red circle moving left", "a blue square moving up", "the quick brown fox jumps over the lazy dog"] * 20
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "tokenizer" / "spiece"),
                                 vocab_size=TINY["vocab_size"] - 10, model_type="unigram", pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
  section = text.default_config()
  section.update(type="t5", path=str(tmp_path), max_length=20)
  encoder = text.build(section)
  assert not encoder.use_attention_mask  # the CogVideoX choice
  prompts = ["a red circle moving left", ""]
  hf_tok = transformers.T5Tokenizer.from_pretrained(str(tmp_path / "tokenizer"))
  ids = hf_tok(prompts, padding="max_length", max_length=20, truncation=True, return_tensors="np")["input_ids"]
  params = encoder.init(jax.random.key(0))
  np.testing.assert_array_equal(encoder.tokenize(prompts)[0], ids)
  assert max_rel_err(encoder.encode(params, prompts), reference(model, ids, None)) <= 1e-5


def test_factory_byte_encoder_trains():
  from vdm_jax import text  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  section = text.default_config()
  section.update(d_model=32, d_kv=8, num_heads=2, d_ff=64, num_layers=1, max_length=16, trainable=True)
  encoder = text.build(section)
  assert encoder.module.vocab_size == 259 and encoder.d_model == 32
  params = encoder.init(jax.random.key(0))
  ids, mask = encoder.tokenize(["a red circle moving left", "a blue square moving up"])

  def loss(p):  # pull the two captions' mean embeddings apart
    e = encoder.apply(p, ids, mask).mean(axis=1)
    return -jnp.sum(jnp.square(e[0] - e[1]))

  grads = jax.grad(loss)(params)
  norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads)
  assert all(np.isfinite(n) and n > 0 for n in jax.tree.leaves(norms)), norms
  bad = ml_collections.ConfigDict(section.to_dict())
  bad.type = "clip"
  with pytest.raises(config_lib.ConfigError, match=r"text.type.*allowed values: \['byte', 't5'\]"):
    text.build(bad)
  bad.update(type="t5", path="")
  with pytest.raises(config_lib.ConfigError, match="text.path"):
    text.build(bad)
