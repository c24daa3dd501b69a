"""vdm_jax.convert."""
