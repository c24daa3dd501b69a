"""vdm_jax.models.layers.dense's matmul: autodiff's values, with the kernel gradient over flattened leading axes.

The explicit backward exists for XLA:CPU's speed in float32 (docs/cpu_profile.md); here it must give what
`lax.dot_general`'s own derivative gives, within 2e-6 relative (a different summation order). Other dtypes take
lax.dot_general itself."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models import layers


def _reference(x, kernel):
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@pytest.mark.parametrize("shape", [(5, 8), (3, 7, 8), (2, 3, 5, 8)])
def test_matmul_values_and_gradients_equal_autodiff(shape, dtype=jnp.float32, rtol=2e-6):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, shape, dtype)
  kernel = jax.random.normal(kk, (shape[-1], 6), dtype)
  cotangent = jax.random.normal(kg, shape[:-1] + (6,), dtype)
  mine, mine_vjp = jax.vjp(layers.matmul_dot_general, x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  ref, ref_vjp = jax.vjp(_reference, x, kernel)
  np.testing.assert_array_equal(np.asarray(mine, np.float32), np.asarray(ref, np.float32))  # the same forward op
  (dx, dk), (ref_dx, ref_dk) = mine_vjp(cotangent)[:2], ref_vjp(cotangent)
  assert dx.dtype == x.dtype and dk.dtype == kernel.dtype and dx.shape == x.shape and dk.shape == kernel.shape
  for got, want in ((dx, ref_dx), (dk, ref_dk)):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def _uses_explicit_backward(x, kernel):
  jaxpr = jax.make_jaxpr(lambda a, b: layers.matmul_dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ()))))(x, kernel)
  return "custom_vjp" in str(jaxpr)


def test_only_float32_takes_the_explicit_backward():
  assert _uses_explicit_backward(jnp.ones((2, 3, 4)), jnp.ones((4, 5)))
  assert not _uses_explicit_backward(jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16))


def test_other_contractions_go_to_lax_dot_general():
  x, kernel = jnp.ones((4, 3)), jnp.ones((4, 5))
  out = layers.matmul_dot_general(x, kernel, (((0,), (0,)), ((), ())))  # contracting the first axis
  np.testing.assert_array_equal(out, jnp.full((3, 5), 4.0))
  out = layers.matmul_dot_general(jnp.ones((2, 4)), jnp.ones((4, 5), jnp.bfloat16), (((1,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32)
  assert out.dtype == jnp.float32 and float(out[0, 0]) == 4.0


def test_dense_layer_trains_like_flax_dense():
  """layers.dense against nn.Dense with the same parameters: equal outputs, parameter gradients within float32
  rounding, in float32 and with a bfloat16 compute dtype."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 16))
  for dtype, rtol in ((jnp.float32, 2e-6), (jnp.bfloat16, 1e-2)):
    mine = layers.dense(12, (None, None), dtype=dtype)
    flax_dense = nn.Dense(12, dtype=dtype)
    params = nn.meta.unbox(mine.init(jax.random.PRNGKey(2), x))
    loss = lambda module, p: jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)))
    np.testing.assert_array_equal(np.asarray(mine.apply(params, x), np.float32),
                                  np.asarray(flax_dense.apply(params, x), np.float32))
    got, want = jax.grad(lambda p: loss(mine, p))(params), jax.grad(lambda p: loss(flax_dense, p))(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=rtol * float(jnp.abs(w).max()))
