"""Trains the experiment a config names, in --workdir, resuming from its latest checkpoint.

    python -m experiments.train --config configs/toy_ae.py --workdir /tmp/toy_ae
    python -m experiments.train --config configs/toy_ae.py:runlocal --config.train.steps=20 --workdir /tmp/t
"""
from absl import app, flags, logging
from ml_collections import config_flags

from vdm_jax.train import loop, metrics

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy_ae.py[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, samples and the config go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  metrics.quiet_library_logs()
  loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
