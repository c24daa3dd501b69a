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
frames, again the remainder first. This is exactly how diffusers' `AutoencoderKLCogVideoX.encode/decode` batch frames
(REFERENCE_COGVIDEOX.md, "Frame batching"): causal convolutions see across chunk borders through a cache of their
last k - 1 input frames, while GroupNorm statistics are computed per chunk. The chunks after the first all have the
same shape, so they run in one `nn.scan` with the conv cache as the carry: the peak memory of a long video is one
chunk's working set (plus the input and output arrays themselves), not the video's. `chunked=False` runs the whole
clip at once (one GroupNorm over all frames); with `group_norm_over_time=False` (per-frame statistics) the two modes
agree to float rounding, because every other operation is causal and chunk-aligned (see tests/test_vae.py).

Tiling: `tile_sample_size=(h, w)` splits large frames into overlapping spatial tiles that are encoded/decoded
separately and blended linearly where they overlap (diffusers' `enable_tiling`, same tile arithmetic).

Parameter names mirror diffusers' module tree (`encoder/down_blocks_0/resnets_1/conv1/conv/kernel`), so conversion
(`vdm_jax.convert.cogvideox_vae`) is a name transform plus the kernel layout change.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.models import layers, patchify

Dtype = Any
Cache = dict  # nested dict of [B, k - 1, H, W, C] arrays, one per causal conv with a temporal kernel > 1
ACTIVATION_AXES = ("batch", None, None, None, None)  # [B, T, H, W, C]: only the batch is sharded


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


# ----------------------------------------------------------------------------------------------------------------
# Normalisation.


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, eps: float,
               over_time: bool = True) -> jax.Array:
  """GroupNorm of `x` [B, T, H, W, C] in float32: statistics over (C/G, T, H, W) per group (over (C/G, H, W) per
  frame when `over_time` is False), two-pass variance. Returns float32.

  Sums are taken per channel over the leading axes first (contiguous, vectorised reductions), then per group; the
  normalisation and affine are folded into one per-channel multiply-add. On CPU this is ~4x faster than reducing
  a [B, T, H, W, G, C/G] view.
  """
  b, t, h, w, c = x.shape
  if c % num_groups:
    raise ValueError(f"GroupNorm: {c} channels are not divisible by {num_groups} groups.")
  per_group = c // num_groups
  x = x.astype(jnp.float32)
  axes = (1, 2, 3) if over_time else (2, 3)
  count = per_group * math.prod(x.shape[a] for a in axes)

  def group_mean(values):  # per-channel sums [B, (T,) C] -> per-group mean repeated per channel
    sums = jnp.sum(values, axis=axes)
    sums = sums.reshape(sums.shape[:-1] + (num_groups, per_group)).sum(-1, keepdims=True) / count
    return jnp.broadcast_to(sums, sums.shape[:-1] + (per_group,)).reshape(sums.shape[:-2] + (c,))

  mean = group_mean(x)
  expand = (lambda v: v[:, None, None, None, :]) if over_time else (lambda v: v[:, :, None, None, :])
  var = group_mean(jnp.square(x - expand(mean)))
  a = jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
  return x * expand(a) + expand(bias.astype(jnp.float32) - mean * a)


class GroupNorm3D(nn.Module):
  """GroupNorm over (C/G, T, H, W) with a per-channel affine; computed and returned in float32."""
  num_groups: int = 32
  eps: float = 1e-6
  over_time: bool = True
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (c,),
                       self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), (c,),
                      self.param_dtype)
    return group_norm(x, scale, bias, self.num_groups, self.eps, self.over_time)


# ----------------------------------------------------------------------------------------------------------------
# Convolutions.


class Conv3d(nn.Module):
  """3D convolution, channel-last, VALID in time and zero-padded by `padding` in (H, W).

  Kernel [kt, kh, kw, C_in, C_out] with logical axes (conv_t, conv_h, conv_w, conv_in, conv_out), or, in the
  inference layout that `per_tap_kernels` makes, one [kh, kw, C_in, C_out] kernel per temporal tap (`kernel_0` ...
  `kernel_{kt-1}`); both give the same result.
  """
  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  padding: tuple[int, int] = (1, 1)
  impl: str = "auto"  # 'frames': kt 2D convs over frames, summed; 'xla': one 3D conv; 'auto': frames on CPU
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, pad_first: int = 0) -> jax.Array:
    """[B, T, H, W, C_in] -> [B, T + pad_first - kt + 1, H + 2 ph - kh + 1, W + 2 pw - kw + 1, features].

    `pad_first`: first pad time on the left with that many copies of frame 0 (causal padding, 0 <= pad_first < kt).
    The 'frames' path never convolves the copies: every output frame whose taps read frame 0 more than once
    convolves it once with the sum of those taps (3 of 3T frame convolutions saved per video for kt = 3, 2 of 3
    for an image), equal to padding first up to float rounding.
    """
    kt, kh, kw = self.kernel_size
    if not 0 <= pad_first < kt:
      raise ValueError(f"Conv3d pad_first={pad_first}; allowed: 0 <= pad_first < kernel_size[0] = {kt}.")
    if self.has_variable("params", "kernel_0"):  # per-tap layout (inference on CPU)
      taps = [self.get_variable("params", f"kernel_{i}").astype(self.dtype) for i in range(kt)]
      kernel = None  # stacked only if the 3D conv asks for it
    else:
      kernel = self.param(
          "kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")),
          (kt, kh, kw, x.shape[-1], self.features), self.param_dtype).astype(self.dtype)
      taps = kernel  # taps[i]: tap i's [kh, kw, C_in, C_out] slice
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
                      (self.features,), self.param_dtype)
    x = x.astype(self.dtype)
    ph, pw = self.padding
    impl = self.impl if self.impl != "auto" else ("frames" if jax.default_backend() == "cpu" else "xla")
    if impl not in ("frames", "xla"):
      raise ValueError(f"Conv3d impl={self.impl!r}; allowed: 'auto', 'frames', 'xla'.")
    if (kt, kh, kw) == (1, 1, 1):
      y = jnp.einsum("bthwc,cd->bthwd", x, taps[0][0, 0])
    elif impl == "frames":
      # XLA:CPU runs a 3D conv about 2x slower than the same work as kt 2D convs over frames (measured by
      # experiments/bench_vae.py), so on CPU the temporal taps are summed explicitly.
      y = _conv_frames(x, taps, pad_first, (ph, pw))
    else:
      if pad_first:
        x = jnp.concatenate([jnp.repeat(x[:, :1], pad_first, axis=1), x], axis=1)
      y = jax.lax.conv_general_dilated(x, kernel if kernel is not None else jnp.stack(taps),
                                       (1, 1, 1), ((0, 0), (ph, ph), (pw, pw)),
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return y + bias.astype(self.dtype)


def _conv_frames(x: jax.Array, taps, pad_first: int, padding: tuple[int, int]) -> jax.Array:
  """Conv3d's 'frames' path: x [B, T, H, W, C] (to be left-padded in time with `pad_first` copies of frame 0),
  taps kt kernels [kh, kw, C, F] -> [B, T + pad_first - kt + 1, H', W', F], as a sum of 2D convolutions over frames.

  With the padding P = [x_0] * p + x, output j = sum_k conv(P[j + k], W_k): its taps k <= p - j read x_0, so output
  j < p is conv(x_0, S_j) with S_j = W_0 + ... + W_{p-j}, plus conv(x_{j+k-p}, W_k) for its taps k > p - j."""
  b, t, h, w, c = x.shape
  kt, p = len(taps), pad_first
  t_out = t + p - kt + 1
  if t_out < 1:
    raise ValueError(f"Conv3d over {t} frames (+{p} padding) with {kt} temporal taps: too few frames.")
  ph, pw = padding

  def conv(frames, kernel):  # [B, n, H, W, C] -> [B, n, H', W', F]
    n = frames.shape[1]
    y = jax.lax.conv_general_dilated(frames.reshape((b * n, h, w, c)), kernel, (1, 1), ((ph, ph), (pw, pw)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape((b, n) + y.shape[1:])

  # Outputs j >= p read x_0 at most once: the plain VALID convolution of x. Output j < p is conv(x_0, S_j) plus
  # its taps k > p - j, which read x_{j+k-p}.
  y = sum(conv(x[:, k:k + t_out - p], taps[k]) for k in range(kt)) if t_out > p else None
  prefix = [taps[0]]  # prefix[i] = W_0 + ... + W_i = S_{p-i}
  for k in range(1, p + 1):
    prefix.append(prefix[-1] + taps[k])
  head = []
  for j in range(min(p, t_out)):
    out = conv(x[:, :1], prefix[p - j])
    for k in range(p - j + 1, kt):
      out = out + conv(x[:, j + k - p:j + k - p + 1], taps[k])
    head.append(out)
  return jnp.concatenate(head + ([y] if y is not None else []), axis=1) if head else y


def per_tap_kernels(params):
  """An AutoencoderKL params tree with every temporal conv kernel [kt, kh, kw, C_in, C_out] (kt > 1) stored per
  tap, as `kernel_0` ... `kernel_{kt-1}` [kh, kw, C_in, C_out]: the inference layout for the CPU.

  On the CPU Conv3d runs each temporal tap as a 2D convolution, and with the stacked kernel XLA copies every tap's
  slice out of it on every call: at CogVideoX's widths that is 363 MB of kernels per encode. Splitting them once
  here took a 9x64x64 encode from 2.53 to 2.47 s, and bench_vae's JAX peak RSS from 2298 to 1833 MB (2-core AMD
  EPYC). Conv3d reads either layout and computes the same thing; training and checkpoints keep the stacked one (it
  is the one with logical axes for sharding).
  Runs eagerly, once (for a frozen VAE: pipelines, the latent cache).
  """
  def convert(node):
    if not isinstance(node, dict):
      return node
    kernel = node.get("kernel")
    if kernel is not None and getattr(kernel, "ndim", 0) == 5 and kernel.shape[0] > 1:
      rest = {k: v for k, v in node.items() if k != "kernel"}
      return {**rest, **{f"kernel_{i}": kernel[i] for i in range(kernel.shape[0])}}
    return {k: convert(v) for k, v in node.items()}
  params = nn.unbox(params)  # logical-axis boxes (a fresh init) describe the stacked layout only
  return convert(flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params)


def inference_params(params):
  """The VAE's params laid out for inference on this backend: `per_tap_kernels` on the CPU (where Conv3d runs per
  tap), unchanged elsewhere (where it runs one 3D convolution on the stacked kernel)."""
  return per_tap_kernels(params) if jax.default_backend() == "cpu" else params


class CausalConv3d(nn.Module):
  """Causal 3D conv: time padded on the left with k_t - 1 frames (copies of frame 0, or the cache of the previous
  chunk), spatial zero padding (k - 1) / 2. Returns (output, new cache = the last k_t - 1 padded input frames)."""
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cache: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[jax.Array]]:
    """x [B, T, H, W, C], cache [B, k - 1, H, W, C] or None -> ([B, T, H, W, features], cache or None if k == 1)."""
    k = self.kernel_size
    new_cache, pad_first = None, 0
    if k > 1:
      x = x.astype(self.dtype)
      if cache is None:  # Conv3d pads with copies of frame 0 itself (and does not convolve them)
        pad_first = k - 1
        padded = jnp.concatenate([jnp.repeat(x[:, :1], k - 1, axis=1), x], axis=1)
      else:
        x = padded = jnp.concatenate([cache.astype(self.dtype), x], axis=1)
      new_cache = padded[:, -(k - 1):]
    y = Conv3d(self.features, (k, k, k), ((k - 1) // 2, (k - 1) // 2), dtype=self.dtype,
               param_dtype=self.param_dtype, name="conv")(x, pad_first)
    return y, new_cache


def _frames_2d(fn, x: jax.Array) -> jax.Array:
  """Applies a per-frame 2D op `fn` ([N, H, W, C] -> [N, H', W', C']) to [B, T, H, W, C]."""
  b, t = x.shape[:2]
  y = fn(x.reshape((b * t,) + x.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


class Downsample3D(nn.Module):
  """Optional time compression (average pool of frame pairs, frame 0 apart when T is odd), then a stride-2 3x3
  conv per frame with one row/column of zeros padded at the bottom/right. [B, T, H, W, C] -> [B, T', H/2, W/2, F]."""
  features: int
  compress_time: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    t = x.shape[1]
    if self.compress_time and t > 1:
      first, rest = (x[:, :1], x[:, 1:]) if t % 2 else (x[:, :0], x)
      rest = (rest[:, 0::2] + rest[:, 1::2]) * 0.5
      x = jnp.concatenate([first, rest], axis=1)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
    layer = layers.conv(self.features, (3, 3), strides=2, padding="VALID", dtype=self.dtype,
                   param_dtype=self.param_dtype, name="conv")
    return _frames_2d(layer, x)


class Upsample3D(nn.Module):
  """Nearest x2 in (H, W), and in time when `compress_time` (T -> 2T; odd T > 1: frame 0 only spatially,
  T -> 1 + 2 (T - 1)), then a 3x3 conv per frame. [B, T, H, W, C] -> [B, T', 2H, 2W, F]."""
  features: int
  compress_time: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    t = x.shape[1]
    if self.compress_time and t > 1:
      if t % 2:
        x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
      else:
        x = jnp.repeat(x, 2, axis=1)
    layer = layers.conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   param_dtype=self.param_dtype, name="conv")
    return _frames_2d(layer, x)


# ----------------------------------------------------------------------------------------------------------------
# Spatially conditioned norm and ResNet blocks.


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of PyTorch's `F.interpolate(mode='nearest', size=out_size)` along one axis."""
  if out_size == in_size:
    return np.arange(out_size)
  if out_size == 2 * in_size:
    return np.arange(out_size) >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def resize_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Nearest-neighbour resize of [B, T, H, W, C] to (T', H', W') with PyTorch's index rule."""
  for axis, out in zip((1, 2, 3), size):
    idx = _nearest_indices(x.shape[axis], out)
    if out % x.shape[axis] == 0 and np.array_equal(idx, np.arange(out) // (out // x.shape[axis])):
      x = jnp.repeat(x, out // x.shape[axis], axis=axis)
    else:
      x = jnp.take(x, jnp.asarray(idx), axis=axis)
  return x


class SpatialNorm3D(nn.Module):
  """Decoder norm conditioned on the latent zq: GroupNorm(f) * conv_y(zq') + conv_b(zq'), zq' = zq resized (nearest)
  to f's (T, H, W), frame 0 resized separately when T is odd and > 1 (so it never mixes with later frames)."""
  num_groups: int = 32
  eps: float = 1e-6
  over_time: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, zq: jax.Array) -> jax.Array:
    """f [B, T, H, W, C], zq [B, T_z, h, w, C_z] -> float32 [B, T, H, W, C]."""
    t, h, w = f.shape[1:4]
    if t > 1 and t % 2:
      zq = jnp.concatenate([resize_nearest(zq[:, :1], (1, h, w)), resize_nearest(zq[:, 1:], (t - 1, h, w))], axis=1)
    else:
      zq = resize_nearest(zq, (t, h, w))
    kw = dict(kernel_size=1, dtype=self.dtype, param_dtype=self.param_dtype)
    y, _ = CausalConv3d(f.shape[-1], name="conv_y", **kw)(zq)
    b, _ = CausalConv3d(f.shape[-1], name="conv_b", **kw)(zq)
    norm = GroupNorm3D(self.num_groups, self.eps, self.over_time, self.param_dtype, name="norm_layer")(f)
    return norm * y.astype(jnp.float32) + b.astype(jnp.float32)


class ResnetBlock3D(nn.Module):
  """norm1 - SiLU - causal conv1 - norm2 - SiLU - causal conv2, plus a 1x1x1 conv shortcut when channels change.

  The norms are GroupNorm, or SpatialNorm3D conditioned on `zq` in the decoder (`spatial_norm=True`).
  """
  features: int
  num_groups: int = 32
  eps: float = 1e-6
  spatial_norm: bool = False
  over_time: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _norm(self, name: str):
    if self.spatial_norm:
      return SpatialNorm3D(self.num_groups, 1e-6, self.over_time, self.dtype, self.param_dtype, name=name)
    return GroupNorm3D(self.num_groups, self.eps, self.over_time, self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, zq: Optional[jax.Array] = None,
               cache: Optional[Cache] = None) -> tuple[jax.Array, Cache]:
    """x [B, T, H, W, C] -> ([B, T, H, W, features], cache {'conv1', 'conv2'})."""
    cache = cache or {}
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_args = (zq,) if self.spatial_norm else ()
    h = nn.silu(self._norm("norm1")(x, *norm_args)).astype(self.dtype)
    h, c1 = CausalConv3d(self.features, 3, name="conv1", **kw)(h, cache.get("conv1"))
    h = nn.silu(self._norm("norm2")(h, *norm_args)).astype(self.dtype)
    h, c2 = CausalConv3d(self.features, 3, name="conv2", **kw)(h, cache.get("conv2"))
    if x.shape[-1] != self.features:
      x = Conv3d(self.features, (1, 1, 1), (0, 0), name="conv_shortcut", **kw)(x)
    out = nn.with_logical_constraint(h + x.astype(self.dtype), ACTIVATION_AXES)
    return out, {"conv1": c1, "conv2": c2}


class Blocks3D(nn.Module):
  """A down, mid or up block: `num_layers` ResNet blocks, then an optional Downsample3D / Upsample3D."""
  features: int
  num_layers: int
  resample: str = "none"  # 'none' | 'down' | 'up'
  compress_time: bool = False
  num_groups: int = 32
  eps: float = 1e-6
  spatial_norm: bool = False
  over_time: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    block = nn.remat(ResnetBlock3D) if self.remat else ResnetBlock3D
    self.resnets = [block(self.features, self.num_groups, self.eps, self.spatial_norm, self.over_time, self.dtype,
                          self.param_dtype) for _ in range(self.num_layers)]
    kw = dict(compress_time=self.compress_time, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.resample == "down":
      self.downsamplers = [Downsample3D(self.features, **kw)]
    elif self.resample == "up":
      self.upsamplers = [Upsample3D(self.features, **kw)]

  def __call__(self, x: jax.Array, zq: Optional[jax.Array] = None,
               cache: Optional[Cache] = None) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    new_cache = {}
    for i, resnet in enumerate(self.resnets):
      x, new_cache[f"resnet_{i}"] = resnet(x, zq, cache.get(f"resnet_{i}"))
    if self.resample == "down":
      x = self.downsamplers[0](x)
    elif self.resample == "up":
      x = self.upsamplers[0](x)
    return x, new_cache


# ----------------------------------------------------------------------------------------------------------------
# Encoder, decoder, posterior.


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


# ----------------------------------------------------------------------------------------------------------------
# The autoencoder.


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


class PatchDiscriminator3D(nn.Module):
  """3D PatchGAN discriminator for VAE training: video [B, T, H, W, C] in [-1, 1] -> patch logits
  [B, T', H', W', 1]. 3x3x3 convs with SAME padding (so a 1-frame image works too), stride 2 in (H, W) at every
  level and in time from the second level on, GroupNorm (from the second level on) and LeakyReLU(0.2)."""
  channels: Sequence[int] = (32, 64, 128)
  num_groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.with_logical_constraint(x.astype(self.dtype), ACTIVATION_AXES)
    for i, features in enumerate(self.channels):
      strides = (1 if i == 0 else 2, 2, 2)
      x = layers.conv(features, (3, 3, 3), strides=strides, padding="SAME", dtype=self.dtype,
                 param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      if i > 0:
        x = GroupNorm3D(min(self.num_groups, features), 1e-6, True, self.param_dtype, name=f"norm_{i}")(x)
      x = nn.leaky_relu(x, 0.2).astype(self.dtype)
    x = layers.conv(1, (3, 3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype, name="conv_out")(x)
    return x.astype(jnp.float32)
