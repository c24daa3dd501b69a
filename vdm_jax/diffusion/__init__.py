"""vdm_jax.diffusion."""
