"""vdm_jax: text-to-video latent diffusion in JAX/Flax (3D causal VAE, DiT with adaLN, T5).

The package is pure: importing it does no work and changes no global configuration.
"""

__version__ = "0.1.0"
