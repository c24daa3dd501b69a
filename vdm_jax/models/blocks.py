"""The DiT's transformer blocks: CogVideoX's joint text-video block and the PixArt/Wan cross-attention block, both
adaLN-Zero, on float32 residual streams; with `packed` segment information they modulate each token with its own
clip's values (`vdm_jax.models.packing`). `vdm_jax.models.dit.DiT` scans them over layers."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models.attention import Attention
from vdm_jax.models.layers import dense, layer_norm

ACTIVATIONS = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
    "silu": nn.silu,
    "sigmoid": nn.sigmoid,
}
ACTIVATION_AXES = ("batch", "length", "embed")


def zeros_or(zero: bool, init=nn.initializers.lecun_normal()):
  return nn.initializers.zeros_init() if zero else init


def _tokens(a: jax.Array) -> jax.Array:
  """A per-example value [B, D] as [B, 1, D]; a per-token one [B, L, D] (packed sequences) as it is."""
  return a[:, None, :] if a.ndim == 2 else a


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x [B, L, D] * (1 + scale) + shift, with shift/scale [B, D] or per token [B, L, D]."""
  return x * (1.0 + _tokens(scale)) + _tokens(shift)


def per_token(a: jax.Array, index: jax.Array) -> jax.Array:
  """Per-slot values [B, S, D] -> per token [B, L, D], token l reading slot index[b, l]."""
  return jnp.take_along_axis(a, index[:, :, None], axis=1)


class MLP(nn.Module):
  """[B, L, D] -> Dense(hidden) -> activation -> Dense(D)."""
  hidden: int
  activation: str = "gelu_tanh"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    x = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc_in")(x)
    x = ACTIVATIONS[self.activation](x)
    return dense(d, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc_out")(x)


class _BlockBase(nn.Module):
  """Fields shared by the two block kinds."""
  num_heads: int
  head_dim: int
  mlp_hidden: int
  activation: str = "gelu_tanh"
  norm_eps: float = 1e-5
  norm_affine: bool = True
  qk_norm: bool = True
  qk_norm_eps: float = 1e-6
  attention_bias: bool = True
  attention_out_bias: bool = True
  attention_backend: str = "auto"
  attention_fallback: bool = False
  attention_q_block: int = 512
  attention_kv_block: int = 1024
  attention_chunk_threshold: int = 1024
  zero_init: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def attention(self, name: str) -> Attention:
    return Attention(self.num_heads, self.head_dim, qk_norm=self.qk_norm, qk_norm_eps=self.qk_norm_eps,
                     use_bias=self.attention_bias, out_bias=self.attention_out_bias, backend=self.attention_backend,
                     fallback=self.attention_fallback, q_block=self.attention_q_block,
                     kv_block=self.attention_kv_block, chunk_threshold=self.attention_chunk_threshold,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def norm(self, name: str) -> nn.LayerNorm:
    return layer_norm(self.norm_eps, use_affine=self.norm_affine, param_dtype=self.param_dtype, name=name)

  def mlp(self) -> MLP:
    return MLP(self.mlp_hidden, self.activation, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")


class JointBlock(_BlockBase):
  """CogVideoX block on x = [text; video] [B, Lt + Lv, D] (float32), conditioned on temb [B, Dt].

  Packed (`packed` = (segment ids [B, Lt + Lv], slot index [B, Lt + Lv])): temb is per slot [B, S, Dt], each
  token is modulated with its own slot's values and attends within its segment."""
  text_length: int = 0

  def _adaln(self, name: str, temb: jax.Array, width: int, packed):
    """(shift, scale, gate) for video and (shift, scale, gate) for text, each [B, D] (packed: per token of its
    stream, [B, Lv or Lt, D]), from SiLU(temb)."""
    mod = dense(6 * width, (None, "embed"), param_dtype=self.param_dtype, kernel_init=zeros_or(self.zero_init),
                name=name)(nn.silu(temb))
    mods = jnp.split(mod, 6, axis=-1)
    if packed is None:
      return mods
    lt, index = self.text_length, packed[1]
    return [per_token(m, index[:, lt:] if i < 3 else index[:, :lt]) for i, m in enumerate(mods)]

  def _per_stream(self, h: jax.Array, text_fn, video_fn) -> jax.Array:
    """[B, Lt + Lv, D] -> text_fn on the text tokens, video_fn on the video tokens, concatenated back."""
    lt = self.text_length
    return jnp.concatenate([text_fn(h[:, :lt]), video_fn(h[:, lt:])], axis=1)

  def modulated_norm(self, index: int, x: jax.Array, temb: jax.Array, packed):
    """LayerNorm (shared by both streams) modulated per stream, and the gates (video, text) [B, D]."""
    shift, scale, gate, t_shift, t_scale, t_gate = self._adaln(f"adaln_{index}", temb, x.shape[-1], packed)
    h = self._per_stream(self.norm(f"norm_{index}")(x), lambda y: modulate(y, t_shift, t_scale),
                         lambda y: modulate(y, shift, scale))
    return h.astype(self.dtype), gate, t_gate

  def _gated_residual(self, x: jax.Array, out: jax.Array, gate: jax.Array, t_gate: jax.Array) -> jax.Array:
    out = out.astype(jnp.float32)
    return x + self._per_stream(out, lambda y: y * _tokens(t_gate), lambda y: y * _tokens(gate))

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, rope, packed=None) -> tuple[jax.Array, None]:
    ids = None if packed is None else packed[0]
    h, gate, t_gate = self.modulated_norm(1, x, temb, packed)
    x = self._gated_residual(x, self.attention("attn")(h, rope=rope, rope_start=self.text_length, segment_ids=ids),
                             gate, t_gate)
    h, gate, t_gate = self.modulated_norm(2, x, temb, packed)
    x = self._gated_residual(x, self.mlp()(h), gate, t_gate)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None


class CrossBlock(_BlockBase):
  """PixArt/Wan block on video tokens x [B, Lv, D] (float32): modulation = shared [B, 6D] + this block's table.

  Packed (`packed` = (segment ids [B, Lv], text segment ids [B, Lt])): shared_mod is per token [B, Lv, 6D] and
  each token attends to the video and text of its own segment."""

  @nn.compact
  def __call__(self, x: jax.Array, shared_mod: jax.Array, context: jax.Array, rope,
               packed=None) -> tuple[jax.Array, None]:
    d = x.shape[-1]
    table = self.param("adaln_table", nn.with_logical_partitioning(zeros_or(self.zero_init, nn.initializers.normal(
        d ** -0.5)), (None, "embed")), (6, d), self.param_dtype)
    mod = shared_mod.reshape(*shared_mod.shape[:-1], 6, d) + jnp.asarray(table, jnp.float32)
    shift1, scale1, gate1, shift2, scale2, gate2 = (mod[..., i, :] for i in range(6))
    ids, text_ids = (None, None) if packed is None else packed
    # Padding tokens (id 0) read the first segment's text so no query is left without keys; their output is unused.
    cross_ids = None if packed is None else jnp.maximum(ids, 1)

    h = modulate(self.norm("norm_1")(x), shift1, scale1)
    h = self.attention("attn")(h.astype(self.dtype), rope=rope, segment_ids=ids)
    x = x + _tokens(gate1) * h.astype(jnp.float32)
    h = self.norm("norm_cross")(x)
    x = x + self.attention("cross_attn")(h.astype(self.dtype), context=context, segment_ids=cross_ids,
                                         context_segment_ids=text_ids).astype(jnp.float32)
    h = modulate(self.norm("norm_2")(x), shift2, scale2)
    x = x + _tokens(gate2) * self.mlp()(h.astype(self.dtype)).astype(jnp.float32)
    return nn.with_logical_constraint(x, ACTIVATION_AXES), None
