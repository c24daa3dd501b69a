"""Tokenizers: T5's sentencepiece tokenizer (ids identical to transformers' `T5Tokenizer`) and a byte tokenizer.

    tok = T5Tokenizer.from_pretrained("/path/CogVideoX-2b/tokenizer")     # spiece.model, else tokenizer.json
    ids = tok(["a red circle moving left", ""], max_length=226)          # int32 [2, 226]
    ids, mask = tok(prompts, max_length=226, return_attention_mask=True)

    ids = ByteTokenizer()(prompts, max_length=64)                         # no file: UTF-8 bytes, ByT5 ids

Both follow transformers' `tokenizer(texts, padding="max_length", max_length=L, truncation=True)`: the text's ids,
cut to L - 1 when longer, then EOS (id 1), then padding with id 0 up to L. The mask is 1 on text and EOS, 0 on
padding.

What transformers 5.x's T5Tokenizer does, and so what `T5Tokenizer` here reproduces:
- The ids of ordinary text are sentencepiece's (`spiece.model`: NFKC-based normalisation, whitespace collapsed,
  a "▁" prefix per word, unigram segmentation; unknown characters -> unk id 2, runs of them fused into one).
- `extra_ids` sentinel tokens `<extra_id_0>` .. `<extra_id_{n-1}>` (n = 100 for T5) extend the vocabulary in
  reverse: `<extra_id_i>` has id `spm_size + n - 1 - i` (so 32099 .. 32000 for T5's 32000 pieces; 32100 ids in all,
  the model's embedding has 32128 rows).
- Special tokens written in the text (`</s>`, `<pad>`, `<unk>`, `<extra_id_i>` and any additional special tokens
  of the folder's `tokenizer_config.json` / `special_tokens_map.json`) become their single id, and the text between
  them is tokenized piece by piece, each with its own "▁" prefix.

A folder saved by transformers 5.x has no `spiece.model`, only `tokenizer.json` (the `tokenizers` library's
serialisation of the same pipeline: the model's vocabulary, its normalisation charsmap and the special tokens as
added tokens); such a folder is read by the `tokenizers` library, as transformers' T5Tokenizer reads it, and gives
its ids (tests/test_tokenizers.py compares them).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def _as_list(texts: str | Iterable[str]) -> list[str]:
  texts = [texts] if isinstance(texts, str) else list(texts)
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str (decode bytes with .decode('utf-8')).")
  return texts


def pad_batch(sequences: Sequence[Sequence[int]], max_length: int, *, eos_id: int = EOS_ID, pad_id: int = PAD_ID,
              return_attention_mask: bool = False):
  """Token lists -> int32 ids [B, max_length]: each cut to max_length - 1, then EOS, then pad (and the mask [B, L])."""
  if max_length < 1:
    raise ValueError(f"max_length={max_length}; it must be >= 1 (room for EOS).")
  ids = np.full((len(sequences), max_length), pad_id, np.int32)
  mask = np.zeros((len(sequences), max_length), np.int32)
  for i, seq in enumerate(sequences):
    seq = list(seq[:max_length - 1]) + [eos_id]
    ids[i, :len(seq)] = seq
    mask[i, :len(seq)] = 1
  return (ids, mask) if return_attention_mask else ids


def _token_content(token: Any) -> str:
  """A token from a transformers tokenizer config: a str, or a dict with 'content' (a serialised AddedToken)."""
  return token["content"] if isinstance(token, Mapping) else str(token)


class T5Tokenizer:
  """T5's sentencepiece tokenizer, giving the ids transformers' `T5Tokenizer` gives (see the module docstring).

  `model_file`: a sentencepiece model (T5's `spiece.model`), or a `tokenizers` serialisation (`tokenizer.json`,
  whose added tokens already hold the sentinels and special tokens). `extra_ids`: number of `<extra_id_i>`
  sentinels. `special_tokens`: more {token text: id} matched as single tokens (transformers' `added_tokens_decoder`;
  a tokenizer.json's added tokens carry their own ids instead).
  """

  def __init__(self, model_file: str, *, extra_ids: int = 100, special_tokens: Mapping[str, int] | None = None,
               additional_special_tokens: Sequence[str] = (), pad_token: str = "<pad>", eos_token: str = "</s>",
               unk_token: str = "<unk>"):
    with open(model_file, "rb") as f:
      self._proto = f.read()
    self._settings = dict(file=model_file, json=model_file.endswith(".json"), extra_ids=extra_ids,
                          special_tokens=dict(special_tokens or {}),
                          additional_special_tokens=list(additional_special_tokens), pad_token=pad_token,
                          eos_token=eos_token, unk_token=unk_token)
    self._build()

  def _build(self):
    s = self._settings
    if s.get("json"):
      self._build_from_json()
      return
    import sentencepiece  # pylint: disable=g-import-not-at-top
    self._fast = None
    self.sp = sentencepiece.SentencePieceProcessor(model_proto=self._proto)
    self.spm_size = self.sp.get_piece_size()
    self.extra_ids = s["extra_ids"]
    ids = {name: self._piece_id(s[f"{name}_token"], name) for name in ("pad", "eos", "unk")}
    self.pad_id, self.eos_id, self.unk_id = ids["pad"], ids["eos"], ids["unk"]
    table = {s["pad_token"]: self.pad_id, s["eos_token"]: self.eos_id, s["unk_token"]: self.unk_id}
    for i in range(self.extra_ids):
      table[f"<extra_id_{i}>"] = self.spm_size + self.extra_ids - 1 - i
    table.update(s["special_tokens"])  # explicit ids (a saved added_tokens_decoder) win
    for token in s["additional_special_tokens"]:
      if token not in table:
        table[token] = self._piece_id(token, "additional special")
    self.special_tokens: dict[str, int] = table
    self.vocab_size = max(self.spm_size + self.extra_ids, max(table.values()) + 1)
    # Longest first, so that a token that is a prefix of another never wins (transformers matches leftmost-longest).
    pattern = "|".join(re.escape(t) for t in sorted(table, key=len, reverse=True))
    self._split = re.compile(f"({pattern})")

  def _build_from_json(self):
    """The `tokenizers` pipeline of a tokenizer.json, with the folder's special tokens added as transformers adds
    them; its own truncation, padding and EOS are off because `pad_batch` does those as for the other backend."""
    import tokenizers  # pylint: disable=g-import-not-at-top
    s = self._settings
    self.sp = None
    try:
      self._fast = tokenizers.Tokenizer.from_str(self._proto.decode("utf-8"))
    except Exception as e:  # pylint: disable=broad-except  (the library raises a bare Exception)
      raise ValueError(f"{s.get('file', 'tokenizer.json')}: not a tokenizers file ({e}).") from None
    self._fast.no_truncation()
    self._fast.no_padding()
    added = {t.content for t in self._fast.get_added_tokens_decoder().values()}
    wanted = [s["pad_token"], s["eos_token"], s["unk_token"], *s["additional_special_tokens"]]
    missing = [t for t in dict.fromkeys(wanted) if t not in added]
    if missing:
      self._fast.add_special_tokens(missing)
    ids = {name: self._fast.token_to_id(s[f"{name}_token"]) for name in ("pad", "eos", "unk")}
    for name, token_id in ids.items():
      if token_id is None:
        raise ValueError(f"The {name} token {s[name + '_token']!r} is not in the tokenizer.json vocabulary.")
    self.pad_id, self.eos_id, self.unk_id = ids["pad"], ids["eos"], ids["unk"]
    self.spm_size = self._fast.get_vocab_size(with_added_tokens=False)
    self.extra_ids = s["extra_ids"]
    self.special_tokens = {t.content: i for i, t in self._fast.get_added_tokens_decoder().items() if t.special}
    self.vocab_size = self._fast.get_vocab_size(with_added_tokens=True)

  def _piece_id(self, token: str, what: str) -> int:
    piece_id = self.sp.piece_to_id(token)
    if self.sp.id_to_piece(piece_id) != token:
      raise ValueError(f"The {what} token {token!r} is not a piece of the sentencepiece model (size {self.spm_size}).")
    return piece_id

  @classmethod
  def from_pretrained(cls, path: str) -> "T5Tokenizer":
    """From a Hugging Face tokenizer folder: `spiece.model`, or else `tokenizer.json` (what transformers 5.x
    saves), plus `tokenizer_config.json` and `special_tokens_map.json` when present (extra_ids, special tokens)."""
    model_file = os.path.join(path, "spiece.model")
    if not os.path.isfile(model_file):
      model_file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(model_file):
      present = sorted(os.listdir(path)) if os.path.isdir(path) else "no such folder"
      raise FileNotFoundError(f"No spiece.model or tokenizer.json in {path!r} (found: {present}); a T5 tokenizer "
                              "folder has one of them.")
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the tokenizer config wins
      file = os.path.join(path, name)
      if os.path.isfile(file):
        with open(file, encoding="utf-8") as f:
          config.update(json.load(f))
    additional = [_token_content(t) for key in ("additional_special_tokens", "extra_special_tokens")
                  for t in (config.get(key) or [])]
    added = {_token_content(t): int(i) for i, t in (config.get("added_tokens_decoder") or {}).items()}
    names = {f"{k}_token": _token_content(config[f"{k}_token"]) for k in ("pad", "eos", "unk")
             if config.get(f"{k}_token")}
    return cls(model_file, extra_ids=int(config.get("extra_ids", 100)), special_tokens=added,
               additional_special_tokens=additional, **names)

  def encode(self, text: str) -> list[int]:
    """The ids of one text: special tokens whole, sentencepiece between them; no EOS, no truncation."""
    if self._fast is not None:  # one text at a time: encode_batch's threads make the library warn in forked workers
      return self._fast.encode(text, add_special_tokens=False).ids
    ids: list[int] = []
    for i, chunk in enumerate(self._split.split(text)):
      if i % 2:  # odd chunks are the separators the pattern captured
        ids.append(self.special_tokens[chunk])
      elif chunk:
        ids.extend(self.sp.encode(chunk))
    return ids

  def __call__(self, texts: str | Iterable[str], max_length: int = 226, *, return_attention_mask: bool = False):
    """Texts -> int32 ids [B, max_length] (+ mask [B, max_length]): truncated, EOS, padded with 0."""
    return pad_batch([self.encode(t) for t in _as_list(texts)], max_length, eos_id=self.eos_id, pad_id=self.pad_id,
                     return_attention_mask=return_attention_mask)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, skipping pad, EOS and other special tokens."""
    if self._fast is not None:
      return self._fast.decode([int(i) for i in ids], skip_special_tokens=True)
    special = set(self.special_tokens.values())
    return self.sp.decode([int(i) for i in ids if int(i) not in special and int(i) < self.spm_size])

  def __getstate__(self):  # picklable for worker processes (the processor itself is rebuilt from the model bytes)
    return {"proto": self._proto, "settings": self._settings}

  def __setstate__(self, state):
    self._proto, self._settings = state["proto"], state["settings"]
    self._build()


class ByteTokenizer:
  """UTF-8 bytes with ByT5's ids: pad 0, EOS 1, unk 2, byte b -> b + 3 (vocab 259). Needs no file.

  Unlike transformers' ByT5Tokenizer, special-token strings in the text ("</s>", "<pad>", ...) are plain bytes:
  a caption cannot inject a control token.
  """
  offset = 3
  vocab_size = 256 + 3
  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

  def encode(self, text: str) -> list[int]:
    """The ids of one text (no EOS, no truncation)."""
    return [b + self.offset for b in text.encode("utf-8")]

  def __call__(self, texts: str | Iterable[str], max_length: int = 226, *, return_attention_mask: bool = False):
    """Texts -> int32 ids [B, max_length] (+ mask [B, max_length]): truncated, EOS, padded with 0."""
    return pad_batch([self.encode(t) for t in _as_list(texts)], max_length, eos_id=self.eos_id, pad_id=self.pad_id,
                     return_attention_mask=return_attention_mask)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text (special ids dropped; a sequence cut inside a character decodes with a replacement mark)."""
    return bytes(int(i) - self.offset for i in ids if int(i) >= self.offset).decode("utf-8", errors="replace")
