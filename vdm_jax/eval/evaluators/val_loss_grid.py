"""`val_loss_grid`: the mean validation loss at each of a grid of timesteps, with fixed noise (seeded by batch and
timestep), so runs and checkpoints compare at equal difficulty. Metrics `val_loss_t<t>`.

The experiment supplies `loss_at(params, batch, t, rng) -> per-example losses [B]` (host array) for one batch of
its eval pipeline at integer timestep t (for rectified flow, t / num_train_timesteps)."""
from __future__ import annotations

import jax
import numpy as np

from vdm_jax.eval.evaluators import _videos

DEFAULTS = {"split": "validation", "num_examples": 64, "batch_size": 16,
            "loss_timesteps": (100, 300, 500, 700, 900)}
NEEDS = ("loss_at",)


def run(ctx, *, split, num_examples, batch_size, loss_timesteps) -> dict[str, float]:
  per_t = {int(t): [] for t in loss_timesteps}
  for i, batch in enumerate(_videos.eval_batches(ctx, split, num_examples, batch_size)):
    for t in per_t:
      rng = jax.random.fold_in(jax.random.PRNGKey(1234 + i), t)
      per_t[t].append(np.asarray(ctx.experiment.loss_at(ctx.params, batch, t, rng)))
  return {f"val_loss_t{t}": float(np.mean(np.concatenate(v))) for t, v in per_t.items() if v}
