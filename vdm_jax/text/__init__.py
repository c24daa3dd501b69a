"""vdm_jax.text."""
