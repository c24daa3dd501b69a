"""Test setup: 8 virtual CPU devices and unoptimised CPU code, set before jax is imported anywhere."""
import collections
import os
import re

# The tests' programs are tiny and most of their time is XLA:CPU compiling them. LLVM's optimisation passes are
# most of a compile and buy little at these sizes: without them (level 0) tests/test_vae.py and
# tests/test_cogvideox_vae.py take 153 s instead of 245 s, and a one-step VAE training 72 s instead of 99 s.
# Level 1 runs the VAE's own emitted convolutions 4x faster but compiles the DiT's programs slower; on one afternoon
# the whole suite took 35.0 min at level 1 and 36.6 at level 0, within the machine's drift (docs/test_suite.md).
# Results are the same math (no fast-math either way); benchmarks under experiments/ run fully optimised.
# Set XLA_FLAGS=--xla_backend_optimization_level=3 to run the tests optimised.
_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _XLA_FLAGS:
  _XLA_FLAGS += " --xla_backend_optimization_level=0"
ONE_DEVICE_XLA_FLAGS = re.sub(r"--xla_force_host_platform_device_count=\d+", "", _XLA_FLAGS).strip()
os.environ["XLA_FLAGS"] = f"{ONE_DEVICE_XLA_FLAGS} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


try:
  import filelock  # pylint: disable=g-import-not-at-top
except ImportError:
  filelock = None


def _share_compilations():
  """JAX's persistent compilation cache in one directory for this pytest run, its workers and the subprocesses they
  start: the suite compiles the same tiny programs many times over (each `loop.train` of a resume test, the
  quickstart's second run, a notebook that runs the quickstart again), and on a 2-core CPU the compiles are most of
  its time. Entries are keyed by the program, so a hit is the same executable. With a size
  limit set, JAX guards reads and writes with a file lock (needs `filelock`; without it the cache stays off), so
  workers writing the same entry at once are safe. Set JAX_COMPILATION_CACHE_DIR to choose the directory."""
  if filelock is None:
    return None
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return None
  import tempfile  # pylint: disable=g-import-not-at-top
  path = tempfile.mkdtemp(prefix="vdm_jax_test_compilations_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
  # Not 0: with a size limit every write scans the whole directory under the lock, and caching the thousands of
  # sub-second compiles too made the suite slower (measured: 34.7 min at 0.5 s; over 36 min at 0, 3400 files).
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  return path


_CREATED_CACHE_DIR = _share_compilations()  # in the controller; xdist workers inherit the environment

import pytest  # noqa: E402

from reference_extra import need  # noqa: E402  (tests/ is on sys.path: pytest puts a conftest's folder there)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow(seconds): the test takes about this long on a 2-core CPU (its call and the fixtures it "
      "builds, by --durations); files with slow tests run first, heaviest first, and `-m 'not slow'` skips them")


def _seconds(item):
  marker = item.get_closest_marker("slow")
  return marker.args[0] if marker else 0


def pytest_collection_modifyitems(config, items):
  """Test files in the order of their slow tests' total seconds, heaviest first (the rest keep their alphabetical
  order after them); tests keep their order within a file. With the file-by-file scheduling below this is
  longest-job-first, and the two workers finish together; the suite's time stayed the same (docs/test_suite.md:
  both cores were already busy), so what it buys is each module fixture built once."""
  del config
  weight, first = collections.Counter(), {}
  for index, item in enumerate(items):
    weight[item.path] += _seconds(item)
    first.setdefault(item.path, index)
  items.sort(key=lambda item: (-weight[item.path], first[item.path]))  # stable: a file's tests keep their order


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: the hook exists only with pytest-xdist
def pytest_xdist_make_scheduler(config, log):
  """pytest-xdist's workers get whole test files (`--dist loadfile`), in the order above, unless --dist names
  another mode: a file's module fixtures (a trained run each, a minute or more) are then built once, not once per
  worker, and test_quickstart.py's tests share one quickstart run."""
  if config.getvalue("dist") != "load":
    return None
  from xdist import scheduler  # pylint: disable=g-import-not-at-top
  config.option.loadscopereorder = False  # its default orders files by their number of tests; keep ours
  return scheduler.LoadFileScheduling(config, log)


def pytest_unconfigure(config):
  """The process that made the compilation cache removes it at the end (xdist workers see it already set)."""
  if _CREATED_CACHE_DIR and not hasattr(config, "workerinput"):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(_CREATED_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def torch():
  """torch for a parity test, or the test skipped: see tests/reference_extra.py."""
  return need("torch")


@pytest.fixture(scope="session")
def diffusers():
  """diffusers for a parity test (its models and schedulers need torch), or the test skipped."""
  need("torch")
  return need("diffusers")


@pytest.fixture(scope="session")
def transformers():
  """transformers for a parity test (its tokenizers need no torch), or the test skipped."""
  return need("transformers")


@pytest.fixture(scope="session")
def one_device_env():
  """os.environ for a subprocess or kernel on one CPU device (as on a user's machine), with the tests' other XLA
  flags: processes with the same flags and programs share compiles through the run's cache."""
  return dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS)


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A tfds data_dir with Captioned Shapes `32x32x9_tiny` built into it (once per test process)."""
  from vdm_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  captioned_shapes.load_data_source("32x32x9_tiny", "train", data_dir=data_dir)
  return data_dir


def _run_once(tmp_path_factory, name: str, make) -> str:
  """`make(path)` run once per pytest run, shared by the xdist workers: the first worker to get here builds
  `<run's temp dir>/<name>` under a file lock, the others wait for it and reuse it (without xdist: built here)."""
  if filelock is None or "PYTEST_XDIST_WORKER" not in os.environ:
    path = str(tmp_path_factory.mktemp(name))
    make(path)
    return path
  root = tmp_path_factory.getbasetemp().parent  # the run's directory, above each worker's own (popen-gwN)
  path, done = root / name, root / f"{name}.done"
  with filelock.FileLock(str(root / f"{name}.lock")):
    if not done.exists():
      path.mkdir(exist_ok=True)
      make(str(path))
      done.touch()
  return str(path)


@pytest.fixture(scope="session")
def _trained_vae(shapes_data_dir, tmp_path_factory):
  """A one-step `vae` run of configs/vae.py:runlocal, trained once per pytest run (a cold compile of its step is
  most of a minute and more on a 2-core CPU)."""
  def make(workdir):
    import sys  # pylint: disable=g-import-not-at-top
    from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from configs import vae  # pylint: disable=g-import-not-at-top
    c = vae.get_config("runlocal")
    c.input.data_dir = shapes_data_dir
    c.train.steps = 1
    c.train.eval_every = 0
    c.loss.image_fraction = 0.0  # video batches only: one encoder/decoder graph to compile, not two
    loop.train(c, workdir)
  return _run_once(tmp_path_factory, "vae_one_step", make)


@pytest.fixture(scope="module")
def vae_workdir(_trained_vae, tmp_path_factory):
  """The frozen VAE that t2v runs read and write their latent caches next to (its quality does not matter in
  tests): a fresh copy of the run's one-step VAE workdir for each test module, with no latent cache in it yet."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("vae"))
  shutil.copytree(_trained_vae, workdir, dirs_exist_ok=True)
  return workdir
