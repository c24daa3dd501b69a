"""Captioning in the curation ([K]) with a local transformers image-to-text model: a tiny random BLIP saved to disk
(nothing is downloaded). Its captions equal transformers' own generate + decode on the same frames, land in
clips.jsonl for the clips without a sidecar, and a bad model folder is refused naming it."""
import json
import os

import numpy as np
import pytest

from reference_extra import need

torch = need("torch")
transformers = need("transformers")
pytest.importorskip("cv2")
pytest.importorskip("skvideo")

from configs import curate as curate_configs  # noqa: E402
from test_curate import make_folder  # noqa: E402  (tests/ is on sys.path)
from vdm_jax.config import ConfigError  # noqa: E402
from vdm_jax.data.curation import captioner, curate  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "man", "on", "the", "phone", "bike", "race",
         "road", "red", "car", "of", "with", "people"]


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
  """A BLIP captioning model (2 layers, width 32, random weights, seed 0) and its processor, saved as a user's
  model folder is: safetensors, tokenizer and processor configs."""
  root = tmp_path_factory.mktemp("blip")
  vocab = root / "vocab.txt"
  vocab.write_text("\n".join(WORDS) + "\n")
  tokenizer = transformers.BertTokenizer(str(vocab), bos_token="[DEC]")
  processor = transformers.BlipProcessor(
      image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
  config = transformers.BlipConfig(
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         image_size=32, patch_size=8),
      text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, encoder_hidden_size=32, bos_token_id=5, pad_token_id=0,
                       sep_token_id=3, max_position_embeddings=64))
  torch.manual_seed(0)
  model = transformers.BlipForConditionalGeneration(config).eval()
  folder = str(root / "model")
  model.save_pretrained(folder)
  processor.save_pretrained(folder)
  return folder, model, processor


def test_captions_equal_transformers_generate(blip_folder):
  folder, model, processor = blip_folder
  frames = (np.random.default_rng(0).random((9, 40, 56, 3)) * 255).astype(np.uint8)
  captions = captioner.ModelCaptioner(folder, num_captions=3, max_new_tokens=8)(frames)
  with torch.no_grad():
    ids = model.generate(**processor(images=[frames[0], frames[4], frames[8]], return_tensors="pt"),
                         max_new_tokens=8, do_sample=False)
  expected = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
  assert captions == expected and len(captions) == 3 and all(captions)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    captioner.ModelCaptioner(os.path.dirname(folder))
  with pytest.raises(ValueError, match="T >= 1"):
    captioner.ModelCaptioner(folder)(frames[:0])


def test_curation_captions_the_clips_without_a_sidecar(blip_folder, tmp_path):
  folder, _, _ = blip_folder
  videos = make_folder(tmp_path / "in")  # bikes.mp4 has a sidecar caption, sub/carphone.mp4 none
  config = curate_configs.get_config()
  config.captioner.model = folder
  config.captioner.max_new_tokens = 6
  curate.curate_folder(videos, str(tmp_path / "out"), config)
  lines = [json.loads(line) for line in open(tmp_path / "out" / "clips.jsonl")]
  car = [line for line in lines if line["source"].endswith("carphone.mp4")]
  assert len(car) == 1 and car[0]["kept"]
  assert len(car[0]["captions"]) == 3 and car[0]["caption"] == car[0]["captions"][1]
  bikes = [line for line in lines if line["source"] == "bikes.mp4"]
  assert all(b["caption"] == "cyclists racing on a track" and "captions" not in b for b in bikes)
  config.captioner.model = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match="captioner.model=.*nowhere"):
    curate.validate(config)
