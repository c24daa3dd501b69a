"""CogVideoX weights from diffusers folders, as (module, params) pairs (a public contract: docs/design.md).

    module, params = load_transformer("/path/CogVideoX-2b/transformer")
    module, params = load_vae("/path/CogVideoX-2b/vae")
    params = load_lora(params, "/path/adapter/pytorch_lora_weights.safetensors", scale=1.0)   # diffusers LoRA

Weights are read from safetensors without torch. The implementations live in `cogvideox_transformer` and
`cogvideox_vae`; this module is the stable entry point.
"""
from __future__ import annotations

import jax.numpy as jnp

from vdm_jax.convert import cogvideox_lora, cogvideox_transformer, cogvideox_vae


def load_transformer(path: str, dtype=jnp.float32, **kwargs):
  """CogVideoXTransformer3DModel folder -> (module, params); see `cogvideox_transformer.load_transformer`."""
  return cogvideox_transformer.load_transformer(path, dtype=dtype, **kwargs)


def load_vae(path: str, dtype=jnp.float32, **kwargs):
  """AutoencoderKLCogVideoX folder -> (module, params); see `cogvideox_vae.load_vae`."""
  return cogvideox_vae.load_vae(path, dtype=dtype, **kwargs)


def load_lora(params, path: str, scale: float = 1.0):
  """Transformer params with a diffusers LoRA file merged; see `cogvideox_lora.load_lora`."""
  return cogvideox_lora.load_lora(params, path, scale=scale)


def save_lora(adapters, path: str, spec=None) -> str:
  """Adapters (vdm_jax.models.lora) as a diffusers LoRA file; see `cogvideox_lora.save_lora`."""
  return cogvideox_lora.save_lora(adapters, path, spec)
