"""CogVideoX weights from diffusers folders, as (module, params) pairs (the contract in shared/DESIGN.md).

    module, params = load_transformer("/path/CogVideoX-2b/transformer")
    module, params = load_vae("/path/CogVideoX-2b/vae")

Weights are read from safetensors without torch. The implementations live in `cogvideox_transformer` and
`cogvideox_vae`; this module is the stable entry point.
"""
from __future__ import annotations

import jax.numpy as jnp


def load_transformer(path: str, dtype=jnp.float32, **kwargs):
  """CogVideoXTransformer3DModel folder -> (module, params); see `cogvideox_transformer.load_transformer`."""
  from vdm_jax.convert import cogvideox_transformer  # pylint: disable=g-import-not-at-top
  return cogvideox_transformer.load_transformer(path, dtype=dtype, **kwargs)


def load_vae(path: str, dtype=jnp.float32, **kwargs):
  """AutoencoderKLCogVideoX folder -> (module, params); see `cogvideox_vae.load_vae`."""
  from vdm_jax.convert import cogvideox_vae  # pylint: disable=g-import-not-at-top
  return cogvideox_vae.load_vae(path, dtype=dtype, **kwargs)
