"""Text encoders chosen by config: T5 from a Hugging Face folder, or the small byte-level T5 trained from scratch.

    text = encoders.build(config.text)        # a `TextEncoder`; cheap (reads configs, not weights)
    params = text.init(rng)                   # 't5': the folder's weights; 'byte': a random init
    embeds = text.encode(params, ["a red circle moving left"])     # [B, max_length, d_model]

The config section (`default_config()`; the keys `validate_config` checks):
  type                'byte' (no file needed: the built-in default for Captioned Shapes) or 't5'
  path                't5': a T5 folder (config.json + safetensors and spiece.model), or a diffusers pipeline
                      folder with `text_encoder/` and `tokenizer/` (CogVideoX)
  tokenizer_path      't5': the tokenizer folder when it is neither `path` nor `path/tokenizer`
  max_length          tokens per prompt, padded / truncated (CogVideoX: 226)
  trainable           train the encoder with the model (else frozen; frozen encoders can be cached: vdm_jax.data.cache)
  use_attention_mask  hide padding from the encoder's attention. False by default because the CogVideoX pipeline
                      passes no mask to T5, and its DiT was trained on the embeddings computed that way
  dtype               compute dtype of the encoder ('t5' weights are loaded in it; `wo` stays float32)
  d_model, d_kv, num_heads, d_ff, num_layers    the byte encoder's widths (ignored for 't5': read from config.json)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdm_jax.models.t5 import T5Encoder
from vdm_jax.text.tokenizers import ByteTokenizer, T5Tokenizer
from vdm_jax import config as config_lib
from vdm_jax.convert import safetensors_io
from vdm_jax.convert import t5 as t5_convert

TYPES = ("byte", "t5")
DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
  """The `text` config section with its defaults (a small frozen byte encoder, no mask, 226 tokens)."""
  return ml_collections.ConfigDict({
      "type": "byte", "path": "", "tokenizer_path": "", "max_length": 226, "trainable": False,
      "use_attention_mask": False, "dtype": "float32",
      "d_model": 256, "d_kv": 64, "num_heads": 4, "d_ff": 512, "num_layers": 2,
  })


def validate_config(section, prefix: str = "text") -> None:
  """Raises ConfigError naming the key of `section` (at `prefix`) that is wrong and what is allowed."""
  config_lib.check(section.type in TYPES, f"{prefix}.type", f"is {section.type!r}; allowed values: {list(TYPES)}.")
  config_lib.check(section.dtype in DTYPES, f"{prefix}.dtype", f"is {section.dtype!r}; allowed values: {list(DTYPES)}.")
  config_lib.check(section.max_length >= 1, f"{prefix}.max_length", f"is {section.max_length}; must be >= 1.")
  if section.type == "t5":
    config_lib.check(bool(section.path), f"{prefix}.path", "is empty; type 't5' needs a folder with config.json, "
                     "safetensors weights and spiece.model (or a diffusers folder with text_encoder/ and tokenizer/).")
  else:
    for key in ("d_model", "d_kv", "num_heads", "d_ff", "num_layers"):
      config_lib.check(section[key] >= 1, f"{prefix}.{key}", f"is {section[key]}; must be >= 1.")


def _t5_folders(section) -> tuple[str, str]:
  """(encoder folder, tokenizer folder) of a 't5' section."""
  path = os.path.expanduser(section.path)
  if os.path.isdir(os.path.join(path, "text_encoder")):  # a diffusers pipeline folder
    encoder, tokenizer = os.path.join(path, "text_encoder"), os.path.join(path, "tokenizer")
  else:
    encoder = tokenizer = path
  return encoder, os.path.expanduser(section.tokenizer_path) if section.tokenizer_path else tokenizer


@dataclasses.dataclass(eq=False)
class TextEncoder:
  """An encoder module with its tokenizer and settings. `weights_path` '' means a random init."""
  module: T5Encoder
  tokenizer: T5Tokenizer | ByteTokenizer
  max_length: int
  trainable: bool = False
  use_attention_mask: bool = False
  weights_path: str = ""

  def __post_init__(self):
    self._apply_jit = jax.jit(self.apply)

  @property
  def d_model(self) -> int:
    return self.module.d_model

  def init(self, rng: jax.Array) -> Any:
    """The encoder's params: loaded from `weights_path`, or initialised from `rng`."""
    if self.weights_path:
      return t5_convert.load_encoder(self.weights_path, dtype=self.module.dtype)[1]
    ids = jnp.zeros((1, self.max_length), jnp.int32)
    # Without the caller's sharding rules: inside a trainer's mesh, one row cannot be split over the batch axes.
    with nn.logical_axis_rules(()):
      return self.module.init(rng, ids)["params"]

  def tokenize(self, texts: str | Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (ids, mask), int32 [B, max_length] each."""
    return self.tokenizer(texts, self.max_length, return_attention_mask=True)

  def apply(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """ids [B, L] (+ mask [B, L]) -> embeddings [B, L, d_model]; the mask is used only if `use_attention_mask`."""
    return self.module.apply({"params": params}, input_ids, attention_mask if self.use_attention_mask else None)

  def encode(self, params: Any, texts: str | Iterable[str]) -> jax.Array:
    """Texts -> embeddings [B, max_length, d_model] (jitted; one compile per batch size)."""
    return self.encode_tokens(params, *self.tokenize(texts))

  def encode_tokens(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """`apply`, jitted (one compile per batch shape)."""
    return self._apply_jit(params, input_ids, attention_mask)

  def fingerprint(self) -> dict[str, Any]:
    """What determines the embeddings (stored with a cache, so a cache built with another encoder is noticed)."""
    m = self.module
    return {"type": type(self.tokenizer).__name__, "weights_path": self.weights_path, "max_length": self.max_length,
            "use_attention_mask": self.use_attention_mask, "dtype": jnp.dtype(m.dtype).name,
            "widths": [m.vocab_size, m.d_model, m.d_kv, m.num_heads, m.d_ff, m.num_layers]}


def build(section) -> TextEncoder:
  """The TextEncoder for a `text` config section (see the module docstring); validates it first."""
  validate_config(section)
  dtype = jnp.dtype(section.dtype)
  if section.type == "t5":
    encoder_path, tokenizer_path = _t5_folders(section)
    # As `load_encoder`: `wo` computed in float32.
    module = t5_convert.encoder_from_config(safetensors_io.read_config(encoder_path), dtype=dtype)
    module = module.clone(wo_dtype=jnp.float32)
    return TextEncoder(module, T5Tokenizer.from_pretrained(tokenizer_path), section.max_length,
                       section.trainable, section.use_attention_mask, weights_path=encoder_path)
  tokenizer = ByteTokenizer()
  module = T5Encoder(vocab_size=tokenizer.vocab_size, d_model=section.d_model, d_kv=section.d_kv,
                     num_heads=section.num_heads, d_ff=section.d_ff, num_layers=section.num_layers,
                     dtype=dtype, wo_dtype=dtype)
  return TextEncoder(module, tokenizer, section.max_length, section.trainable, section.use_attention_mask)
