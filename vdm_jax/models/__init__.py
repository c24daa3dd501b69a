"""vdm_jax.models."""
