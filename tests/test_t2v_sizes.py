"""Text-to-video at several sizes ([J]): a bucketed t2v run writes a latent cache per bucket with its one frozen
VAE, compiles its step once per bucket, and its model samples any allowed size; other sizes fail naming the allowed
ones, in the pipeline and on the command line (whose flags reach the same `at_size`). A packed run puts every
bucket's clips in each step, compiled once."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vdm_jax import runs
from vdm_jax.data import cache as cache_lib
from vdm_jax.pipelines.t2v import TextToVideoPipeline
from vdm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import t2v as t2v_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _bucketed(data_dir, vae_dir):
  c = t2v_config.get_config("runlocal")
  c.input.data_dir = data_dir
  c.vae.workdir = vae_dir
  c.input.builder_config = "{height}x{width}x{frames}_tiny"
  c.input.aspect_ratios = ("1:1", "1:2")
  c.input.buckets = {"32": {"9": (1.0, 8)}}  # 32x32x9 and 16x48x9 (more buckets: tests/test_buckets.py)
  c.input.bucket_block = 2
  c.train.update({"steps": 4, "checkpoint_every": 4, "log_every": 4})
  c.eval.probe_prompts = 0  # the probe at the first bucket's size is test_t2v's; this file samples other sizes
  return c


@pytest.fixture(scope="module")
def sized_run(shapes_data_dir, vae_workdir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("t2v_sizes") / "run")
  loop.train(_bucketed(shapes_data_dir, vae_workdir), workdir)
  return workdir


@pytest.mark.slow(85)
def test_one_cache_and_one_compile_per_bucket(sized_run, vae_workdir):
  lines = [json.loads(line) for line in open(os.path.join(sized_run, "metrics.jsonl"))]
  assert [m["compiles"] for m in lines if "loss" in m] == [2]
  assert any("eval/val_loss_t100" in m for m in lines)  # evals read the first bucket
  # runlocal VAE: 2x spatial, 2x temporal, 4 channels -> moments [1 + (T - 1) / 2, H / 2, W / 2, 8]
  for name, shape in (("32x32x9_tiny", [5, 16, 16, 8]), ("16x48x9_tiny", [5, 8, 24, 8])):
    cache = cache_lib.Cache(os.path.join(vae_workdir, "latent_cache", name, "train"))
    assert cache.meta["shape"] == shape, name


def test_sample_any_allowed_size(sized_run, tmp_path):
  pipe = TextToVideoPipeline.from_workdir(sized_run)
  assert pipe.size == (32, 32, 9)  # the first bucket's
  assert pipe.at_size(num_frames=5).size == (32, 32, 5)  # a duration it never trained on
  wide = pipe.at_size(16, 48, 9)
  videos = wide.generate(["a red circle moving left"], [0], num_steps=2)
  assert videos.shape == (1, 9, 16, 48, 3) and videos.dtype == np.uint8
  with pytest.raises(ValueError, match=r"height=18 \(allowed: multiples of 4: 4, 8, 12, \.\.\.\)"):
    pipe.at_size(18, 48, 9)
  with pytest.raises(ValueError, match=r"num_frames=8 \(allowed: 1 \+ 2 k: 1, 3, 5, 7, \.\.\.\)"):
    pipe.at_size(16, 48, 8)

  # the command line takes the same sizes; one it cannot make fails before any sampling, naming the allowed ones
  cmd = [sys.executable, "-m", "experiments.sample", f"--workdir={sized_run}", "--prompt", "a blue square moves up",
         "--height=18", "--width=48", "--num_frames=9", f"--out={tmp_path / 'bad'}", "--num_steps=2"]
  bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "height=18 (allowed: multiples of 4" in bad.stderr
  assert runs.load_params(sized_run)[1] == 4


@pytest.mark.slow(40)
def test_packed_steps_train_every_bucket_with_one_compile(shapes_data_dir, vae_workdir, tmp_path):
  c = _bucketed(shapes_data_dir, vae_workdir)
  # latents 5x16x16 and 5x8x24 in 2x2 patches: 320 + 240 tokens, so 8 clips of each fill 8 rows of 560 exactly
  c.input.pack_length = 560
  c.train.update({"steps": 2, "checkpoint_every": 2, "log_every": 1})
  loop.train(c, str(tmp_path / "packed"))
  lines = [json.loads(line) for line in open(tmp_path / "packed" / "metrics.jsonl")]
  train = [m for m in lines if "loss" in m]
  assert [m["compiles"] for m in train] == [1, 1]
  assert [(m["pack_rows"], m["pack_fill"]) for m in train] == [(8.0, 1.0)] * 2
  assert all(np.isfinite(m["loss"]) for m in train)

  c.model.pos_embed = "learned"
  with pytest.raises(Exception, match="model.pos_embed.*restart per clip"):
    loop.train(c, str(tmp_path / "learned"))
