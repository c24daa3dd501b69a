"""vdm_jax.models.vae.conv.conv2d: lax's convolution with its backward written as two library-layout convolutions.

The explicit backward exists for XLA:CPU's speed inside loop bodies (docs/cpu_profile.md); here it must give what
autodiff of `lax.conv_general_dilated` gives: float32 within 2e-6 relative (a different summation order), bfloat16
within 1e-2, inside a `lax.scan` as outside, with every convolution of the compiled scan in the layout XLA:CPU runs
as a library call."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models.vae import conv


def _reference(x, kernel, padding):
  (ph, pw) = padding
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((ph, ph), (pw, pw)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _close(got, want, rtol):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("kernel_hw,padding", [((3, 3), (1, 1)), ((3, 3), (0, 0)), ((3, 3), (2, 0)),
                                               ((1, 3), (0, 1)), ((1, 1), (0, 0))])
@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 2e-6), (jnp.bfloat16, 1e-2)])
def test_values_and_gradients_equal_autodiff(kernel_hw, padding, dtype, rtol):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, 6, 7, 5), dtype)
  kernel = jax.random.normal(kk, kernel_hw + (5, 4), dtype)
  mine, mine_vjp = jax.vjp(lambda a, b: conv.conv2d(a, b, padding), x, kernel)
  ref, ref_vjp = jax.vjp(lambda a, b: _reference(a, b, padding), x, kernel)
  np.testing.assert_array_equal(np.asarray(mine, np.float32), np.asarray(ref, np.float32))  # the same forward op
  cotangent = jax.random.normal(kg, mine.shape, dtype)
  (dx, dk), (ref_dx, ref_dk) = mine_vjp(cotangent), ref_vjp(cotangent)
  assert dx.dtype == x.dtype and dk.dtype == kernel.dtype and dx.shape == x.shape and dk.shape == kernel.shape
  _close(dx, ref_dx, rtol)
  _close(dk, ref_dk, rtol)


def _scan_loss(conv_fn):
  """Two chunks through a scan, a norm-free SiLU between two convolutions, a carry across chunks."""
  def loss(kernels, xs):
    def body(carry, x):
      y = conv_fn(jax.nn.silu(conv_fn(x + carry, kernels[0])), kernels[1])
      return y, jnp.sum(y ** 2)
    carry, losses = jax.lax.scan(body, jnp.zeros_like(xs[0]), xs)
    return jnp.sum(losses) + jnp.sum(carry)
  return loss


def test_inside_a_scan_gradients_equal_autodiff_and_every_convolution_is_in_the_library_layout():
  xs = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 8, 6))
  kernels = [jax.random.normal(jax.random.PRNGKey(i), (3, 3, 6, 6)) * 0.2 for i in (2, 3)]
  mine = jax.jit(jax.grad(_scan_loss(lambda x, k: conv.conv2d(x, k, (1, 1)))))
  ref = jax.jit(jax.grad(_scan_loss(lambda x, k: _reference(x, k, (1, 1)))))
  for got, want in zip(mine(kernels, xs), ref(kernels, xs)):
    _close(got, want, 2e-6)
  hlo = mine.lower(kernels, xs).compile().as_text()
  labels = re.findall(r"convolution\(.*?dim_labels=([^,]+)", hlo)
  assert len(labels) == 6 and set(labels) == {"b01f_01io->b01f"}, labels  # 2 forward + 2 x 2 backward


def _uses_conv2d(fn, *args):
  return "custom_vjp" in str(jax.make_jaxpr(fn)(*args))


def test_nn_conv_takes_conv2d_only_where_it_applies():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 8, 3))
  cases = ((dict(padding=((1, 1), (1, 1))), True), (dict(padding="SAME"), False),
           (dict(padding="VALID", strides=2), False), (dict(padding=((1, 1), (1, 1)), kernel_dilation=2), False))
  for kwargs, expected in cases:
    layer = nn.Conv(5, (3, 3), conv_general_dilated=conv.conv2d_general_dilated, **kwargs)
    plain = nn.Conv(5, (3, 3), **kwargs)
    params = plain.init(jax.random.PRNGKey(5), x)
    assert _uses_conv2d(lambda p: layer.apply(p, x), params) == expected, kwargs
    np.testing.assert_array_equal(layer.apply(params, x), plain.apply(params, x))
  video = jnp.ones((1, 3, 8, 8, 2))  # a 3D convolution goes to lax unchanged
  layer = nn.Conv(4, (3, 3, 3), padding=((1, 1),) * 3, conv_general_dilated=conv.conv2d_general_dilated)
  params = layer.init(jax.random.PRNGKey(6), video)
  assert not _uses_conv2d(lambda p: layer.apply(p, video), params)
  assert layer.apply(params, video).shape == (1, 3, 8, 8, 4)


def test_padding_outside_the_kernel_is_refused():
  with pytest.raises(ValueError, match=r"conv2d padding \(3, 1\) with a 3x3 kernel; allowed: 0 <= padding"):
    conv.conv2d(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 2)), (3, 1))
