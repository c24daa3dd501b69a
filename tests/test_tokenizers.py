"""Tokenizers: vdm_jax.text.T5Tokenizer gives the ids of transformers' T5Tokenizer (a sentencepiece unigram model
trained here, T5's special ids), with truncation keeping EOS, padding with 0, unicode, the empty string and
sentinel tokens; the byte tokenizer follows ByT5's ids and needs no file. The comparisons with transformers take
its fixture (skipped without the `reference` extra); the rest runs without it."""
import pickle
import random
import shutil

import numpy as np
import pytest
import sentencepiece as spm

from vdm_jax.text import ByteTokenizer, T5Tokenizer

CORPUS = """a red circle moving left
a blue square moving up and a green triangle moving right
the quick brown fox jumps over the lazy dog, twice!
Über café naïve résumé — “quotes” and ‘single’ ones; 12345 67890
日本語のテキスト。 Ελληνικά κείμενο. Ünïcödé ẞ ß ﬁ ½
a yellow star moving down slowly, then quickly (and back) #42
""".splitlines()

PROMPTS = [
    "a red circle moving left",
    "",
    " ",
    "  leading, inner   and trailing spaces  ",
    "tabs\tand\nnewlines\r\nmixed",
    "Über café naïve — “quotes” 日本語 Ελληνικά",
    "unknown characters: 🎉🎉 ☃ 𝔘𝔫𝔦 and ＦＵＬＬ　ＷＩＤＴＨ",
    "nbsp\u00a0and zero\u200bwidth and ▁ the meta symbol",
    "sentinels <extra_id_0> and<extra_id_99>end <extra_id_100> <extra_id_7",
    "special tokens in text: </s> <pad>x<unk> y</s>",
    "the quick brown fox jumps over the lazy dog " * 40,  # long: truncated to max_length - 1, then EOS
]


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory):
  """A folder with only spiece.model (a sentencepiece unigram model trained on CORPUS)."""
  raw = tmp_path_factory.mktemp("spm")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 30), model_prefix=str(raw / "spiece"),
                                 vocab_size=120, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                 character_coverage=0.98, hard_vocab_limit=False, minloglevel=2)
  return raw


@pytest.fixture(scope="module")
def folders(spm_folder, tmp_path_factory, transformers):
  """spm_folder, and one as transformers saves it (+ tokenizer_config.json, tokenizer.json)."""
  saved = tmp_path_factory.mktemp("hf_saved")
  transformers.T5Tokenizer.from_pretrained(str(spm_folder)).save_pretrained(str(saved))
  shutil.copy(spm_folder / "spiece.model", saved / "spiece.model")
  return spm_folder, saved


@pytest.fixture(scope="module")
def json_folder(spm_folder, tmp_path_factory, transformers):
  """A folder as transformers 5.x's `T5Tokenizer.save_pretrained` writes it: tokenizer.json + tokenizer_config.json
  and no spiece.model (T5TokenizerFast is the same class there)."""
  saved = tmp_path_factory.mktemp("hf_json")
  transformers.T5Tokenizer.from_pretrained(str(spm_folder)).save_pretrained(str(saved))
  files = sorted(p.name for p in saved.iterdir())
  assert "tokenizer.json" in files and "spiece.model" not in files, files
  return saved


def hf_ids(tok, texts, max_length):
  out = tok(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
  return out["input_ids"], out["attention_mask"]


@pytest.mark.parametrize("which", [0, 1])
def test_t5_ids_identical_to_transformers(transformers, folders, which):
  folder = folders[which]
  ours, theirs = T5Tokenizer.from_pretrained(str(folder)), transformers.T5Tokenizer.from_pretrained(str(folder))
  assert ours.vocab_size == len(theirs)
  for max_length in (226, 16):
    want_ids, want_mask = hf_ids(theirs, PROMPTS, max_length)
    ids, mask = ours(PROMPTS, max_length=max_length, return_attention_mask=True)
    assert ids.dtype == np.int32 and ids.shape == (len(PROMPTS), max_length)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)
  long = ours(PROMPTS[-1], max_length=226)[0]
  assert long[-1] == 1 and 0 not in long  # truncated: 225 text ids, then EOS
  np.testing.assert_array_equal(ours("", max_length=8), [[1, 0, 0, 0, 0, 0, 0, 0]])


def test_t5_tokenizer_json_folder_ids_identical_to_transformers(transformers, json_folder, spm_folder):
  """A folder with only tokenizer.json loads (through the `tokenizers` library) and gives transformers' ids for it:
  empty, long (truncated), unicode, special tokens in text, random strings; and the ids of the spiece.model folder
  it was saved from."""
  ours, theirs = T5Tokenizer.from_pretrained(str(json_folder)), transformers.T5Tokenizer.from_pretrained(
      str(json_folder))
  assert ours.vocab_size == len(theirs)
  assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)
  pieces = list("abcdeÜßé日本 \t\n\u00a0\u3000\u200b▁ｆ.,!?0129🎉<>/_") + ["<pad>", "</s>", "<extra_id_0>", "red "]
  rng = random.Random(1)
  texts = PROMPTS + ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(200)]
  for max_length in (226, 16, 1):
    want_ids, want_mask = hf_ids(theirs, texts, max_length)
    ids, mask = ours(texts, max_length=max_length, return_attention_mask=True)
    assert ids.dtype == np.int32 and ids.shape == (len(texts), max_length)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)
  np.testing.assert_array_equal(ours(PROMPTS, max_length=64), T5Tokenizer.from_pretrained(str(spm_folder))(
      PROMPTS, max_length=64))
  long = ours(PROMPTS[-1], max_length=226)[0]
  assert long[-1] == 1 and 0 not in long
  np.testing.assert_array_equal(ours("", max_length=4), [[1, 0, 0, 0]])
  assert ours.encode("<extra_id_3>") == [theirs.convert_tokens_to_ids("<extra_id_3>")]
  ids = ours("a red circle moving left", max_length=64)[0]
  assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == "a red circle moving left"
  clone = pickle.loads(pickle.dumps(ours))  # for grain worker processes
  np.testing.assert_array_equal(clone(PROMPTS, max_length=40), ours(PROMPTS, max_length=40))


def test_t5_random_strings_identical_to_transformers(transformers, spm_folder):
  ours, theirs = T5Tokenizer.from_pretrained(str(spm_folder)), transformers.T5Tokenizer.from_pretrained(
      str(spm_folder))
  pieces = list("abcdeÜßé日本 \t\n\u00a0\u3000\u200b▁ｆ.,!?0129🎉<>/_") + [
      "<pad>", "</s>", "<unk>", "<extra_id_0>", "<extra_id_99>", "<extra_id_100>", "<extra_id_1", "  ", "red "]
  rng = random.Random(0)
  texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(400)]
  np.testing.assert_array_equal(ours(texts, max_length=32), hf_ids(theirs, texts, 32)[0])


def test_t5_extra_ids_as_transformers(transformers, spm_folder):
  ours, theirs = T5Tokenizer.from_pretrained(str(spm_folder)), transformers.T5Tokenizer.from_pretrained(
      str(spm_folder))
  size = ours.spm_size
  # Sentinels extend the vocabulary in reverse: <extra_id_0> is the last id (32099 for T5's 32000 pieces).
  assert ours.vocab_size == size + 100
  for i in (0, 1, 50, 99):
    assert ours.special_tokens[f"<extra_id_{i}>"] == size + 99 - i == theirs.convert_tokens_to_ids(f"<extra_id_{i}>")
  assert ours.encode("<extra_id_3>") == [size + 96]
  assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2)


def test_t5_decode_and_pickle(spm_folder):
  tok = T5Tokenizer.from_pretrained(str(spm_folder))
  ids = tok("a red circle moving left", max_length=64)[0]
  assert tok.decode(ids) == "a red circle moving left"
  clone = pickle.loads(pickle.dumps(tok))  # for grain worker processes
  np.testing.assert_array_equal(clone(PROMPTS, max_length=40), tok(PROMPTS, max_length=40))


def test_t5_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No spiece.model or tokenizer.json"):
    T5Tokenizer.from_pretrained(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text('{"model": 1}')
  with pytest.raises(ValueError, match="tokenizer.json: not a tokenizers file"):
    T5Tokenizer.from_pretrained(str(tmp_path))
  with pytest.raises(TypeError, match="not a str"):
    ByteTokenizer()([b"bytes"])
  with pytest.raises(ValueError, match="max_length=0"):
    ByteTokenizer()("x", max_length=0)


def test_byte_tokenizer_ids_are_byt5s(transformers):
  tok = ByteTokenizer()
  theirs = transformers.ByT5Tokenizer()
  texts = [p for p in PROMPTS if "<" not in p]  # ByT5Tokenizer turns "</s>" etc. into special ids; we keep bytes
  for max_length in (64, 8):
    ids, mask = tok(texts, max_length=max_length, return_attention_mask=True)
    want_ids, want_mask = hf_ids(theirs, texts, max_length)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)


def test_byte_tokenizer_is_utf8_bytes_plus_3():
  """ByT5's ids without its tokenizer: pad 0, EOS 1, byte b -> b + 3 (special-token text stays bytes)."""
  tok = ByteTokenizer()
  assert tok.encode("aé") == [ord("a") + 3, 0xC3 + 3, 0xA9 + 3]
  assert tok.encode("</s>") == [b + 3 for b in b"</s>"]
  assert tok.vocab_size == 259
  np.testing.assert_array_equal(tok(["", "ab"], max_length=4), [[1, 0, 0, 0], [100, 101, 1, 0]])
  assert tok.decode(tok("Über café 🎉", max_length=64)[0]) == "Über café 🎉"
