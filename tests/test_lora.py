"""LoRA as a parameter transform (vdm_jax.models.lora): shapes, PEFT's initialisation, merge and unmerge, axes,
errors (float32). Parity of adapter files with diffusers + PEFT: tests/test_lora_parity.py."""
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
