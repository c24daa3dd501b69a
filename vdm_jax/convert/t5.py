"""T5 encoder weights from a Hugging Face folder (`T5EncoderModel` / `T5Model` / `T5ForConditionalGeneration`).

    module, params = load_encoder("/path/CogVideoX-2b/text_encoder", dtype=jnp.bfloat16)
    embeds = module.apply({"params": params}, input_ids)            # [B, L] -> [B, L, d_model]

The folder holds `config.json` and `model.safetensors` or shards listed by `model.safetensors.index.json`; they are
read without torch. Only the encoder's tensors are used (a full T5's decoder tensors are skipped).
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.convert import safetensors_io as st
from vdm_jax.models.t5 import FEED_FORWARD_PROJ, T5Encoder
from vdm_jax.parallel import sharding

# Tensors a T5 folder may hold that the encoder does not use (decoder, LM head of full models).
_NOT_ENCODER = re.compile(r"^(decoder\.|lm_head\.)")
_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.layer\.(\d)\.(.+)\.weight$")
_BLOCK_PARAMS = {  # (layer index inside the block, torch name) -> (flax sub-path, kind)
    (0, "layer_norm"): (("attention_norm", "scale"), "norm"),
    (0, "SelfAttention.q"): (("attention", "q"), "in_proj"),
    (0, "SelfAttention.k"): (("attention", "k"), "in_proj"),
    (0, "SelfAttention.v"): (("attention", "v"), "in_proj"),
    (0, "SelfAttention.o"): (("attention", "o"), "out_proj"),
    (1, "layer_norm"): (("mlp_norm", "scale"), "norm"),
    (1, "DenseReluDense.wi"): (("mlp", "wi", "kernel"), "linear"),
    (1, "DenseReluDense.wi_0"): (("mlp", "wi_0", "kernel"), "linear"),
    (1, "DenseReluDense.wi_1"): (("mlp", "wi_1", "kernel"), "linear"),
    (1, "DenseReluDense.wo"): (("mlp", "wo", "kernel"), "linear"),
}


# Fields of every T5 config.json (transformers writes them for every T5 since the first release); the others
# (relative_attention_max_distance, feed_forward_proj, ...) are absent from older configs and default as
# transformers' T5Config defaults them.
REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")


def encoder_from_config(config: dict[str, Any], dtype=jnp.float32) -> T5Encoder:
  """The T5Encoder for a transformers T5Config dict; `dtype` is the compute dtype. Raises ModelConfigError naming
  the first missing REQUIRED field."""
  st.require(config, REQUIRED, "T5")
  model_type = config.get("model_type", "t5")
  if model_type != "t5":
    raise ValueError(f"config.json has model_type={model_type!r}; only 't5' (T5, T5 v1.1, ByT5, Flan-T5) is "
                     "supported (umT5 and mT5 variants with per-layer position biases are not).")
  proj = config.get("feed_forward_proj", "relu")
  if proj not in FEED_FORWARD_PROJ:
    raise ValueError(f"config.json has feed_forward_proj={proj!r}; supported: {sorted(FEED_FORWARD_PROJ)}.")
  return T5Encoder(
      vocab_size=config["vocab_size"], d_model=config["d_model"], d_kv=config["d_kv"], d_ff=config["d_ff"],
      num_layers=config["num_layers"], num_heads=config["num_heads"],
      relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6), feed_forward_proj=proj, dtype=dtype)


def convert(tensors: dict[str, np.ndarray], module: T5Encoder) -> tuple[dict[tuple[str, ...], np.ndarray], list[str]]:
  """transformers tensor names -> {flax path: array} for `module`, and the names of tensors that were not used."""
  h, d = module.num_heads, module.d_kv
  values: dict[tuple[str, ...], np.ndarray] = {}
  unused = []
  for name, w in tensors.items():
    if _NOT_ENCODER.match(name):
      continue
    if name in ("shared.weight", "encoder.embed_tokens.weight"):
      # The encoder's embedding is `shared` (tied); some files store it under both names, some only under one.
      values[("token_embedding", "embedding")] = w
      continue
    if name == "encoder.final_layer_norm.weight":
      values[("final_norm", "scale")] = w
      continue
    if name == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
      values[("relative_attention_bias",)] = w
      continue
    match = _BLOCK.match(name)
    if not match or (int(match.group(2)), match.group(3)) not in _BLOCK_PARAMS:
      unused.append(name)
      continue
    path, kind = _BLOCK_PARAMS[(int(match.group(2)), match.group(3))]
    if kind == "in_proj":  # torch [heads * d_kv, d_model] -> [d_model, heads, d_kv]
      w = st.linear(w).reshape(w.shape[1], h, d) if w.shape[0] == h * d else w
    elif kind == "out_proj":  # torch [d_model, heads * d_kv] -> [heads, d_kv, d_model]
      w = st.linear(w).reshape(h, d, w.shape[0]) if w.shape[1] == h * d else w
    elif kind == "linear":
      w = st.linear(w)
    values[(f"block_{match.group(1)}",) + path] = w
  return values, unused


def load_encoder(path: str, dtype=jnp.float32, *, keep_wo_float32: bool = True) -> tuple[T5Encoder, dict]:
  """A Hugging Face T5 folder -> (T5Encoder, params).

  `dtype` is the compute dtype and the dtype of the parameters (e.g. jnp.bfloat16 halves the 19 GB of T5-XXL).
  With `keep_wo_float32` (default, as transformers' `_keep_in_fp32_modules`), the feed-forward output projections
  `wo` stay float32 and are computed in float32. Raises WeightsMismatchError naming the first missing, unexpected
  or wrongly shaped tensor.
  """
  config = st.read_config(path)
  module = encoder_from_config(config, dtype=dtype).clone(wo_dtype=jnp.float32 if keep_wo_float32 else dtype)
  values, unused = convert(st.read_tensors(path), module)
  abstract = sharding.strip_boxes(
      jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"])

  def target(key_path, leaf):  # `assign` casts each tensor once, straight to its leaf's dtype
    is_wo = any(getattr(k, "key", None) == "wo" for k in key_path)
    return jax.ShapeDtypeStruct(leaf.shape, jnp.float32 if is_wo and keep_wo_float32 else dtype)

  abstract = jax.tree_util.tree_map_with_path(target, abstract)
  return module, st.assign(abstract, values, unused=unused, source=path)
