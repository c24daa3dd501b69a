"""The VAE's causal 3D convolution, and its per-frame formulation for the CPU.

`Conv3d` is a channel-last 3D convolution that is VALID in time; on the CPU it runs as a sum of 2D convolutions over
frames ('frames'), elsewhere as one XLA 3D convolution ('xla'). `CausalConv3d` pads time on the left (copies of
frame 0, or the cache of the previous chunk) and returns the cache for the next chunk. `per_tap_kernels` and
`inference_params` lay a params tree out for inference on the CPU (one kernel per temporal tap). Also the types and
the activation sharding shared by the rest of the package. `conv2d` is the per-frame 2D convolution with a
backward that XLA:CPU runs fast inside loop bodies (the streamed chunks' scan).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Cache = dict  # nested dict of [B, k - 1, H, W, C] arrays, one per causal conv with a temporal kernel > 1
ACTIVATION_AXES = ("batch", None, None, None, None)  # [B, T, H, W, C]: only the batch is sharded


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
      # XLA:CPU runs a 3D conv slower than the same work as kt 2D convs over frames (experiments/bench_vae.py
      # measures both), so on CPU the temporal taps are summed explicitly.
      y = _conv_frames(x, taps, pad_first, (ph, pw))
    else:
      if pad_first:
        x = jnp.concatenate([jnp.repeat(x[:, :1], pad_first, axis=1), x], axis=1)
      y = jax.lax.conv_general_dilated(x, kernel if kernel is not None else jnp.stack(taps),
                                       (1, 1, 1), ((0, 0), (ph, ph), (pw, pw)),
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return y + bias.astype(self.dtype)


def _conv_nhwc(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  """x [N, H, W, C] * kernel [kh, kw, C, F], stride 1, zero padding ((ph, ph), (pw, pw)) -> [N, H', W', F]."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
  """The per-frame 2D convolution: x [N, H, W, C] * kernel [kh, kw, C, F], stride 1, zero padding (ph, pw) with
  0 <= ph < kh and 0 <= pw < kw -> [N, H + 2 ph - kh + 1, W + 2 pw - kw + 1, F].

  Its backward is written out as two convolutions already in the layout XLA:CPU hands to its convolution library
  (batch-major input, [kh, kw, in, out] kernel): the input gradient convolves the output gradient with the flipped,
  transposed kernel; the kernel gradient convolves the input, channels as batch and frames as features, with the
  output gradient as a [H', W', N, F] kernel. Autodiff's transposed convolutions are in other layouts, which
  XLA:CPU rearranges only in a program's top level: inside a loop body (the VAE's streamed chunks, `nn.scan`) it
  emits them as plain loops, 4x (LLVM level 3) to 24x (level 0) slower (docs/cpu_profile.md). Same values."""
  (kh, kw), (ph, pw) = kernel.shape[:2], padding
  if not (0 <= ph < kh and 0 <= pw < kw):
    raise ValueError(f"conv2d padding {padding} with a {kh}x{kw} kernel; allowed: 0 <= padding < kernel size.")
  return _conv_nhwc(x, kernel, ((ph, ph), (pw, pw)))


def _conv2d_fwd(x, kernel, padding):
  return conv2d(x, kernel, padding), (x, kernel)


def _conv2d_bwd(padding, residuals, dy):
  x, kernel = residuals
  (kh, kw), (ph, pw) = kernel.shape[:2], padding
  dx = _conv_nhwc(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3), ((kh - 1 - ph,) * 2, (kw - 1 - pw,) * 2))
  dkernel = _conv_nhwc(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), ((ph, ph), (pw, pw)))  # [C, kh, kw, F]
  return dx.astype(x.dtype), dkernel.transpose(1, 2, 0, 3).astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`: the stride-1, undilated, symmetrically
  padded NHWC/HWIO case goes to `conv2d` (its backward runs fast inside loop bodies on XLA:CPU), every other case
  to lax unchanged."""
  plain = (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and feature_group_count == 1 and precision is None
           and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
           and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
           and not isinstance(padding, str) and all(lo == hi for lo, hi in padding))
  if plain and all(0 <= lo < k for (lo, _), k in zip(padding, rhs.shape[:2])):
    return conv2d(lhs, rhs, (padding[0][0], padding[1][0]))
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                      dimension_numbers, feature_group_count, precision=precision)


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
    y = conv2d(frames.reshape((b * n, h, w, c)), kernel, (ph, pw))
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
  slice out of it on every call; split once here, the kernels are read in place (faster, less peak memory). Conv3d
  reads either layout and computes the same thing; training and checkpoints keep the stacked one (it is the one
  with logical axes for sharding).
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
