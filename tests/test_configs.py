"""Every config file builds and validates with every `:arg` variant the documentation names, and with each recipe.

The variants are read from the repository's text (README.md, docs/, the configs' and experiments' docstrings, the
notebooks), so a command shown to users cannot name an argument, recipe or size that fails. Validation is what
`experiments.train` does before anything runs (`vdm_jax.train.config.validate`), with a placeholder VAE workdir
where a text-to-video config expects one on the command line (`--config.vae.workdir=...`); nothing is read from disk.
"""
import glob
import importlib
import os
import re
import sys

import pytest

from vdm_jax.train import config as config_lib
from vdm_jax.train.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DOCUMENTS = ("README.md", "docs/**/*.md", "configs/*.py", "experiments/*.py", "colab/*.ipynb")
MENTION = re.compile(r"configs/(\w+)\.py(?::([\w=,./-]*\w))?")
# Each recipe and argument value the configs declare, besides what the documents name.
DECLARED = {
    "toy_ae": ["", "runlocal"],
    "vae": ["", "size=tiny", "recipe=diffusion", "recipe=reconstruction", "runlocal", "runlocal,recipe=diffusion",
            "size=cogvideox", "size=cogvideox,runlocal"],
    "t2v": ["", "recipe=flow", "recipe=v_prediction", "dtype=bfloat16", "recipe=v_prediction,dtype=bfloat16",
            "runlocal", "runlocal,recipe=flow", "runlocal,dtype=bfloat16"],
    "cogvideox": ["", "size=2b", "size=5b", "size=2b,abstract", "size=5b,abstract", "size=2b,abstract,encode_text",
                  "size=5b,abstract,encode_text"],
}


def documented_variants() -> set[tuple[str, str]]:
  found = set()
  for pattern in DOCUMENTS:
    for path in glob.glob(os.path.join(REPO, pattern), recursive=True):
      with open(path, encoding="utf-8") as f:
        found.update(MENTION.findall(f.read()))
  return found


def all_variants() -> list[tuple[str, str]]:
  declared = {(name, arg) for name, args in DECLARED.items() for arg in args}
  return sorted(declared | documented_variants())


def build(name: str, arg: str):
  module = importlib.import_module(f"configs.{name}")
  c = module.get_config(arg or None)
  if c.get("experiment") == "t2v" and not (c.vae.workdir or c.vae.path):
    c.vae.workdir = "/placeholder/vae"  # given on the command line: --config.vae.workdir=W
  if c.get("lora") and c.lora.targets and not c.init_from:
    c.init_from = "/placeholder/base"  # a LoRA run's base, given on the command line: --config.init_from=W
  return c


def test_documents_name_variants():
  """The scan finds the commands users are shown (a broken regex would leave only the declared list)."""
  names = {name for name, _ in documented_variants()}
  assert {"vae", "t2v", "toy_ae"} <= names


@pytest.mark.parametrize("name, arg", all_variants())
def test_config_builds_and_validates(name, arg):
  path = os.path.join(REPO, "configs", f"{name}.py")
  assert os.path.exists(path), f"configs/{name}.py is named in the documents but does not exist"
  c = build(name, arg)
  if name == "curate":  # a tool's config, not an experiment's
    from vdm_jax.data.curation import curate  # pylint: disable=g-import-not-at-top
    curate.validate(c)
    return
  config_lib.validate(c)


@pytest.mark.parametrize("name, arg, message", [
    ("t2v", "recipe=epsilon", "recipe='epsilon'"),
    ("t2v", "dtype=float16", "dtype='float16'"),
    ("t2v", "size=2b", "size='2b'"),
    ("vae", "recipe=flow", "recipe='flow'"),
    ("vae", "size=cogvideox,recipe=diffusion", "recipe='diffusion' for size=cogvideox"),
    ("cogvideox", "size=7b", "size='7b'"),
    ("toy_ae", "runlcoal", "Unknown config argument 'runlcoal'"),
])
def test_unknown_argument_values_fail(name, arg, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    build(name, arg)


def test_recipes_differ_where_documented():
  """The defaults are the quickstart's recipes; the named variants are the earlier defaults."""
  flow, vpred = build("t2v", ""), build("t2v", "recipe=v_prediction")
  assert (flow.diffusion.prediction_type, flow.sample.sampler, flow.train.steps) == ("flow", "euler", 4000)
  assert (vpred.diffusion.prediction_type, vpred.sample.sampler, vpred.train.steps) == ("v_prediction", "ddim", 3000)
  bf16 = build("t2v", "dtype=bfloat16")
  assert (bf16.train.compute_dtype, bf16.train.steps) == ("bfloat16", 5500)
  assert build("t2v", "recipe=v_prediction,dtype=bfloat16").train.steps == 3000  # only the flow budget was measured
  diffusion, reconstruction = build("vae", ""), build("vae", "recipe=reconstruction")
  assert (diffusion.model.patch_size, diffusion.loss.decoder_noise, diffusion.train.steps) == (2, 0.5, 1500)
  assert (reconstruction.model.patch_size, reconstruction.loss.decoder_noise) == (1, 0.0)
  # runlocal keeps the earlier recipes' layout unless a recipe is named
  assert build("t2v", "runlocal").diffusion.prediction_type == "v_prediction"
  assert build("t2v", "runlocal,recipe=flow").diffusion.prediction_type == "flow"
  assert build("vae", "runlocal").model.patch_size == 1
