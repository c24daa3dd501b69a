"""Stages that cannot mix (issue [P] case 1): a latent cache carries the identity of the VAE that wrote it, is
rebuilt when that VAE trains on, and a DiT that learned one VAE's latents refuses to resume on another's."""
import json
import logging
import os
import sys

import numpy as np
import pytest

from vdm_jax import runs
from vdm_jax.data import cache as cache_lib
from vdm_jax.pipelines import latents
from vdm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import t2v as t2v_configs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from configs import vae as vae_configs  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _vae(data_dir, steps):
  c = vae_configs.get_config("runlocal")
  c.input.data_dir = data_dir
  c.train.update(steps=steps, checkpoint_every=2, eval_every=0, sample_every=0)
  c.loss.image_fraction = 0.0  # video batches only: one graph to compile (as conftest's VAE)
  del c.evals["probe"]  # PSNR is enough of a final eval here; the probe's decode and scoring took ~9 s a run
  return c


def _t2v(data_dir, vae_dir, steps):
  c = t2v_configs.get_config("runlocal")
  c.input.data_dir = data_dir
  c.vae.workdir = vae_dir
  c.train.update(steps=steps, checkpoint_every=2, eval_every=0, sample_every=0)
  del c.evals["probe"]  # the validation loss's final eval writes the validation cache; sampling adds nothing here
  return c


@pytest.mark.slow(380)
def test_latent_cache_follows_the_vae_that_wrote_it(shapes_data_dir, tmp_path, caplog):
  """VAE 2 steps -> t2v (cache written) -> the VAE resumes to 4 steps -> t2v again: the cache is rebuilt from the
  final VAE (its recorded step and params hash are the VAE's), with one warning naming both VAEs; the DiT trained on
  the step-2 latents refuses to go on with the step-4 ones."""
  data, vae_dir = shapes_data_dir, str(tmp_path / "vae")
  cache_dir = os.path.join(vae_dir, "latent_cache", "32x32x9_tiny", "train")
  loop.train(_vae(data, 2), vae_dir)
  first = str(tmp_path / "t2v_first")
  loop.train(_t2v(data, vae_dir, 2), first)
  written = cache_lib.Cache(cache_dir)
  old_moments, old_vae = written[0]["latent_moments"], written.meta["vae"]

  loop.train(_vae(data, 4), vae_dir)  # the VAE resumes and trains on
  params, step = runs.load_params(vae_dir)
  assert step == 4
  second = str(tmp_path / "t2v_second")
  with caplog.at_level(logging.WARNING):
    loop.train(_t2v(data, vae_dir, 2), second)
  rebuilt = cache_lib.Cache(cache_dir)
  assert not np.array_equal(rebuilt[0]["latent_moments"], old_moments)  # not the half-trained VAE's latents
  assert old_vae["step"] == 2 and rebuilt.meta["vae"]["step"] == 4
  assert rebuilt.meta["vae"]["weights_sha256"] == latents.params_sha256(params["vae"])
  # One line per stale cache (the training split's, and the validation split's the final eval wrote).
  warnings = [r.getMessage() for r in caplog.records if "rebuilding it" in r.getMessage()]
  assert [w.split()[3].split("/")[-1] for w in warnings] == ["train", "validation"], warnings
  assert all(" step 2 " in w and " step 4 " in w for w in warnings), warnings
  with open(os.path.join(second, latents.INPUTS_FILE)) as f:
    assert json.load(f)["vae"] == rebuilt.meta["vae"]  # the DiT's run names the VAE it learned from

  with pytest.raises(cache_lib.CacheMismatchError, match=r"trained on latents of workdir .* step 2 .* now .* step 4"):
    loop.train(_t2v(data, vae_dir, 4), first)


def test_cogvideox_vae_identity_follows_its_files(tmp_path):
  """A CogVideoX VAE folder's identity (read from its files, nothing loaded) changes when its weights are replaced or
  its config edited, and not when nothing changed."""
  folder = tmp_path / "vae"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCogVideoX", "latent_channels": 16}))
  weights = folder / "diffusion_pytorch_model.safetensors"
  weights.write_bytes(b"0" * 64)
  (folder / "README.md").write_text("not part of the weights")
  before = latents.cogvideox_identity(str(folder))
  assert before.source == "cogvideox" and before.step is None
  (folder / "README.md").write_text("edited")
  assert latents.cogvideox_identity(str(folder)) == before
  weights.write_bytes(b"1" * 80)  # fine-tuned weights saved over the old ones
  replaced = latents.cogvideox_identity(str(folder))
  assert replaced.weights_sha256 != before.weights_sha256 and replaced.config_sha256 == before.config_sha256
  (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCogVideoX", "latent_channels": 32}))
  assert latents.cogvideox_identity(str(folder)).config_sha256 != before.config_sha256
