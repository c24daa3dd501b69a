"""Train state, optimizer and learning-rate schedule from config."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: step, params, optimizer state, EMA params, base rng.

  The rng of step `s` is `fold_in(rng, s)`, so it does not change as training advances and a resumed run draws
  the same numbers as an uninterrupted one.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array


def make_schedule(config) -> optax.Schedule:
  """Learning rate per step: linear warm-up to `schedule.base_lr`, then the named decay until `train.steps`."""
  s, steps = config.schedule, config.train.steps
  warmup = min(s.warmup_steps, steps)
  decay_steps = max(steps - warmup, 1)
  end = s.base_lr * s.end_lr_factor
  if s.name == "constant":
    main = optax.constant_schedule(s.base_lr)
  elif s.name == "cosine":
    main = optax.cosine_decay_schedule(s.base_lr, decay_steps, alpha=s.end_lr_factor)
  elif s.name == "linear":
    main = optax.linear_schedule(s.base_lr, end, decay_steps)
  elif s.name == "rsqrt":
    main = lambda count: s.base_lr / jnp.sqrt(1.0 + count / max(warmup, 1))
  else:
    raise ValueError(f"Unknown schedule.name {s.name!r}.")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, s.base_lr, warmup), main], [warmup])


def make_optimizer(config) -> optax.GradientTransformation:
  """Gradient clipping (global norm) followed by the configured optimizer with the schedule."""
  o = config.optimizer
  lr = make_schedule(config)
  if o.name == "adamw":
    opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  elif o.name == "adam":
    opt = optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
  elif o.name == "lion":
    opt = optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  elif o.name == "sgd":
    opt = optax.sgd(lr, momentum=o.b1 or None)
  else:
    raise ValueError(f"Unknown optimizer.name {o.name!r}.")
  if o.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), opt)
  return opt


def l2_norm(tree: Any) -> jax.Array:
  """sqrt(sum of squares) over all leaves, in float32."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def nonfinite_paths(finite_flags: Any) -> list[str]:
  """Tree paths whose flag is False, from a tree of per-leaf `all(isfinite(x))` booleans."""
  flat, _ = jax.tree_util.tree_flatten_with_path(finite_flags)
  return [jax.tree_util.keystr(path) for path, ok in flat if not bool(ok)]
