"""The video DiT: spacetime patches + text tokens through adaLN-Zero transformer blocks, scanned over layers.

    model = DiT(**config.model)
    out = model.apply({'params': params}, latents, timesteps, text_embeds)  # [B, T, H, W, C] -> same shape

Conditioning (`conditioning`):
  'joint'  CogVideoX's expert transformer: text and video tokens concatenated into one sequence with full 3D
           attention; each block modulates the text and the video stream separately (one Dense of SiLU(temb) to
           shift/scale/gate for both streams, one LayerNorm shared by both); QK LayerNorm; the MLP on both.
  'cross'  PixArt/Wan style: video self-attention, then cross-attention to the text, then the MLP; one shared
           adaLN Dense for all blocks (adaLN-single) plus a learned per-block table added to it.
Both end with LayerNorm -> adaLN (shift, scale) -> Dense -> unpatchify. The modulation Denses (and tables) and the
output projection are zero-initialised (adaLN-Zero: every block starts as the identity, the output as zero);
converted weights overwrite them.

`pooled_text` adds the prompt's mean embedding (through an MLP) to the timestep embedding: a global path for
attributes of the whole clip (SD3, Imagen); off for CogVideoX.

Positions: additive 'sincos' (CogVideoX 2b), 'learned' (5b-I2V) or 'none', and/or 3D RoPE (`use_rope`, CogVideoX
5b and 1.5, with the pipeline's 'linspace' crop-region grid or the 1.5 'slice' grid), computed from the latent size.

Precision: params in `param_dtype`; matmuls in `dtype`; the residual stream, norms, modulation, timestep embedding
and RoPE in float32. Layers are one `nn.scan` (params have a leading axis of length num_layers, logical name
'layers') with the remat policy `remat_policy`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import embeddings
from vdm_jax.models.attention import BACKENDS
from vdm_jax.models.blocks import (ACTIVATION_AXES, ACTIVATIONS, CrossBlock, JointBlock, modulate, per_token,
                                   zeros_or)
from vdm_jax.models.layers import dense, layer_norm
from vdm_jax.models.packing import Packing, positions_restart
from vdm_jax.models.patchify import PatchEmbed, unpatchify

REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": None,  # save only the block inputs, recompute the rest
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}
CONDITIONINGS = ("joint", "cross")
POS_EMBEDS = ("sincos", "learned", "none")
ROPE_GRIDS = ("linspace", "slice")


class DiT(nn.Module):
  """Latents [B, T, H, W, C], timesteps [B], text_embeds [B, L, text_dim] -> prediction [B, T, H, W, out_channels].

  The defaults are CogVideoX-shaped but small; `vdm_jax.convert.cogvideox_transformer` builds the released
  configurations. Sample sizes are in latent units (frames after temporal compression).
  """
  in_channels: int = 16
  out_channels: int | None = None  # None: in_channels
  patch_size: int = 2
  patch_size_t: int = 1
  patch_bias: bool = True
  num_layers: int = 2
  num_heads: int = 4
  head_dim: int = 64
  mlp_ratio: float = 4.0
  text_dim: int = 4096
  time_embed_dim: int = 512
  time_freq_dim: int | None = None  # width of the timestep sinusoid; None: num_heads * head_dim (CogVideoX)
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  ofs_embed_dim: int | None = None  # CogVideoX 1.5 I2V: a second sinusoid+MLP of `ofs`, added to the time embedding
  # Global text conditioning (SD3's pooled text, Imagen's pooled T5): the mean of text_embeds over tokens through an
  # MLP, added to the time embedding, so every adaLN modulation sees the prompt. CogVideoX has none (False).
  pooled_text: bool = False
  conditioning: str = "joint"
  activation: str = "gelu_tanh"
  norm_eps: float = 1e-5
  norm_affine: bool = True
  qk_norm: bool = True
  qk_norm_eps: float = 1e-6
  attention_bias: bool = True
  attention_out_bias: bool = True
  pos_embed: str = "sincos"
  use_rope: bool = False
  rope_grid: str = "linspace"
  spatial_interpolation_scale: float = 1.875
  temporal_interpolation_scale: float = 1.0
  sample_frames: int = 13
  sample_height: int = 60
  sample_width: int = 90
  max_text_length: int = 226
  attention_backend: str = "auto"
  attention_fallback: bool = False
  attention_q_block: int = 512
  attention_kv_block: int = 1024
  attention_chunk_threshold: int = 1024
  remat_policy: str = "none"
  # Layers per iteration of the layer scan (`unroll` of lax.scan; num_layers: fully unrolled). Params stay stacked;
  # unrolling removes the loop's per-layer slicing and stacking, which dominates small models on a CPU.
  scan_unroll: int = 1
  zero_init: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def width(self) -> int:
    return self.num_heads * self.head_dim

  def validate(self) -> None:
    """Fails naming the field whose value is not allowed."""
    for field, value, allowed in (("conditioning", self.conditioning, CONDITIONINGS),
                                  ("activation", self.activation, tuple(ACTIVATIONS)),
                                  ("remat_policy", self.remat_policy, tuple(REMAT_POLICIES)),
                                  ("pos_embed", self.pos_embed, POS_EMBEDS),
                                  ("rope_grid", self.rope_grid, ROPE_GRIDS),
                                  ("attention_backend", self.attention_backend, BACKENDS)):
      if value not in allowed:
        raise ValueError(f"DiT.{field}={value!r}; allowed: {list(allowed)}.")
    if self.pos_embed == "learned" and self.patch_size_t != 1:
      raise ValueError("DiT.pos_embed='learned' needs patch_size_t=1 (CogVideoX 5b-I2V layout).")
    if self.ofs_embed_dim and self.ofs_embed_dim != self.time_embed_dim:
      raise ValueError(f"DiT.ofs_embed_dim={self.ofs_embed_dim} must equal time_embed_dim={self.time_embed_dim} "
                       "(the two embeddings are added).")

  def _block_kwargs(self, dtype, param_dtype) -> dict[str, Any]:
    return dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_hidden=int(self.width * self.mlp_ratio),
                activation=self.activation, norm_eps=self.norm_eps, norm_affine=self.norm_affine,
                qk_norm=self.qk_norm, qk_norm_eps=self.qk_norm_eps, attention_bias=self.attention_bias,
                attention_out_bias=self.attention_out_bias, attention_backend=self.attention_backend,
                attention_fallback=self.attention_fallback, attention_q_block=self.attention_q_block,
                attention_kv_block=self.attention_kv_block,
                attention_chunk_threshold=self.attention_chunk_threshold, zero_init=self.zero_init, dtype=dtype,
                param_dtype=param_dtype)

  def _scan(self, block_cls, num_broadcast: int, **kwargs):
    """block_cls rematerialised per `remat_policy` and scanned over num_layers (params stacked on axis 0)."""
    if self.remat_policy != "none":
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
    scanned = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * num_broadcast, length=self.num_layers,
                      unroll=max(1, min(self.scan_unroll, self.num_layers)),
                      metadata_params={nn.PARTITION_NAME: "layers"})
    return scanned(**kwargs, name="layers")

  def _time_embedding(self, timesteps, ofs, param_dtype) -> jax.Array:
    """[B] -> temb [B, time_embed_dim] float32 (plus the ofs embedding when configured)."""
    b = timesteps.shape[0]
    freq = self.time_freq_dim or self.width
    temb = embeddings.TimestepMLP(self.time_embed_dim, param_dtype=param_dtype, name="time_embed")(
        embeddings.timestep_embedding(timesteps, freq, flip_sin_to_cos=self.flip_sin_to_cos, shift=self.freq_shift))
    if self.ofs_embed_dim:
      # The CogVideoX 1.5 I2V pipeline always passes ofs = 2.0.
      ofs = jnp.full((b,), 2.0, jnp.float32) if ofs is None else jnp.broadcast_to(jnp.asarray(ofs, jnp.float32), (b,))
      temb = temb + embeddings.TimestepMLP(self.ofs_embed_dim, param_dtype=param_dtype, name="ofs_embed")(
          embeddings.timestep_embedding(ofs, self.ofs_embed_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                        shift=self.freq_shift))
    return temb

  def _sincos(self, grid) -> np.ndarray:
    return embeddings.cogvideox_sincos_3d(self.width, grid, self.spatial_interpolation_scale,
                                          self.temporal_interpolation_scale).astype(np.float32)

  def _add_positions(self, text, video, grid, param_dtype):
    """Additive position embeddings: sincos on video tokens (text positions are zero), or the learned table."""
    if self.pos_embed == "sincos":
      return text, video + self._sincos(grid)[None]
    if self.pos_embed == "none":
      return text, video
    sample_grid = (self.sample_frames, self.sample_height // self.patch_size, self.sample_width // self.patch_size)
    length = self.max_text_length + int(np.prod(sample_grid))
    table = self.param("pos_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                       (length, self.width), param_dtype)
    if grid[1:] != sample_grid[1:]:
      raise ValueError(f"Learned positions are for a {sample_grid[1]}x{sample_grid[2]} token grid (sample_height x "
                       f"sample_width // patch_size); got {grid[1]}x{grid[2]}. Other sizes are not supported.")
    if grid[0] != sample_grid[0]:
      # As diffusers' CogVideoXPatchEmbed: another frame count falls back to sincos positions (text ones zero).
      return text, video + self._sincos(grid)[None]
    if text.shape[1] != self.max_text_length:
      raise ValueError(f"Learned positions need exactly max_text_length={self.max_text_length} text tokens; got "
                       f"{text.shape[1]}.")
    table = jnp.asarray(table, jnp.float32)
    return text + table[None, :self.max_text_length], video + table[None, self.max_text_length:]

  def _rope(self, grid):
    if not self.use_rope:
      return None
    base = (self.sample_height // self.patch_size, self.sample_width // self.patch_size)
    cos, sin = embeddings.cogvideox_rope_3d(self.head_dim, grid, base, self.rope_grid)
    return jnp.asarray(cos), jnp.asarray(sin)

  @nn.compact
  def __call__(self, latents: jax.Array, timesteps: jax.Array, text_embeds: jax.Array,
               ofs: jax.Array | None = None, packing: Packing | None = None) -> jax.Array:
    """latents [B, T, H, W, C], timesteps [B], text_embeds [B, L, text_dim] -> [B, T, H, W, out_channels] f32.

    `ofs` [B] or scalar: only for models with ofs_embed_dim (default 2.0, the CogVideoX 1.5 I2V pipeline value).
    `packing` (vdm_jax.models.packing): several clips per row. Then latents are patch tokens [B, L, C * pt * p * p],
    timesteps [B, S] and text_embeds [B, S, Lt, text_dim] per slot, and the output is tokens [B, L, out_channels
    * pt * p * p] (zero on padding); each clip's output equals the clip run alone.
    """
    self.validate()
    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    if packing is not None:
      return self._packed(latents, timesteps, text_embeds, ofs, packing, dtype, param_dtype)
    if latents.ndim != 5 or latents.shape[-1] != self.in_channels:
      raise ValueError(f"latents {latents.shape}: expected [B, T, H, W, {self.in_channels}] (in_channels).")
    timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (latents.shape[0],))
    temb = self._time_embedding(timesteps, ofs, param_dtype)
    if self.pooled_text:
      temb = temb + embeddings.TimestepMLP(self.time_embed_dim, param_dtype=param_dtype, name="text_pool_embed")(
          jnp.mean(text_embeds.astype(jnp.float32), axis=1))

    video, grid = PatchEmbed(self.width, self.patch_size, self.patch_size_t, use_bias=self.patch_bias, dtype=dtype,
                             param_dtype=param_dtype, name="patch_embed")(latents.astype(dtype))
    text = dense(self.width, (None, "embed"), dtype=dtype, param_dtype=param_dtype, name="text_proj")(
        text_embeds.astype(dtype))
    text, video = self._add_positions(text.astype(jnp.float32), video.astype(jnp.float32), grid, param_dtype)
    rope = self._rope(grid)
    kwargs = self._block_kwargs(dtype, param_dtype)

    if self.conditioning == "joint":
      x = nn.with_logical_constraint(jnp.concatenate([text, video], axis=1), ACTIVATION_AXES)
      x, _ = self._scan(JointBlock, 3, text_length=text.shape[1], **kwargs)(x, temb, rope, None)
      video = x[:, text.shape[1]:]
    else:
      video = nn.with_logical_constraint(video, ACTIVATION_AXES)
      video, _ = self._scan(CrossBlock, 4, **kwargs)(video, self._shared_mod(temb, param_dtype), text.astype(dtype),
                                                      rope, None)
    out = self._output(video, temb, None, dtype, param_dtype)
    return unpatchify(out, grid, self.patch_size, self.patch_size_t)

  def _shared_mod(self, temb: jax.Array, param_dtype) -> jax.Array:
    """The cross blocks' shared modulation [..., 6D] (adaLN-single) from temb [..., Dt]."""
    return dense(6 * self.width, (None, "embed"), param_dtype=param_dtype, kernel_init=zeros_or(self.zero_init),
                 name="adaln_shared")(nn.silu(temb))

  def _output(self, video: jax.Array, temb: jax.Array, index: jax.Array | None, dtype, param_dtype) -> jax.Array:
    """Final norms, adaLN (per slot then per token when `index` [B, L] is given) and projection -> patch tokens."""
    video = layer_norm(self.norm_eps, use_affine=self.norm_affine, param_dtype=param_dtype, name="norm_final")(video)
    mod = dense(2 * self.width, (None, "embed"), param_dtype=param_dtype, kernel_init=zeros_or(self.zero_init),
                name="adaln_out")(nn.silu(temb))
    shift, scale = jnp.split(mod if index is None else per_token(mod, index), 2, -1)
    video = modulate(layer_norm(self.norm_eps, use_affine=self.norm_affine, param_dtype=param_dtype,
                                 name="norm_out")(video), shift, scale)
    out_channels = self.out_channels or self.in_channels
    out = dense(self.patch_size_t * self.patch_size ** 2 * out_channels, ("embed", None), dtype=dtype,
                param_dtype=param_dtype, kernel_init=zeros_or(self.zero_init), name="proj_out")(video.astype(dtype))
    return out.astype(jnp.float32)

  def _packed(self, patches, timesteps, text_embeds, ofs, packing: Packing, dtype, param_dtype) -> jax.Array:
    """`__call__` on packed rows: the same modules (so the same parameters), with positions from each token's place
    in its own clip, and timestep, text and attention per segment."""
    if patches.ndim != 3 or timesteps.ndim != 2 or text_embeds.ndim != 4 or (
        text_embeds.shape[:2] != timesteps.shape) or packing.segment_ids.shape != patches.shape[:2]:
      raise ValueError(f"Packed DiT inputs: patches {patches.shape}, timesteps {timesteps.shape}, text_embeds "
                       f"{text_embeds.shape}, segment_ids {packing.segment_ids.shape}; expected [B, L, P], [B, S], "
                       "[B, S, Lt, text_dim], [B, L].")
    if not positions_restart(self.pos_embed, self.use_rope, self.rope_grid):
      raise ValueError(f"Packed sequences need positions that restart per clip: pos_embed 'sincos' or 'none' and "
                       f"rope_grid 'slice'; this DiT has pos_embed={self.pos_embed!r}, rope_grid={self.rope_grid!r}.")
    (b, length), slots, text_len = patches.shape[:2], timesteps.shape[1], text_embeds.shape[2]
    temb = self._time_embedding(timesteps.reshape(-1), ofs, param_dtype).reshape(b, slots, -1)
    if self.pooled_text:
      temb = temb + embeddings.TimestepMLP(self.time_embed_dim, param_dtype=param_dtype, name="text_pool_embed")(
          jnp.mean(text_embeds.astype(jnp.float32), axis=2))
    video, _ = PatchEmbed(self.width, self.patch_size, self.patch_size_t, use_bias=self.patch_bias, dtype=dtype,
                          param_dtype=param_dtype, name="patch_embed")(patches.astype(dtype))
    text = dense(self.width, (None, "embed"), dtype=dtype, param_dtype=param_dtype, name="text_proj")(
        text_embeds.reshape(b, slots * text_len, -1).astype(dtype)).astype(jnp.float32)
    video = video.astype(jnp.float32)
    if self.pos_embed == "sincos":
      video = video + embeddings.cogvideox_sincos_3d_at(self.width, packing.positions, length,
                                                        self.spatial_interpolation_scale,
                                                        self.temporal_interpolation_scale)
    rope = embeddings.cogvideox_rope_3d_at(self.head_dim, packing.positions, length) if self.use_rope else None
    text_slot = jnp.broadcast_to(jnp.repeat(jnp.arange(slots, dtype=jnp.int32), text_len)[None], (b, slots * text_len))
    ids, index, kwargs = packing.segment_ids, packing.slot_index, self._block_kwargs(dtype, param_dtype)
    if self.conditioning == "joint":
      x = nn.with_logical_constraint(jnp.concatenate([text, video], axis=1), ACTIVATION_AXES)
      packed = (jnp.concatenate([text_slot + 1, ids], axis=1), jnp.concatenate([text_slot, index], axis=1))
      x, _ = self._scan(JointBlock, 3, text_length=text.shape[1], **kwargs)(x, temb, rope, packed)
      video = x[:, text.shape[1]:]
    else:
      video = nn.with_logical_constraint(video, ACTIVATION_AXES)
      shared = per_token(self._shared_mod(temb, param_dtype), index)
      video, _ = self._scan(CrossBlock, 4, **kwargs)(video, shared, text.astype(dtype), rope, (ids, text_slot + 1))
    out = self._output(video, temb, index, dtype, param_dtype)
    return out * (ids > 0)[:, :, None]
