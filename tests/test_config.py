"""Config validation: every wrong key or value fails at start-up with a message that names it."""
import os
import subprocess
import sys

import ml_collections
import pytest

from vdm_jax.train import config as config_lib
from vdm_jax.train.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy():
  sys.path.insert(0, REPO)
  from configs import toy_ae  # pylint: disable=g-import-not-at-top
  return toy_ae.get_config("runlocal")


def test_default_and_runlocal_configs_validate():
  config_lib.validate(config_lib.base_config("toy_ae"))
  config_lib.validate(_toy())


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.train.__setattr__("stpes", 3), "Unknown config key 'train.stpes'. Did you mean 'train.steps'?"),
    (lambda c: c.__setattr__("optimiser", 1), "Unknown config key 'optimiser'"),
    (lambda c: c.optimizer.__setattr__("name", "adamx"), "'optimizer.name' is 'adamx'; allowed values"),
    (lambda c: c.schedule.__setattr__("name", "step"), "'schedule.name' is 'step'"),
    (lambda c: c.train.__setattr__("steps", 0), "'train.steps' is 0; must be > 0"),
    (lambda c: c.train.__setattr__("compute_dtype", "fp8"), "'train.compute_dtype' is 'fp8'"),
    (lambda c: c.train.__setattr__("ema_decay", 1.0), "'train.ema_decay' is 1.0"),
    (lambda c: c.mesh.update({"data": -1, "fsdp": -1}), "at most one may fill"),
    (lambda c: c.mesh.__setattr__("pipeline", 2), "Unknown config key 'mesh.pipeline'"),
    (lambda c: c.__setattr__("sharding_rules", (("embed", "model"),)), "maps to 'model'"),
    (lambda c: c.input.__setattr__("pp", "value_range(-1, 1"), "'input.pp' is not a valid preprocessing spec"),
    (lambda c: c.input.__setattr__("pp", "no_such_op(3)"), "'input.pp' is not a valid preprocessing spec"),
    (lambda c: c.model.__setattr__("noise_std", -1.0), "'model.noise_std' must be >= 0"),
    (lambda c: c.__setattr__("experiment", "nope"), "'experiment' is 'nope'; allowed values: ["),
    (lambda c: c.update({"init_from": "/base", "lora": {"targets": (("enc", 2, 2.0),), "mode": "fused"}}),
     "'lora.mode' is 'fused'; allowed: 'inline', 'merge'"),
    (lambda c: c.update({"init_from": "/base", "lora": {"targets": (("enc", 2, 2.0),), "dropout": 1.5}}),
     "'lora.dropout' is 1.5; must be a number in [0, 1)"),
    (lambda c: c.update({"init_from": "/base", "lora": {"targets": (("enc", 2, 2.0),), "dropout": 0.1,
                                                        "mode": "merge"}}),
     "'lora.dropout' is 0.1, which needs lora.mode 'inline'"),
])
def test_bad_key_or_value_names_it(mutate, message):
  c = _toy()
  mutate(c)
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert message in str(e.value)


def test_unknown_experiment_lists_registered_ones():
  c = _toy()
  c.experiment = "nope"
  with pytest.raises(ConfigError, match=r"allowed values: \[.*'toy_ae'.*\]"):
    config_lib.validate(c)


def test_wrong_type_names_key():
  # ConfigDict refuses int -> str on assignment; a config built from a dict (e.g. JSON) is checked here.
  d = _toy().to_dict()
  d["train"]["log_every"] = "often"
  c = ml_collections.ConfigDict(d)
  with pytest.raises(ConfigError, match="'train.log_every' has type str"):
    config_lib.validate(c)


def test_parse_arg():
  assert config_lib.parse_arg("runlocal,size=tiny", runlocal=False, size="base") == {"runlocal": True, "size": "tiny"}
  with pytest.raises(ConfigError, match="Unknown config argument 'runlcoal'"):
    config_lib.parse_arg("runlcoal", runlocal=False)


def test_command_line_typo_fails_at_start(tmp_path):
  cmd = [sys.executable, "-m", "experiments.train", "--config", "configs/toy_ae.py:runlocal",
         "--config.train.stpes=3", f"--workdir={tmp_path}"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "stpes" in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_batch_size_splits_over_data_and_fsdp_only():
  mesh = {"data": 1, "fsdp": 2, "tensor": 1, "context": 4}
  config_lib.check_batch_size(2, mesh)  # 0.25 per device: the other devices split the sequence
  config_lib.check_batch_size(6, {"data": 2, "fsdp": 1, "tensor": 2, "context": 2}, process_count=2)
  with pytest.raises(ConfigError, match=r"'input.batch_size' is 3, which does not split over the batch axes data x "
                                        r"fsdp = 1 x 2 = 2 .*allowed: multiples of 2"):
    config_lib.check_batch_size(3, mesh)
  # the default mesh (data=-1) puts every device on the batch: the message says how to go below 1 per device
  with pytest.raises(ConfigError, match=r"2 on 8 = 0.25 per device.*--config.mesh.data=1 --config.mesh.fsdp=2 "
                                        r"--config.mesh.context=4"):
    config_lib.check_batch_size(2, {"data": 8, "fsdp": 1, "tensor": 1, "context": 1})
  with pytest.raises(ConfigError, match=r"does not split over the 2 processes.*multiples of 2"):
    config_lib.check_batch_size(3, {"data": 1, "fsdp": 1, "tensor": 1, "context": 8}, process_count=2)


def test_a_run_written_before_a_key_existed_loads_with_its_default(tmp_path):
  """Workdirs outlive code: config.json of an older run lacks keys added since; they read as their defaults."""
  import json  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  written = config_lib.base_config("vae").to_dict()
  del written["model"]["patch_size"]
  written["model"]["latent_channels"] = 8
  (tmp_path / "config.json").write_text(json.dumps(written))
  loaded = loop.load_config_json(str(tmp_path))
  assert loaded.model.patch_size == 1 and loaded.model.latent_channels == 8
  (tmp_path / "config.json").write_text(json.dumps({"experiment": "nonesuch", "x": 1}))
  assert loop.load_config_json(str(tmp_path)).to_dict() == {"experiment": "nonesuch", "x": 1}
