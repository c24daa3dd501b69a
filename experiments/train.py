"""Trains the experiment a config names, in --workdir, resuming from its latest checkpoint.

    python -m experiments.train --config configs/toy_ae.py --workdir /tmp/toy_ae
    python -m experiments.train --config configs/toy_ae.py:runlocal --config.train.steps=20 --workdir /tmp/t

Exit status: 0 when the run reached train.steps; 75 (EX_TEMPFAIL) when SIGTERM or SIGINT (Ctrl-C) stopped it
early, after saving a checkpoint: the run is not finished, and the same command resumes it (a second Ctrl-C
aborts at once, without saving); 1 on an error.
"""
import sys

from absl import app, flags, logging

from vdm_jax.train import config as config_lib
from vdm_jax.train import loop, metrics

_CONFIG = config_lib.define_config_flag("config", "Config file, e.g. configs/toy_ae.py[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, samples and the config go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  metrics.quiet_library_logs()
  try:
    loop.train(_CONFIG.value, _WORKDIR.value)
  except loop.RunStopped as stopped:  # already logged by the loop, with the step
    sys.exit(stopped.exit_code)


if __name__ == "__main__":
  app.run(main)
