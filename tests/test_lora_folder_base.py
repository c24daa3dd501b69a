"""[M]: a LoRA run (and a full fine-tune) whose `init_from` is a diffusers CogVideoX folder. The tiny t2v run's DiT
takes the architecture of a CogVideoXTransformer3DModel that diffusers saved with random weights; the run's frozen
base is that folder's transformer exactly (float32, bit-identical through merge at scale 0), its checkpoint holds
only adapters, and a config whose model differs from the folder in a field that changes no shape (RoPE) fails
naming it."""
import os
import sys

import jax
import numpy as np
import pytest
from reference_extra import need

from vdm_jax import runs
from vdm_jax.convert import cogvideox_transformer
from vdm_jax.train import loop
from vdm_jax.train import setup as setup_lib
from vdm_jax.train import warm_start

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import t2v as t2v_configs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

torch = need("torch")
need("diffusers")
from diffusers import CogVideoXTransformer3DModel  # noqa: E402  pylint: disable=g-import-not-at-top


def _config(shapes_data_dir, vae_workdir):
  c = t2v_configs.get_config("runlocal")
  c.input.data_dir, c.vae.workdir = shapes_data_dir, vae_workdir
  c.train.update(steps=2, checkpoint_every=2, eval_every=0, sample_every=0)
  c.text.trainable = False  # a diffusers folder gives the DiT only (CogVideoX's T5 is frozen too)
  return c


def _folder_for(c, folder):
  """A diffusers pipeline folder (transformer/ only) whose transformer fits the run's latents and text, and `c`
  with the matching model.* keys."""
  experiment = setup_lib.setup(c).experiment
  t, h, w, channels = experiment.space.latent_shape()
  dit = experiment.dit()
  diffusers_config = dict(num_attention_heads=2, attention_head_dim=16, in_channels=dit.in_channels,
                          out_channels=channels, time_embed_dim=16, text_embed_dim=dit.text_dim, num_layers=2,
                          sample_width=w, sample_height=h, sample_frames=(t - 1) * 4 + 1, patch_size=2,
                          max_text_seq_length=dit.max_text_length, use_rotary_positional_embeddings=False)
  torch.manual_seed(0)
  model = CogVideoXTransformer3DModel(**diffusers_config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(os.path.join(folder, "transformer"))
  reference = cogvideox_transformer.module_from_config(dict(model.config))  # every field, as diffusers saved it
  skip = set(cogvideox_transformer.NOT_ARCHITECTURE) | {"in_channels", "out_channels", "text_dim", "max_text_length",
                                                       "sample_frames", "sample_height", "sample_width"}
  # the t2v config names the DiT fields a recipe varies; the others are CogVideoX's by default (checked next)
  c.model.update({f: getattr(reference, f) for f in c.model if f not in skip})
  assert not cogvideox_transformer.mismatches(setup_lib.setup(c).experiment.dit(), os.path.join(folder, "transformer"))
  return c


@pytest.mark.slow(60)
def test_lora_and_fine_tuning_start_from_a_diffusers_folder(shapes_data_dir, vae_workdir, tmp_path):
  folder = str(tmp_path / "CogVideoX-tiny")
  c = _folder_for(_config(shapes_data_dir, vae_workdir), folder)
  _, expected = cogvideox_transformer.load_transformer(os.path.join(folder, "transformer"))

  # the pipeline folder and its transformer/ both name the base; a vdm_jax workdir is not a folder
  assert cogvideox_transformer.transformer_folder(folder) == os.path.join(folder, "transformer")
  assert cogvideox_transformer.transformer_folder(os.path.join(folder, "transformer")) == os.path.join(folder,
                                                                                                      "transformer")
  assert cogvideox_transformer.transformer_folder(vae_workdir) is None

  c.init_from = folder
  c.lora.targets = (("dit/layers/attn/to_(q|k|v|out)$", 4, 4.0),)
  c.lora.mode, c.lora.dropout = "inline", 0.1
  workdir = str(tmp_path / "lora")
  loop.train(c, workdir)
  adapters, step = runs.load_params(workdir, "params")
  assert step == 2 and len(jax.tree.leaves(adapters)) == 8
  base, _ = runs.load_model_params(workdir, lora_scale=0.0)
  jax.tree.map(np.testing.assert_array_equal, base["dit"], jax.tree.map(np.asarray, expected))
  merged, _ = runs.load_model_params(workdir)
  changed = [jax.tree_util.keystr(p) for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(merged["dit"]),
                                                          jax.tree.leaves(base["dit"])) if not np.array_equal(a, b)]
  assert sorted(changed) == [f"['layers']['attn']['{k}']['kernel']" for k in ("to_k", "to_out", "to_q", "to_v")]

  # a full fine-tune reads the same parameters (warm_start.load_into's reader), checked against the model
  dit = setup_lib.setup(c).experiment.dit()
  loaded, step = warm_start.read_params(folder, dit=dit)
  assert step == 0
  jax.tree.map(np.testing.assert_array_equal, loaded["dit"], jax.tree.map(np.asarray, expected))

  # what the trainer does first (LoraExperiment.base, before any compile) refuses a base that does not fit
  c.text.trainable = True
  with pytest.raises(ValueError, match=r"\['text'\]\['block_0'\].*: missing.*A diffusers folder gives the DiT \('dit'\) "
                                       r"only: .*text.trainable=False"):
    setup_lib.setup(c).experiment.base()
  c.text.trainable = False
  c.model.use_rope, c.model.pos_embed = True, "none"  # no weight changes shape: only the fields say it
  with pytest.raises(ValueError, match=r"its transformer \(.*transformer\) is not this config's model: "
                                       r"pos_embed='sincos' there, 'none' here; use_rope=False there, True here"):
    setup_lib.setup(c).experiment.base()
