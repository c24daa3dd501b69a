"""LoRA as a parameter transform (vdm_jax.models.lora): shapes, PEFT's initialisation, merge and unmerge, axes,
errors (float32). Parity of adapter files with diffusers + PEFT: tests/test_lora_parity.py."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.models import lora


def test_fresh_adapters_change_nothing_and_merge_unmerge_invert():
  rng = np.random.default_rng(0)
  params = {"layers": {"attn": {"to_q": {"kernel": jnp.asarray(rng.normal(size=(3, 8, 6)), jnp.float32),
                                         "bias": jnp.zeros((3, 6))}},
                       "norm": {"scale": jnp.ones((3, 8))}},
            "proj_out": {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)}}
  spec = lora.Spec.of([("attn/to_q$", 2, 4.0), ("proj_out", 3, 3.0)])
  adapters = lora.init(jax.random.PRNGKey(0), params, spec)
  assert adapters["layers"]["attn"]["to_q"]["lora_a"].shape == (3, 8, 2)  # one adapter per scanned layer
  assert adapters["layers"]["attn"]["to_q"]["lora_b"].shape == (3, 2, 6)
  assert adapters["proj_out"]["lora_a"].shape == (6, 3)
  assert np.abs(adapters["proj_out"]["lora_a"]).max() <= 1 / np.sqrt(6)  # PEFT's Kaiming-uniform bound
  merged = lora.merge(params, adapters, spec)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), merged, params)  # B = 0: no change

  adapters = jax.tree.map(lambda x: x + 0.3, adapters)
  merged = lora.merge(params, adapters, spec, scale=0.5)
  a, b = adapters["layers"]["attn"]["to_q"]["lora_a"], adapters["layers"]["attn"]["to_q"]["lora_b"]
  np.testing.assert_allclose(merged["layers"]["attn"]["to_q"]["kernel"],
                             params["layers"]["attn"]["to_q"]["kernel"] + 0.5 * 2.0 * a @ b, rtol=1e-6, atol=1e-6)
  assert merged["layers"]["norm"]["scale"] is params["layers"]["norm"]["scale"]  # untouched leaves are shared
  back = lora.unmerge(merged, adapters, spec, scale=0.5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), back, params)
  axes = lora.logical_axes(adapters, {"layers": {"attn": {"to_q": {"kernel": ("layers", "embed", "heads")}}},
                                      "proj_out": {"kernel": ("embed", "out")}})
  assert axes["layers"]["attn"]["to_q"] == {"lora_a": ("layers", "embed", None), "lora_b": ("layers", None, "heads")}

  with pytest.raises(ValueError, match=r"LoRA patterns \['mlp'\] match no kernel; kernels: \['layers/attn/to_q', "
                                       r"'proj_out'\]"):
    lora.init(jax.random.PRNGKey(0), params, lora.Spec.of([("mlp", 2, 2.0)]))
  with pytest.raises(ValueError, match="rank is 0; must be an int >= 1"):
    lora.Spec.of([("attn", 0, 1.0)])


def _tiny_dit_params():
  from test_dit import TINY, batch, init  # pylint: disable=g-import-not-at-top
  from vdm_jax.models.dit import DiT  # pylint: disable=g-import-not-at-top
  model, data = DiT(**TINY, remat_policy="full"), batch()
  params = init(model, data)  # adaLN-Zero starts at a zero output: perturb every leaf so the layers matter
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape), params)
  apply = lambda p: model.apply({"params": p["dit"]}, data["latents"], data["timesteps"], data["text"])
  return {"dit": params}, apply


def test_inline_adapters_equal_merged_ones_in_values_and_gradients():
  """`inline` inside a scanned, rematerialised DiT (the adapters of a sub-apply, params['dit']) gives the merged
  model's output and the same adapter gradients, float32, to 1e-5 of the largest value."""
  params, apply = _tiny_dit_params()
  spec = lora.Spec.of([("layers/attn/to_(q|k|v|out)$", 2, 4.0), ("proj_out", 3, 3.0)])
  adapters = lora.init(jax.random.PRNGKey(1), params, spec)
  adapters = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(5), x.shape), adapters)

  def inline(a):
    with lora.inline(expected=lora.adapter_paths(a)):
      return apply(lora.insert(params, a, spec, scale=0.5))
  merged = lambda a: apply(lora.merge(params, a, spec, scale=0.5))
  out, ref = jax.jit(inline)(adapters), jax.jit(merged)(adapters)
  assert np.abs(ref - apply(params)).max() > 1e-2  # the adapters matter
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
  grads = [jax.jit(jax.grad(lambda a, f=f: jnp.sum(f(a) ** 2)))(adapters) for f in (inline, merged)]
  jax.tree.map(lambda g, h: np.testing.assert_allclose(g, h, rtol=0, atol=1e-5 * np.abs(h).max()), *grads)


def test_inline_dropout_drops_the_adapters_input_per_layer():
  """PEFT's LoRA dropout: scaling * (mask * x / (1 - p)) @ A @ B with a mask drawn per call and, in a scanned
  stack, per layer; reproducible from the rng. With A = B = identity the update reveals the mask."""
  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      body = nn.scan(lambda mdl, c, _: (c, nn.Dense(8, use_bias=False, name="proj")(x)), variable_axes={"params": 0},
                     split_rngs={"params": True}, length=3)
      return body(self, None, None)[1]  # [layers, N, 8]: each layer's output on the same input

  x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, (64, 8)), jnp.float32)
  model = Stack()
  params = model.init(jax.random.PRNGKey(0), x)
  spec = lora.Spec.of([("proj", 8, 16.0)])  # scaling 2
  eye = jnp.broadcast_to(jnp.eye(8), (3, 8, 8))
  adapters = jax.tree.map(lambda _: eye, lora.init(jax.random.PRNGKey(1), params, spec))
  base = model.apply(params, x)

  def run(seed, p=0.25):
    with lora.inline(p, lora.adapter_paths(adapters)):
      return model.apply(lora.insert(params, adapters, spec, dropout=p, rng=jax.random.PRNGKey(seed)), x)
  ratio = np.asarray((run(0) - base) / (2.0 * x))
  np.testing.assert_allclose(np.where(ratio > 0.5, ratio, 0.0), np.where(ratio > 0.5, 1 / 0.75, 0.0), rtol=1e-5)
  assert np.all((np.abs(ratio) < 1e-5) | (np.abs(ratio - 1 / 0.75) < 1e-5))
  kept = ratio > 0.5
  assert 0.65 < kept.mean() < 0.85  # keep probability 0.75 over 1,536 entries
  assert not np.array_equal(kept[0], kept[1]) and not np.array_equal(kept[1], kept[2])  # a mask per layer
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.array_equal(run(0), run(1))
  with pytest.raises(ValueError, match=r"LoRA dropout is 1.0; must be in \[0, 1\)"):
    lora.insert(params, adapters, spec, dropout=1.0, rng=jax.random.PRNGKey(0))


def test_inline_refuses_adapters_it_cannot_apply():
  """An adapter on a kernel that is not an nn.Dense's (a Conv here) would be ignored by `inline`: an error names
  it instead."""
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(4, name="head")(nn.Conv(4, (3,), name="conv")(x))

  x = jnp.ones((1, 5, 2))
  params = Net().init(jax.random.PRNGKey(0), x)
  spec = lora.Spec.of([("conv|head", 2, 2.0)])
  adapters = lora.init(jax.random.PRNGKey(1), params, spec)
  with pytest.raises(ValueError, match=r"LoRA adapters of \['params/conv'\] were not applied: inline LoRA adapts "
                                       r"nn.Dense layers only"):
    with lora.inline(expected=lora.adapter_paths(adapters)):
      Net().apply(lora.insert(params, adapters, spec), x)
