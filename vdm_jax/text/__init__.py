"""vdm_jax.text: tokenizers (T5 sentencepiece, bytes) and text encoders chosen by config.

Frozen encoders' embeddings are cached per split by `vdm_jax.data.cache`.
"""
from vdm_jax.text.encoders import TextEncoder, build, default_config, validate_config
from vdm_jax.text.tokenizers import ByteTokenizer, T5Tokenizer

__all__ = ["ByteTokenizer", "T5Tokenizer", "TextEncoder", "build", "default_config", "validate_config"]
