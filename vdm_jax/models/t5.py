"""The T5 v1.1 encoder (the text encoder of CogVideoX), and the small byte-level encoder built from the same module.

    encoder = T5Encoder(vocab_size=32128, d_model=4096, d_ff=10240, num_layers=24, num_heads=64)   # T5-XXL v1.1
    params = encoder.init(rng, input_ids)["params"]
    embeds = encoder.apply({"params": params}, input_ids)          # [B, L] int -> [B, L, d_model]

The math (transformers' `T5EncoderModel`, read from the paper and the reference notes):
  x = embed(ids)                                  no scaling of the embedding, no absolute positions
  per block:  x += o(attention(rms_norm(x)))      logits q.k are NOT divided by sqrt(d_kv) (folded into q's init)
                                                  + a relative position bias [heads, L, L], computed once from
                                                  the first block's bucket embedding and shared by all blocks
              x += wo(act(wi_0(h)) * wi_1(h)),  h = rms_norm(x)      gated-GELU (tanh approximation) for v1.1
  out = rms_norm(x)
RMS norm: x / sqrt(mean(x^2) + eps) * scale, no mean subtraction and no bias, the mean in float32.

Attention mask: `attention_mask` [B, L] (1 = token, 0 = padding) hides padded keys. The CogVideoX pipeline passes no
mask (the padded positions are attended to, and the DiT was trained on such embeddings), so `None` is the default.

Parameters carry logical axes (`vocab`, `embed`, `heads`, `kv`, `mlp`, `norm`) so an XXL encoder (4.7B) shards with
the rest of the model under the config's rules.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models.layers import dense

Dtype = Any


def gelu_tanh(x: jax.Array) -> jax.Array:
  """GELU with the tanh approximation (transformers' `gelu_new`, used by T5 v1.1's gated feed-forward)."""
  return nn.gelu(x, approximate=True)


def gelu_exact(x: jax.Array) -> jax.Array:
  """GELU with the error function (transformers' `gelu`)."""
  return nn.gelu(x, approximate=False)


# transformers' T5Config: `feed_forward_proj` is "<act>" or "gated-<act>", and "gated-gelu" means the tanh GELU.
FEED_FORWARD_PROJ: dict[str, tuple[bool, Callable[[jax.Array], jax.Array]]] = {
    "relu": (False, nn.relu),
    "gelu": (False, gelu_exact),
    "gelu_new": (False, gelu_tanh),
    "silu": (False, nn.silu),
    "gated-gelu": (True, gelu_tanh),
    "gated-gelu_new": (True, gelu_tanh),
    "gated-relu": (True, nn.relu),
    "gated-silu": (True, nn.silu),
}


def relative_position_bucket(relative_position: np.ndarray, *, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
  """T5's bucket of each relative position (key - query), int32 in [0, num_buckets).

  Bidirectional: half the buckets for keys after the query. Within a half, distances below `max_exact = half / 2`
  get their own bucket; larger ones share logarithmically wider buckets up to `max_distance`, beyond which all
  share the last. Computed in float64 on the host (the sequence length is static); the 1e-6 absorbs rounding at
  the exact bucket edges (e.g. a distance of 64 lies exactly on one) so they land where the formula puts them.
  """
  relative_position = np.asarray(relative_position, np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0) * num_buckets
    distance = np.abs(relative_position)
  else:
    distance = np.maximum(-relative_position, 0)
  max_exact = num_buckets // 2
  log_ratio = np.log(np.maximum(distance, 1) / max_exact) / math.log(max_distance / max_exact)
  large = max_exact + np.floor(log_ratio * (num_buckets - max_exact) + 1e-6).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class RMSNorm(nn.Module):
  """T5's layer norm: x / sqrt(mean(x^2) + eps) * scale over the last axis; no mean, no bias; float32 inside.

  [..., D] -> [..., D] in `dtype`.
  """
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * scale.astype(jnp.float32)).astype(self.dtype)


class T5Attention(nn.Module):
  """Multi-head self-attention with an additive bias and unscaled logits. [B, L, D] -> [B, L, D]."""
  num_heads: int
  d_kv: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    """x [B, L, D]; bias float32 [B or 1, heads, L, L] (relative positions plus the mask's -inf-like values)."""
    d_model, h, d = x.shape[-1], self.num_heads, self.d_kv
    # T5 does not scale the logits by 1/sqrt(d_kv); it folds that into the init of q instead.
    kernel = lambda name, std, shape, axes: self.param(
        name, nn.with_logical_partitioning(nn.initializers.normal(std), axes), shape, self.param_dtype)
    q = kernel("q", (d_model * d) ** -0.5, (d_model, h, d), ("embed", "heads", "kv"))
    k = kernel("k", d_model ** -0.5, (d_model, h, d), ("embed", "heads", "kv"))
    v = kernel("v", d_model ** -0.5, (d_model, h, d), ("embed", "heads", "kv"))
    o = kernel("o", (h * d) ** -0.5, (h, d, d_model), ("heads", "kv", "embed"))
    x = x.astype(self.dtype)
    q, k, v = (jnp.einsum("bld,dhk->blhk", x, w.astype(self.dtype)) for w in (q, k, v))  # [B, L, heads, d_kv]
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # softmax in float32
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return jnp.einsum("blhk,hkd->bld", out, o.astype(self.dtype))


class T5MLP(nn.Module):
  """Feed-forward `wo(act(wi_0 x) * wi_1 x)` (gated) or `wo(act(wi x))`. [B, L, D] -> [B, L, D] in `wo_dtype`."""
  d_ff: int
  feed_forward_proj: str = "gated-gelu"
  dtype: Dtype = jnp.float32
  wo_dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gated, act = FEED_FORWARD_PROJ[self.feed_forward_proj]
    d_model = x.shape[-1]
    wi_init = nn.initializers.normal(d_model ** -0.5)
    wi = lambda name: dense(self.d_ff, ("embed", "mlp"), use_bias=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, kernel_init=wi_init, name=name)
    if gated:
      h = act(wi("wi_0")(x)) * wi("wi_1")(x)
    else:
      h = act(wi("wi")(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    # transformers keeps `wo` in float32 (`_keep_in_fp32_modules`): the sum over d_ff overflows float16 in T5-XXL.
    return dense(d_model, ("mlp", "embed"), use_bias=False, dtype=self.wo_dtype, param_dtype=self.param_dtype,
                 kernel_init=nn.initializers.normal(self.d_ff ** -0.5), name="wo")(h.astype(self.wo_dtype))


class T5Block(nn.Module):
  """Pre-norm residual block: attention then feed-forward. [B, L, D] float32 residual stream -> same."""
  num_heads: int
  d_kv: int
  d_ff: int
  feed_forward_proj: str = "gated-gelu"
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  wo_dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    norm = lambda name: RMSNorm(self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    h = T5Attention(self.num_heads, self.d_kv, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="attention")(norm("attention_norm")(x), bias)
    x = x + h.astype(x.dtype)
    h = T5MLP(self.d_ff, self.feed_forward_proj, dtype=self.dtype, wo_dtype=self.wo_dtype,
              param_dtype=self.param_dtype, name="mlp")(norm("mlp_norm")(x))
    x = x + h.astype(x.dtype)
    return nn.with_logical_constraint(x, ("batch", "length", None))


class T5Encoder(nn.Module):
  """T5 (v1.1 by default) encoder stack: int ids [B, L] (+ optional mask [B, L]) -> embeddings [B, L, d_model].

  Defaults are T5-XXL v1.1 (CogVideoX's text encoder). The residual stream is float32 whatever `dtype` (the
  compute dtype of the matmuls) is; the output is in `dtype`. `remat` recomputes each block in the backward pass
  (for training a large encoder).
  """
  vocab_size: int = 32128
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"
  dtype: Dtype = jnp.float32
  wo_dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  def position_bias(self, length: int) -> jax.Array:
    """The relative position bias [1, heads, L, L], float32 (from the shared bucket embedding)."""
    table = self.param("relative_attention_bias",
                       nn.with_logical_partitioning(nn.initializers.normal(self.d_model ** -0.5), (None, "heads")),
                       (self.relative_attention_num_buckets, self.num_heads), self.param_dtype)
    positions = np.arange(length)
    buckets = relative_position_bucket(positions[None, :] - positions[:, None], bidirectional=True,
                                       num_buckets=self.relative_attention_num_buckets,
                                       max_distance=self.relative_attention_max_distance)  # [q, k]
    bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=0)  # [q, k, heads]
    return jnp.transpose(bias, (2, 0, 1))[None]

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    if self.feed_forward_proj not in FEED_FORWARD_PROJ:
      raise ValueError(f"T5Encoder.feed_forward_proj={self.feed_forward_proj!r}; allowed: {sorted(FEED_FORWARD_PROJ)}.")
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}.")
    embed = nn.Embed(self.vocab_size, self.d_model, dtype=jnp.float32, param_dtype=self.param_dtype,
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
                     name="token_embedding")
    x = embed(input_ids.astype(jnp.int32)).astype(jnp.float32)
    x = nn.with_logical_constraint(x, ("batch", "length", None))

    bias = self.position_bias(input_ids.shape[1])
    if attention_mask is not None:
      # Additive mask over keys, as transformers: the most negative float32, so exp() underflows to exactly 0.
      keep = attention_mask.astype(bool)[:, None, None, :]
      bias = bias + jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)

    block = nn.remat(T5Block) if self.remat else T5Block
    for i in range(self.num_layers):
      x = block(self.num_heads, self.d_kv, self.d_ff, self.feed_forward_proj, self.layer_norm_epsilon,
                dtype=self.dtype, wo_dtype=self.wo_dtype, param_dtype=self.param_dtype, name=f"block_{i}")(x, bias)
    return RMSNorm(self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)
