"""The DiT as a from-scratch model: both conditionings and every activation train (loss decreases), adaLN-Zero
starts at a zero output, layers are scanned with a 'layers' axis, remat policies do not change gradients, and
bad field values fail naming the field."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from vdm_jax.models.dit import ACTIVATIONS, DiT
from vdm_jax.parallel.sharding import DEFAULT_RULES

TINY = dict(in_channels=4, patch_size=2, num_layers=2, num_heads=2, head_dim=16, text_dim=8, time_embed_dim=16,
            sample_frames=2, sample_height=4, sample_width=4, max_text_length=3)


def batch(seed=0, b=4):
  rng = np.random.default_rng(seed)
  return dict(latents=rng.normal(size=(b, 2, 4, 4, 4)).astype(np.float32),
              timesteps=rng.uniform(0, 1000, size=(b,)).astype(np.float32),
              text=rng.normal(size=(b, 3, 8)).astype(np.float32),
              target=rng.normal(size=(b, 2, 4, 4, 4)).astype(np.float32))


def init(model, data, boxed=False):
  """Jitted init (much faster than eager init of a scanned model)."""
  fn = lambda: model.init(jax.random.PRNGKey(0), data["latents"], data["timesteps"], data["text"])["params"]
  params = jax.jit(fn)()
  return params if boxed else nn.meta.unbox(params)


@pytest.fixture(scope="module")
def joint_params():
  """Params do not depend on the activation: one init serves every joint model."""
  return init(DiT(**TINY), batch())


def train(model, params, steps=8, lr=3e-3):
  """Adam on a fixed random regression batch; returns the losses."""
  data = batch()
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      out = model.apply({"params": p}, data["latents"], data["timesteps"], data["text"])
      return jnp.mean(jnp.square(out - data["target"]))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  return losses


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_joint_trains_with_each_activation(joint_params, activation):
  losses = train(DiT(**TINY, activation=activation), joint_params)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses


def test_cross_trains():
  model = DiT(**TINY, conditioning="cross", use_rope=True)
  params = init(model, batch())
  assert "cross_attn" in params["layers"] and "adaln_shared" in params and "adaln_table" in params["layers"]
  losses = train(model, params)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses


def test_adaln_zero_init_and_scanned_params():
  model = DiT(**TINY)
  data = batch(b=2)
  boxed = init(model, data, boxed=True)
  params = nn.meta.unbox(boxed)
  out = jax.jit(model.apply)({"params": params}, data["latents"], data["timesteps"], data["text"])
  assert out.shape == data["latents"].shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero output projection and zero modulation
  assert not np.any(params["layers"]["adaln_1"]["kernel"]) and not np.any(params["adaln_out"]["kernel"])
  assert params["layers"]["attn"]["to_q"]["kernel"].shape == (2, 32, 32)  # [layers, D, heads * head_dim]
  specs = nn.get_partition_spec(boxed)
  assert specs["layers"]["attn"]["to_q"]["kernel"] == P("layers", "embed", "heads")
  assert specs["layers"]["mlp"]["fc_out"]["kernel"] == P("layers", "mlp", "embed")
  # 'layers' has no rule (yet): it stays unsharded
  assert nn.logical_to_mesh_axes(("layers", "embed", "heads"), DEFAULT_RULES) == P(None, "fsdp", "tensor")


def test_remat_policies_give_the_same_gradients():
  data = batch(b=2)
  model = DiT(**TINY, zero_init=False)
  params = init(model, data)

  def grad_fn(policy):
    m = model.clone(remat_policy=policy)
    loss = lambda p: jnp.sum(m.apply({"params": p}, data["latents"], data["timesteps"], data["text"]) ** 2)
    return jax.grad(loss)

  reference, full = jax.jit(grad_fn("none"))(params), jax.jit(grad_fn("full"))(params)
  for g, r in zip(jax.tree.leaves(full), jax.tree.leaves(reference)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)
  for policy in ("dots_saveable", "dots_with_no_batch_dims_saveable", "nothing_saveable"):  # traced, not compiled
    shapes = jax.eval_shape(grad_fn(policy), params)
    assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, reference)


@pytest.mark.parametrize("conditioning", ["joint", "cross"])
def test_unrolled_layer_scan_is_the_same_model(conditioning):
  """scan_unroll changes how the layer loop compiles, not the params or the function (outputs and gradients)."""
  data = batch(b=2)
  model = DiT(**TINY, conditioning=conditioning, zero_init=False)
  params = init(model, data)
  unrolled = model.clone(scan_unroll=TINY["num_layers"])
  assert jax.tree.map(jnp.shape, init(unrolled, data)) == jax.tree.map(jnp.shape, params)

  def value_and_grad(m):
    loss = lambda p: jnp.sum(m.apply({"params": p}, data["latents"], data["timesteps"], data["text"]) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (v0, g0), (v1, g1) = value_and_grad(model), value_and_grad(unrolled)
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_close_to_float32():
  data = batch(b=1)
  model = DiT(**TINY, zero_init=False)
  params = init(model, data)
  ref = jax.jit(model.apply)({"params": params}, data["latents"], data["timesteps"], data["text"])
  out = jax.jit(model.clone(dtype="bfloat16").apply)({"params": params}, data["latents"], data["timesteps"],
                                                      data["text"])
  assert out.dtype == jnp.float32
  assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) < 0.05


@pytest.mark.parametrize("field,value", [("conditioning", "concat"), ("activation", "tanh"), ("remat_policy", "some"),
                                         ("pos_embed", "rope"), ("attention_backend", "flash")])
def test_bad_fields_are_named(field, value):
  data = batch(b=1)
  with pytest.raises(ValueError, match=f"DiT.{field}={value!r}; allowed"):
    jax.eval_shape(lambda: DiT(**TINY, **{field: value}).init(jax.random.PRNGKey(0), data["latents"],
                                                               data["timesteps"], data["text"]))


def test_pooled_text_adds_the_mean_prompt_embedding_to_the_time_embedding():
  """pooled_text=True: temb += MLP(mean over tokens of text_embeds). With that MLP's output layer zeroed the model is
  exactly the one without it (same other params); otherwise the prompt changes every block's modulation."""
  data = batch(b=2)
  plain, pooled = DiT(**TINY, zero_init=False), DiT(**TINY, zero_init=False, pooled_text=True)
  params = init(pooled, data)
  assert set(params) - set(init(plain, data)) == {"text_pool_embed"}
  run = lambda model, p: np.asarray(jax.jit(model.apply)({"params": p}, data["latents"], data["timesteps"],
                                                         data["text"]))
  silenced = {**params, "text_pool_embed": {**params["text_pool_embed"], "linear_2": jax.tree.map(
      jnp.zeros_like, params["text_pool_embed"]["linear_2"])}}
  without = {k: v for k, v in params.items() if k != "text_pool_embed"}
  np.testing.assert_allclose(run(pooled, silenced), run(plain, without), rtol=1e-6, atol=1e-6)
  assert np.abs(run(pooled, params) - run(plain, without)).max() > 1e-3
