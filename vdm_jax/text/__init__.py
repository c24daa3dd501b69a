"""vdm_jax.text: tokenizers (T5 sentencepiece, bytes), text encoders chosen by config, the text-embedding cache."""
from vdm_jax.text.cache import (CachedTextSource, CacheMismatchError, EmbeddingCache, cache_split, cached_source,
                                 write_cache)
from vdm_jax.text.encoders import TextEncoder, build, default_config, validate_config
from vdm_jax.text.tokenizers import ByteTokenizer, T5Tokenizer

__all__ = [
    "ByteTokenizer", "CacheMismatchError", "CachedTextSource", "EmbeddingCache", "T5Tokenizer", "TextEncoder", "build",
    "cache_split", "cached_source", "default_config", "validate_config", "write_cache",
]
