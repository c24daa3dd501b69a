"""vdm_jax.pipelines."""
