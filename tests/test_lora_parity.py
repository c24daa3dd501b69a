"""diffusers-format LoRA files (vdm_jax.convert.cogvideox_lora) against diffusers + PEFT on a tiny CogVideoX
transformer (RoPE, 2 layers; float32; max relative error max|a - b| / max|b| <= 1e-4), both ways: a PEFT adapter
(rank 4, alpha 8, non-zero B) saved by diffusers and merged here at scales 1 and 0.5, and an adapter made here,
saved with save_lora and loaded by diffusers; and the errors that name a bad key."""
import json

import jax
import numpy as np
import pytest
from reference_extra import need

from vdm_jax.convert import safetensors_io as st
from vdm_jax.convert.cogvideox import load_lora, load_transformer, save_lora
from vdm_jax.models import lora

ATTENTION = "attn/to_(q|k|v|out)$"

torch = need("torch")
need("diffusers")
peft = need("peft")
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel  # noqa: E402  pylint: disable=g-import-not-at-top
from test_cogvideox_transformer import MODES, SIZES, make_model, relative_error  # noqa: E402  pylint: disable=g-import-not-at-top

MODE = "rope_5b"
CONFIG = MODES[MODE]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _inputs(seed=0):
  t, h, w = SIZES[MODE]
  rng = np.random.default_rng(seed)
  latents = rng.normal(size=(2, t, h, w, CONFIG["in_channels"])).astype(np.float32)
  text = rng.normal(size=(2, CONFIG["max_text_seq_length"], CONFIG["text_embed_dim"])).astype(np.float32)
  return latents, np.array([3.0, 721.0], np.float32), text


def _diffusers_out(model):
  from test_cogvideox_transformer import pipeline_rope  # pylint: disable=g-import-not-at-top
  latents, timesteps, text = _inputs()
  with torch.no_grad():
    out = model(torch.from_numpy(latents.transpose(0, 1, 4, 2, 3).copy()), torch.from_numpy(text),
                torch.from_numpy(timesteps), image_rotary_emb=pipeline_rope(CONFIG, *SIZES[MODE]), return_dict=False)[0]
  return out.numpy().transpose(0, 1, 3, 4, 2)


def _ours(module, params):
  return np.asarray(jax.jit(lambda p, *a: module.apply({"params": p}, *a))(params, *_inputs()))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("transformer"))
  make_model(CONFIG).save_pretrained(folder)
  return folder


@pytest.fixture(scope="module")
def peft_adapter(base, tmp_path_factory):
  """A rank-4 PEFT adapter (alpha 8) on the attention projections with random A and B, saved by diffusers."""
  model = CogVideoXTransformer3DModel.from_pretrained(base).eval()
  config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=True, target_modules=TARGETS)
  model.add_adapter(config)
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_" in name:
        p.copy_(0.2 * torch.randn_like(p))
  layers = peft.utils.get_peft_model_state_dict(model)
  folder = str(tmp_path_factory.mktemp("adapter"))
  CogVideoXPipeline.save_lora_weights(folder, transformer_lora_layers=layers,
                                      transformer_lora_adapter_metadata=config.to_dict())
  return folder


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_diffusers_adapter_merges_to_diffusers_output(base, peft_adapter, scale):
  model = CogVideoXTransformer3DModel.from_pretrained(base).eval()
  model.load_lora_adapter(peft_adapter, weight_name="pytorch_lora_weights.safetensors", prefix="transformer",
                           adapter_name="style")
  model.set_adapters(["style"], weights=[scale])
  ref = _diffusers_out(model)
  module, params = load_transformer(base)
  base_out = _ours(module, params)
  out = _ours(module, load_lora(params, peft_adapter, scale=scale))
  assert relative_error(out, ref) <= 1e-4
  assert relative_error(base_out, ref) > 1e-2  # the adapter matters at this size

  meta = json.loads(st.read_metadata(f"{peft_adapter}/pytorch_lora_weights.safetensors")["lora_adapter_metadata"])
  assert meta["transformer.lora_alpha"] == 8 and meta["transformer.r"] == 4  # the scaling 2 came from the file


def test_an_adapter_made_here_loads_in_diffusers(base, tmp_path):
  module, params = load_transformer(base)
  spec = lora.Spec.of([(ATTENTION, 4, 16.0)])  # scaling 4, folded into B on saving
  adapters = lora.init(jax.random.PRNGKey(3), params, spec)
  adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(4), x.shape), adapters)
  out = _ours(module, lora.merge(params, adapters, spec))
  file = save_lora(adapters, str(tmp_path / "mine"), spec)
  model = CogVideoXTransformer3DModel.from_pretrained(base).eval()
  model.load_lora_adapter(file, prefix="transformer", adapter_name="mine")
  assert relative_error(out, _diffusers_out(model)) <= 1e-4
  # and this file merges back here to the same params
  reloaded = load_lora(params, file)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), reloaded,
               lora.merge(params, adapters, spec))


def test_bad_adapter_files_name_the_key(base, peft_adapter, tmp_path):
  _, params = load_transformer(base)
  tensors = dict(st.read_safetensors(f"{peft_adapter}/pytorch_lora_weights.safetensors"))
  a = "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"

  def write(edit):
    t = dict(tensors)
    edit(t)
    path = str(tmp_path / f"bad{len(list(tmp_path.iterdir()))}.safetensors")
    st.write_safetensors(path, t)
    return path

  cases = [
      (lambda t: t.update({"transformer.transformer_blocks.0.attn1.to_q.lora_C.weight": t[a]}),
       "key 'transformer.transformer_blocks.0.attn1.to_q.lora_C.weight' is not a transformer LoRA tensor"),
      (lambda t: t.pop(a), "transformer.transformer_blocks.0.attn1.to_q has no lora_A.weight"),
      (lambda t: t.update({"transformer.transformer_blocks.7.attn1.to_q.lora_A.weight": t[a],
                           "transformer.transformer_blocks.7.attn1.to_q.lora_B.weight": t[a.replace("_A", "_B")]}),
       "the adapter names layer 7 ('transformer_blocks.7.attn1.to_q') but the model has 2 layers"),
      (lambda t: t.update({"transformer.transformer_blocks.0.attn2.to_q.lora_A.weight": t[a],
                           "transformer.transformer_blocks.0.attn2.to_q.lora_B.weight": t[a.replace("_A", "_B")]}),
       "the adapter names module 'transformer_blocks.0.attn2.to_q'"),
      (lambda t: t.update({a: np.zeros((4, 5), np.float32)}),
       "the adapter for layer 0 of layers/attn/to_q is [r, in] = (4, 5)"),
  ]
  for edit, message in cases:
    with pytest.raises(st.WeightsMismatchError) as e:
      load_lora(params, write(edit))
    assert message in str(e.value)
