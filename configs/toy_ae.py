"""The `toy_ae` experiment: a denoising frame autoencoder on Captioned Shapes (the loop's smoke test and demo).

    python -m experiments.train --config configs/toy_ae.py --workdir /tmp/toy_ae
    python -m experiments.train --config configs/toy_ae.py:runlocal --workdir /tmp/toy_ae_tiny   # seconds

It checks the training stack alone in minutes on a CPU (its validation PSNR: docs/recipes.md); the first run also
renders Captioned Shapes 64x64x17 into ~/tensorflow_datasets.
`runlocal` shrinks everything (the 32x32x9_tiny dataset, a few steps) for tests.
"""
from vdm_jax.train.config import base_config, parse_arg


def get_config(arg: str | None = None):
  args = parse_arg(arg, runlocal=False)
  c = base_config("toy_ae")
  c.input.builder_config = "64x64x17"
  c.input.batch_size = 8
  c.input.pp = "decode_video|value_range(-1, 1)|decode_text('caption')|keep('video', 'caption')"
  c.train.steps = 500
  c.train.log_every = 25
  c.train.checkpoint_every = 250
  c.train.ema_decay = 0.99
  c.schedule.base_lr = 2e-3
  c.schedule.warmup_steps = 20
  if args["runlocal"]:
    c.input.builder_config = "32x32x9_tiny"
    c.input.batch_size = 8
    c.model.features = (8,)
    c.train.steps = 6
    c.train.log_every = 2
    c.train.checkpoint_every = 3
    c.train.ema_decay = 0.0
    c.eval.num_examples = 8
  return c
