"""The KL-regularised causal 3D VAE (CogVideoX's architecture is one configuration), with streaming encode/decode.

    vae = AutoencoderKL(block_out_channels=(128, 256, 256, 512), layers_per_block=3, latent_channels=16)
    posterior = vae.apply(v, video, method="encode")       # video [B, T, H, W, 3] in [-1, 1]
    latents = posterior.mode()                              # [B, 1 + (T - 1) // 4, H / 8, W / 8, 16], unscaled
    video = vae.apply(v, latents, method="decode")          # [B, T, H, W, 3]

Causality: every temporal convolution is causal (time padded on the left with k - 1 copies of the first frame), time
is compressed by average pooling with frame 0 kept apart when the frame count is odd, so a 1-frame video (an image)
maps to 1 latent frame.

Streaming: by default `encode` runs the encoder on chunks of `sample_frames_per_chunk` (8) pixel frames, the
remainder added to the first chunk, and `decode` runs the decoder on chunks of `latent_frames_per_chunk` (2) latent
frames, again the remainder first. This is exactly how diffusers' `AutoencoderKLCogVideoX._encode/_decode` batch
frames (`num_sample_frames_batch_size`, `num_latent_frames_batch_size`): causal convolutions see across chunk
borders through a cache of their last k - 1 input frames, while GroupNorm statistics are computed per chunk. The
chunks after the first all have the same shape, so they run in one `nn.scan` with the conv cache as the carry: the
peak memory of a long video is one chunk's working set (plus the input and output arrays themselves), not the
video's. `chunked=False` runs the whole clip at once (one GroupNorm over all frames); with
`group_norm_over_time=False` (per-frame statistics) the two modes agree to float rounding, because every other
operation is causal and chunk-aligned (see tests/test_vae.py).

Tiling: `tile_sample_size=(h, w)` splits large frames into overlapping spatial tiles that are encoded/decoded
separately and blended linearly where they overlap (diffusers' `enable_tiling`, same tile arithmetic).

Parameter names mirror diffusers' module tree (`encoder/down_blocks_0/resnets_1/conv1/conv/kernel`), so conversion
(`vdm_jax.convert.cogvideox_vae`) is a name transform plus the kernel layout change.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models import patchify
from vdm_jax.models.vae.blocks import Blocks3D
from vdm_jax.models.vae.conv import ACTIVATION_AXES, Cache, CausalConv3d, Dtype
from vdm_jax.models.vae.norm import GroupNorm3D, SpatialNorm3D


def frame_chunks(num_frames: int, chunk: int) -> list[tuple[int, int]]:
  """[start, end) frame ranges of diffusers' frame batching: chunks of `chunk`, the remainder added to the first.

  E.g. 49 frames, chunk 8 -> (0, 9), (9, 17), ..., (41, 49); 13 latents, chunk 2 -> (0, 3), (3, 5), ...; fewer
  frames than `chunk` -> one chunk. All chunks after the first have exactly `chunk` frames.
  """
  if num_frames < 1 or chunk < 1:
    raise ValueError(f"frame_chunks: num_frames={num_frames} and chunk={chunk} must be >= 1.")
  count = max(num_frames // chunk, 1)
  remainder = num_frames % chunk
  return [(chunk * i + (0 if i == 0 else remainder), min(chunk * (i + 1) + remainder, num_frames))
          for i in range(count)]



def space_to_depth(x: jax.Array, patch: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T, H / p, W / p, C p p]: each p x p pixel patch becomes one position's channels, in
  the DiT's patch order (C, ph, pw): `patchify.patchify` with patch_size_t 1, kept on the grid. The inverse is
  `depth_to_space`."""
  if patch == 1:
    return x
  _, gh, gw = patchify.patch_grid(x.shape, patch)
  return patchify.patchify(x, patch).reshape(x.shape[:2] + (gh, gw, -1))


def depth_to_space(x: jax.Array, patch: int) -> jax.Array:
  """[B, T, h, w, C p p] -> [B, T, h p, w p, C], the inverse of `space_to_depth`."""
  if patch == 1:
    return x
  b, t, h, w, _ = x.shape
  return patchify.unpatchify(x.reshape(b, t * h * w, -1), (t, h, w), patch)


def _time_levels(temporal_compression_ratio: int, num_blocks: int) -> int:
  levels = int(round(math.log2(temporal_compression_ratio)))
  if 2 ** levels != temporal_compression_ratio or not 0 <= levels <= num_blocks - 1:
    raise ValueError(f"temporal_compression_ratio={temporal_compression_ratio} must be a power of 2 of at most "
                     f"2 ** (len(block_out_channels) - 1) = {2 ** (num_blocks - 1)}.")
  return levels


class Encoder3D(nn.Module):
  """[B, T, H, W, C_in] -> moments [B, T', H / (p 2^(n-1)), W / (p 2^(n-1)), 2 latent_channels] (mean, logvar);
  p = `patch_size` (the frames are first folded into p x p patches by `space_to_depth`)."""
  latent_channels: int = 16
  block_out_channels: Sequence[int] = (128, 256, 256, 512)
  layers_per_block: int = 3
  num_groups: int = 32
  eps: float = 1e-6
  temporal_compression_ratio: int = 4
  over_time: bool = True
  remat: bool = False
  patch_size: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    n = len(self.block_out_channels)
    levels = _time_levels(self.temporal_compression_ratio, n)
    kw = dict(num_groups=self.num_groups, eps=self.eps, over_time=self.over_time, remat=self.remat,
              dtype=self.dtype, param_dtype=self.param_dtype)
    self.conv_in = CausalConv3d(self.block_out_channels[0], 3, self.dtype, self.param_dtype)
    self.down_blocks = [Blocks3D(f, self.layers_per_block, "down" if i < n - 1 else "none", i < levels, **kw)
                        for i, f in enumerate(self.block_out_channels)]
    self.mid_block = Blocks3D(self.block_out_channels[-1], 2, **kw)
    self.norm_out = GroupNorm3D(self.num_groups, 1e-6, self.over_time, self.param_dtype)
    self.conv_out = CausalConv3d(2 * self.latent_channels, 3, self.dtype, self.param_dtype)

  def __call__(self, x: jax.Array, cache: Optional[Cache] = None) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    new = {}
    x = nn.with_logical_constraint(space_to_depth(x, self.patch_size), ACTIVATION_AXES)
    x, new["conv_in"] = self.conv_in(x, cache.get("conv_in"))
    for i, block in enumerate(self.down_blocks):
      x, new[f"down_block_{i}"] = block(x, None, cache.get(f"down_block_{i}"))
    x, new["mid_block"] = self.mid_block(x, None, cache.get("mid_block"))
    x = nn.silu(self.norm_out(x)).astype(self.dtype)
    x, new["conv_out"] = self.conv_out(x, cache.get("conv_out"))
    return x.astype(jnp.float32), new


class Decoder3D(nn.Module):
  """Latents [B, T', h, w, latent_channels] -> video [B, T, h p 2^(n-1), w p 2^(n-1), out_channels]; every norm is a
  SpatialNorm3D conditioned on the latents. With `patch_size` p > 1 the last conv gives p * p * out_channels
  channels, unfolded into p x p pixel patches by `depth_to_space`."""
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 256, 512)
  layers_per_block: int = 3
  num_groups: int = 32
  eps: float = 1e-6
  temporal_compression_ratio: int = 4
  over_time: bool = True
  remat: bool = False
  patch_size: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    n = len(self.block_out_channels)
    levels = _time_levels(self.temporal_compression_ratio, n)
    channels = list(reversed(self.block_out_channels))
    kw = dict(num_groups=self.num_groups, eps=self.eps, spatial_norm=True, over_time=self.over_time,
              remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)
    self.conv_in = CausalConv3d(channels[0], 3, self.dtype, self.param_dtype)
    self.mid_block = Blocks3D(channels[0], 2, **kw)
    self.up_blocks = [Blocks3D(f, self.layers_per_block + 1, "up" if i < n - 1 else "none", i < levels, **kw)
                      for i, f in enumerate(channels)]
    self.norm_out = SpatialNorm3D(self.num_groups, 1e-6, self.over_time, self.dtype, self.param_dtype)
    self.conv_out = CausalConv3d(self.out_channels * self.patch_size ** 2, 3, self.dtype, self.param_dtype)

  def __call__(self, z: jax.Array, cache: Optional[Cache] = None) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    new = {}
    z = nn.with_logical_constraint(z, ACTIVATION_AXES)
    x, new["conv_in"] = self.conv_in(z, cache.get("conv_in"))
    x, new["mid_block"] = self.mid_block(x, z, cache.get("mid_block"))
    for i, block in enumerate(self.up_blocks):
      x, new[f"up_block_{i}"] = block(x, z, cache.get(f"up_block_{i}"))
    x = nn.silu(self.norm_out(x, z)).astype(self.dtype)
    x, new["conv_out"] = self.conv_out(x, cache.get("conv_out"))
    return depth_to_space(x, self.patch_size).astype(jnp.float32), new


@flax.struct.dataclass
class DiagonalGaussian:
  """The posterior q(z|x) = N(mean, exp(logvar)), each [B, T', H', W', C]; logvar clamped to [-30, 20]."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    """Splits encoder moments [..., 2C] into (mean, logvar) along channels (mean first)."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    return jnp.exp(self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    """mean + std * eps, eps ~ N(0, I)."""
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) per example [B], summed over all latent elements."""
    kl = 0.5 * (jnp.square(self.mean) + self.var - 1.0 - self.logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)



def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
  """diffusers' blend_v/blend_h: the first `extent` rows of b along `axis` fade in from the last rows of a."""
  extent = min(a.shape[axis], b.shape[axis], extent)
  if extent <= 0:
    return b
  shape = [1] * b.ndim
  shape[axis] = extent
  weight = (jnp.arange(extent, dtype=jnp.float32) / extent).reshape(shape)
  tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
  head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
  rest = jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)
  return jnp.concatenate([tail * (1.0 - weight) + head * weight, rest], axis=axis)


class AutoencoderKL(nn.Module):
  """Causal 3D VAE with a diagonal Gaussian posterior. Video [B, T, H, W, in_channels] in [-1, 1] <-> latents
  [B, T', H / s, W / s, latent_channels], s = 2 ** (len(block_out_channels) - 1), T' = 1 + (T - 1) / r
  (r = temporal_compression_ratio) for T = 1 + r k. An odd T' decodes back to 1 + r (T' - 1) frames, an even T'
  to r T' (frame 0 is only special in a chunk with an odd frame count, as in diffusers), so clips that round-trip
  have T = 1 + 2 r k frames (1, 9, 17, 49 for r = 4).

  `patch_size` p > 1 folds p x p pixel patches into channels before the encoder's first conv and unfolds the
  decoder's last (as Cosmos' and WF-VAE's video tokenizers do with a patch or wavelet step), so s = p 2^(n-1): the
  network never runs at full resolution, where its few channels are slow for their FLOPs on a CPU.

  `scaling_factor` is the diffusion-side latent scale (latents for the DiT are `mode() * scaling_factor`); encode
  and decode work on unscaled latents.
  """
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 256, 512)
  layers_per_block: int = 3
  latent_channels: int = 16
  norm_num_groups: int = 32
  norm_eps: float = 1e-6
  temporal_compression_ratio: int = 4
  scaling_factor: float = 1.15258426
  group_norm_over_time: bool = True  # False: per-frame GroupNorm stats (chunk-invariant, not CogVideoX)
  sample_frames_per_chunk: int = 8
  latent_frames_per_chunk: int = 2
  tile_sample_size: Optional[tuple[int, int]] = None  # (h, w): spatial tiling for frames larger than this
  tile_overlap: tuple[float, float] = (1 / 6, 1 / 5)  # overlap fraction of a tile (height, width)
  remat: bool = False  # rematerialise ResNet blocks in the backward pass (training memory)
  patch_size: int = 1  # p x p pixel patches folded into channels around the network (1: CogVideoX)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def spatial_compression(self) -> int:
    return self.patch_size * 2 ** (len(self.block_out_channels) - 1)

  def setup(self):
    kw = dict(block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
              num_groups=self.norm_num_groups, eps=self.norm_eps,
              temporal_compression_ratio=self.temporal_compression_ratio, over_time=self.group_norm_over_time,
              remat=self.remat, patch_size=self.patch_size, dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder3D(self.latent_channels, **kw)
    self.decoder = Decoder3D(self.out_channels, **kw)

  # --- Chunked (streaming) passes over time.

  def _stream(self, fn_name: str, x: jax.Array, chunk: int, chunked: bool) -> jax.Array:
    """Runs `self.<fn_name>` (encoder or decoder) over time chunks of x [B, T, ...] with the conv cache carried
    across chunks; returns the outputs concatenated over time."""
    net = lambda mdl: getattr(mdl, fn_name)
    if not chunked:
      return net(self)(x)[0]
    spans = frame_chunks(x.shape[1], chunk)
    first, cache = net(self)(x[:, spans[0][0]:spans[0][1]])
    if len(spans) == 1:
      return first
    b, rest = x.shape[0], x[:, spans[0][1]:]
    rest = jnp.moveaxis(rest.reshape((b, len(spans) - 1, chunk) + rest.shape[2:]), 1, 0)

    def body(mdl, carry, xs):
      y, carry = net(mdl)(xs, carry)
      return carry, y

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0)
    _, ys = scan(self, cache, rest)  # [n - 1, B, t, ...]
    ys = jnp.moveaxis(ys, 0, 1)
    ys = ys.reshape((b, -1) + ys.shape[3:])
    return jnp.concatenate([first, ys], axis=1)

  def _tiled(self, fn_name: str, x: jax.Array, tile_in: tuple[int, int], tile_out: tuple[int, int],
             chunk: int) -> jax.Array:
    """diffusers' tiled_encode/tiled_decode: overlapping (H, W) tiles, each streamed over time, blended in raster
    order (a tile is blended with its already blended upper and left neighbours) and cropped."""
    (th, tw), (oh, ow) = tile_in, tile_out
    fh, fw = self.tile_overlap
    step_h, step_w = int(th * (1 - fh)), int(tw * (1 - fw))
    blend_h, blend_w = int(oh * fh), int(ow * fw)
    keep_h, keep_w = oh - blend_h, ow - blend_w
    height, width = x.shape[2:4]
    rows = []
    for i in range(0, height, step_h):
      row = []
      for j in range(0, width, step_w):
        tile = self._stream(fn_name, x[:, :, i:i + th, j:j + tw], chunk, True)
        if rows:
          tile = _blend(rows[-1][len(row)], tile, blend_h, axis=2)
        if row:
          tile = _blend(row[-1], tile, blend_w, axis=3)
        row.append(tile)
      rows.append(row)
    return jnp.concatenate([jnp.concatenate([t[:, :, :keep_h, :keep_w] for t in row], axis=3) for row in rows],
                           axis=2)

  def encode(self, video: jax.Array, chunked: bool = True) -> DiagonalGaussian:
    """video [B, T, H, W, in_channels] in [-1, 1] -> posterior over latents [B, T', H/s, W/s, latent_channels].

    `chunked` (default): diffusers' frame batching (8 frames, remainder first; constant memory in T);
    False: the whole clip at once.
    """
    s = self.spatial_compression
    if video.shape[2] % s or video.shape[3] % s:
      raise ValueError(f"encode: frame size {video.shape[2]}x{video.shape[3]} must be divisible by {s}.")
    chunk = self.sample_frames_per_chunk
    tile = self.tile_sample_size
    if tile is not None and (video.shape[2] > tile[0] or video.shape[3] > tile[1]):
      moments = self._tiled("encoder", video, tile, (tile[0] // s, tile[1] // s), chunk)
    else:
      moments = self._stream("encoder", video, chunk, chunked)
    return DiagonalGaussian.from_moments(moments)

  def decode(self, latents: jax.Array, chunked: bool = True) -> jax.Array:
    """Unscaled latents [B, T', h, w, latent_channels] -> video [B, T, h s, w s, out_channels] (float32, about
    [-1, 1], not clipped). `chunked`: diffusers' batching of 2 latent frames (remainder first); False: whole clip."""
    s = self.spatial_compression
    chunk = self.latent_frames_per_chunk
    tile = self.tile_sample_size
    if tile is not None:
      tile_latent = (tile[0] // s, tile[1] // s)
      if latents.shape[2] > tile_latent[0] or latents.shape[3] > tile_latent[1]:
        return self._tiled("decoder", latents, tile_latent, tile, chunk)
    return self._stream("decoder", latents, chunk, chunked)

  def __call__(self, video: jax.Array, sample_rng: Optional[jax.Array] = None,
               chunked: bool = True) -> tuple[jax.Array, DiagonalGaussian]:
    """Reconstruction of `video` and its posterior; decodes a posterior sample when `sample_rng` is given,
    else the mode."""
    posterior = self.encode(video, chunked)
    z = posterior.mode() if sample_rng is None else posterior.sample(sample_rng)
    return self.decode(z, chunked), posterior
