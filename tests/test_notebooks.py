"""The Colab notebooks (colab/*.ipynb) run top to bottom in tiny mode, each in a fresh kernel on this venv's python.

Papermill-style: a cell with the values below is inserted after the notebook's cell tagged `parameters`
(TINY = True: the `runlocal` configs; a tiny CogVideoX folder written here instead of real weights). Any cell error
fails the test (nbclient raises CellExecutionError naming the cell). Each notebook must show a video inline (a
base64 mp4 or gif in an HTML output) and a plot or image (a PNG output). The kernels run on 1 CPU device.
The committed notebooks carry no outputs or execution counts.
"""
import base64
import glob
import json
import os
import re
import sys

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = {name: os.path.join(REPO, "colab", f"{name}.ipynb")
             for name in ("quickstart", "cogvideox_inference", "vae_explorer")}
KERNEL = "vdm_jax_test"
CELL_TIMEOUT_S = 1500  # a cell takes at most ~100 s on a quiet 2-core machine; generous for a loaded one


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, one_device_env):
  """A kernelspec running ipykernel on sys.executable (this venv), found through JUPYTER_PATH, with 1 CPU device
  (the tests' 8 virtual devices would only slow the kernels' compiles) and a private IPython profile."""
  root = tmp_path_factory.mktemp("jupyter")
  spec_dir = root / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "vdm_jax tests", "language": "python",
          "env": {"XLA_FLAGS": one_device_env["XLA_FLAGS"], "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
                  "MPLBACKEND": "module://matplotlib_inline.backend_inline", "IPYTHONDIR": str(root / "ipython")}}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JUPYTER_PATH", str(root))
    yield KERNEL


def inject(nb, parameters):
  """Inserts a cell assigning `parameters` right after the cell tagged `parameters` (as papermill does)."""
  tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
  source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
  cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(tagged[0] + 1, cell)
  return nb


def run(name, parameters, kernel_name, cwd):
  """Executes notebook `name` with `parameters` in a fresh kernel (cwd `cwd`); returns the executed notebook."""
  nb = inject(nbformat.read(NOTEBOOKS[name], as_version=4), parameters)
  client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                   resources={"metadata": {"path": str(cwd)}})
  try:
    client.execute()  # raises nbclient.exceptions.CellExecutionError on the first failing cell
  finally:
    nbformat.write(nb, os.path.join(str(cwd), f"{name}.executed.ipynb"))  # with its outputs, to read on failure
  return nb


def outputs(nb):
  return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def inline_videos(nb):
  """The videos embedded in the notebook's HTML outputs, decoded: uint8 [T, H, W, 3] each."""
  from vdm_jax import io  # pylint: disable=g-import-not-at-top
  found = []
  for out in outputs(nb):
    snippet = out.get("data", {}).get("text/html", "")
    for data in re.findall(r'src="data:(?:video/mp4|image/gif);base64,([A-Za-z0-9+/=]+)"', snippet):
      found.append(io.read_video_bytes(base64.b64decode(data)))
  return found


def images(nb):
  return [out for out in outputs(nb) if "image/png" in out.get("data", {})]


def stream(nb, name="stdout"):
  return "".join(out.get("text", "") for out in outputs(nb) if out.get("name") == name)


def check_shows_video_and_image(nb, min_videos=1, min_images=1):
  videos = inline_videos(nb)
  assert len(videos) >= min_videos and all(v.ndim == 4 and v.shape[-1] == 3 for v in videos)
  assert len(images(nb)) >= min_images


def test_committed_notebooks_are_stripped_and_have_a_parameters_cell():
  for name, path in NOTEBOOKS.items():
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3", name  # what Colab and Jupyter start
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and "REPO_URL" in tagged[0].source, name
    # nothing points at this machine: paths come from the parameters
    text = json.dumps(nb)
    assert "/work/" not in text and "/tmp/" not in text, name


@pytest.mark.slow(215)
def test_quickstart_then_vae_explorer_on_its_vae(kernel, shapes_data_dir, tmp_path):
  """The quickstart trains both runlocal models, samples the typed prompts and scores probe videos; the VAE explorer
  then reconstructs a clip with the VAE workdir it trained."""
  workdir = tmp_path / "quickstart"
  # an "uploaded" image and clip at other sizes than the model's: resized, then animated and extended
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(tmp_path / "upload.png")
  np.save(tmp_path / "upload.npy", rng.integers(0, 256, (12, 64, 64, 3), np.uint8))
  nb = run("quickstart", {"TINY": True, "WORKDIR": str(workdir), "DATA_DIR": shapes_data_dir, "NUM_PROBE": 4,
                          "IMAGE_PATH": str(tmp_path / "upload.png"), "CLIP_PATH": str(tmp_path / "upload.npy")},
           kernel, tmp_path)
  # data, prompts, the image and the clip prompts, probe; two plots
  check_shows_video_and_image(nb, min_videos=6 + 4 + 2 + 4, min_images=2)
  assert "image-to-video: " in json.dumps(nb) and " frames extended to 17" in json.dumps(nb)
  line = next(line for line in stream(nb).splitlines() if line.startswith('{"probe"'))
  scores = json.loads(line)["probe"]
  assert scores["num_videos"] == 4 and all(0.0 <= scores[k] <= 1.0 for k in ("color", "shape", "motion", "all"))
  assert len(glob.glob(str(workdir / "videos" / "*.mp4"))) == 4
  for run_dir in ("vae", "t2v"):
    assert (workdir / run_dir / "metrics.jsonl").exists()
  logs = stream(nb, "stderr")
  assert "[4/4]" in logs and "checkpoint_manager.py" not in logs  # progress lines; orbax's INFO lines filtered

  nb = run("vae_explorer", {"VAE_PATH": str(workdir / "vae"), "TINY": True, "NUM_FRAMES": 9, "HEIGHT": 32,
                            "WIDTH": 32, "SEED": 3}, kernel, tmp_path)
  check_shows_video_and_image(nb, min_images=2)  # frames + PSNR, latent channels
  (side_by_side,) = inline_videos(nb)  # original | reconstruction | error (upscaled for display)
  assert len(side_by_side) == 9 and side_by_side.shape[2] == 3 * side_by_side.shape[1]  # 9 frames round-trip
  assert re.search(r"vae workdir .*2x spatial and 2x temporal compression, 4 latent channels", stream(nb))


def test_cogvideox_inference_then_vae_explorer_on_its_vae(diffusers, transformers, kernel, tmp_path):
  """Text-to-video from a tiny CogVideoX diffusers folder (random weights, written by diffusers and transformers)
  over the runtime's mesh, then the VAE explorer with the folder's VAE (found through the folder's vae/)."""
  from test_cogvideox_pipeline import write_folder  # pylint: disable=g-import-not-at-top
  folder = write_folder(str(tmp_path / "cogvideox_tiny"))
  out_dir = tmp_path / "outputs"
  nb = run("cogvideox_inference", {"COGVIDEOX_PATH": folder, "HUB_ID": "", "PROMPT": "a red circle moving left",
                                   "NUM_FRAMES": 9, "HEIGHT": 16, "WIDTH": 32, "STEPS": 2, "SEED": 1,
                                   "OUT_DIR": str(out_dir)}, kernel, tmp_path)
  check_shows_video_and_image(nb)
  video = np.load(out_dir / "seed1.npy", allow_pickle=False)
  assert video.shape == (9, 16, 32, 3) and video.dtype == np.uint8 and video.std() > 0
  assert os.path.getsize(out_dir / "seed1.mp4") > 0
  assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1, 'context': 1}" in stream(nb)

  nb = run("vae_explorer", {"VAE_PATH": folder, "NUM_FRAMES": 9, "HEIGHT": 32, "WIDTH": 32}, kernel, tmp_path)
  check_shows_video_and_image(nb, min_images=2)
  (side_by_side,) = inline_videos(nb)
  assert len(side_by_side) == 9 and side_by_side.shape[2] == 3 * side_by_side.shape[1]
  assert re.search(r"CogVideoX VAE \(float32\) .*8x spatial and 4x temporal compression", stream(nb))
