"""The evaluator registry (vdm_jax.eval.evaluators): config checks, settings, schedule, and a round on a real toy_ae
experiment (float32 on the 8 CPU devices). The trainer's and experiments.evaluate's use of it: test_vae_train.py,
test_t2v.py."""
import os
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from vdm_jax.config import ConfigError
from vdm_jax.eval import evaluators, metrics
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.train import config as config_lib
from vdm_jax.train import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import toy_ae as toy_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from configs import vae as vae_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def test_every_type_is_a_module_with_defaults_needs_and_run():
  assert evaluators.types() == ["fvd", "probe", "psnr_ssim", "temporal", "val_loss_grid"]
  for name in evaluators.types():
    mod = evaluators.module(name)
    assert callable(mod.run) and isinstance(mod.DEFAULTS, dict) and mod.NEEDS
    assert not set(mod.DEFAULTS) & set(evaluators.RESERVED)


@pytest.mark.parametrize("entry, message", [
    ({"type": "psnr"}, "Unknown evaluator type 'psnr'. Did you mean 'psnr_ssim'?"),
    ({"type": "psnr_ssim", "num_exmples": 4}, "'evals.bad.num_exmples' for an evaluator of type 'psnr_ssim'. Did "
                                              "you mean 'num_examples'?"),
    ({"type": "psnr_ssim", "every_steps": -1}, "evals.bad.every_steps is -1; must be an int >= 0"),
    ({"type": "val_loss_grid"}, "evals.bad: an evaluator of type 'val_loss_grid' calls the experiment's ['loss_at'], "
                                "which experiment 'vae' does not have."),
    ({"every_steps": 2}, "evals.bad must be a dict with a 'type'"),
])
def test_config_errors_name_the_entry(entry, message):
  c = vae_config.get_config("runlocal")
  c.evals.bad = entry
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert message in str(e.value)


def test_settings_come_from_the_entry_then_the_eval_section_then_defaults():
  c = vae_config.get_config("runlocal")
  c.evals.probe = {"type": "probe", "probe_prompts": 3}
  s = evaluators.settings(c, "probe")
  assert s["probe_prompts"] == 3  # the entry
  assert (s["num_examples"], s["batch_size"]) == (c.eval.num_examples, c.eval.batch_size)  # the shared section
  assert s["source"] == "auto" and s["probe_seed"] == 1000  # the module's defaults


def test_due_follows_every_steps_the_default_and_the_last_step():
  c = vae_config.get_config("runlocal")
  c.evals = {"_free_form": True, "a": {"type": "psnr_ssim", "every_steps": 2}, "b": {"type": "probe"},
             "c": {"type": "probe", "every_steps": 3}}
  c.train.eval_every = 0
  assert [evaluators.due(c, s, 6) for s in range(1, 7)] == [[], ["a"], ["c"], ["a"], [], ["a", "b", "c"]]
  c.train.eval_every = 5  # the default of entries without every_steps
  assert evaluators.due(c, 5, 6) == ["b"]


def test_a_round_shares_reconstructions_and_prefixes_metrics(shapes_data_dir):
  c = toy_config.get_config("runlocal")
  c.input.data_dir = shapes_data_dir
  c.evals = {"_free_form": True, "a": {"type": "psnr_ssim", "ssim": False},
             "b": {"type": "psnr_ssim", "prefix": "b_"}, "shapes": {"type": "probe"}}
  config_lib.validate(c)
  mesh = mesh_lib.create_mesh(dict(c.mesh))
  experiment = registry.get("toy_ae")(c, mesh)
  params = nn.meta.unbox(experiment.init(jax.random.PRNGKey(0), {"video": np.zeros((1, 9, 32, 32, 3), np.float32)}))
  calls = []
  reconstruct = experiment.reconstruct_videos
  experiment.reconstruct_videos = lambda p, v: calls.append(len(v)) or reconstruct(p, v)
  out = experiment.evaluate(params, step=6)
  assert sum(calls) == c.eval.num_examples  # one pass over the eval batches for the three evaluators
  assert out["psnr"] == out["b_psnr"] and out["num_examples"] == out["b_num_examples"] == 8
  assert "ssim" not in out and -1 <= out["b_ssim"] <= 1  # an untrained model: SSIM may be below 0
  assert all(0 <= out[f"probe_{k}"] <= 1 for k in ("color", "shape", "motion", "all"))
  # the metric is the mean of per-clip PSNRs of these reconstructions
  from vdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = next(pipeline.eval_batches(c.input, split="validation", batch_size=8, num_examples=8))
  np.testing.assert_allclose(out["psnr"], np.mean(metrics.psnr(reconstruct(params, batch["video"]), batch["video"])),
                             rtol=1e-6)

  with pytest.raises(ValueError, match="Evaluators 'a' and 'b' both report 'psnr'"):
    c.evals.b.prefix = ""
    evaluators.run(experiment, params, 6, ["a", "b"])
  with pytest.raises(ValueError, match=r"No evaluator named \['fvd'\] in config.evals; it has \['a', 'b', 'shapes'\]"):
    evaluators.run(experiment, params, 6, ["fvd"])
