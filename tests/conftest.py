"""Test setup: 8 virtual CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A tfds data_dir with Captioned Shapes `32x32x9_tiny` built into it (once per test process)."""
  from vdm_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  captioned_shapes.load_data_source("32x32x9_tiny", "train", data_dir=data_dir)
  return data_dir


@pytest.fixture(scope="module")
def vae_workdir(shapes_data_dir, tmp_path_factory):
  """A one-step `vae` run of configs/vae.py:runlocal (once per test module): the frozen VAE that t2v runs read and
  write their latent caches next to (its quality does not matter in tests)."""
  import sys  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import vae  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("vae"))
  c = vae.get_config("runlocal")
  c.input.data_dir = shapes_data_dir
  c.train.steps = 1
  c.train.eval_every = 0
  loop.train(c, workdir)
  return workdir
