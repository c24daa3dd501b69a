"""LoRA fine-tuning of any experiment (`config.lora.targets`): the run trains adapters only, over a frozen base.

    c.init_from = "/runs/t2v"            # the base: a vdm_jax workdir (its EMA params) or a diffusers CogVideoX folder
    c.lora.targets = (("dit/layers/attn/to_(q|k|v|out)$", 8, 8.0),)   # (pattern, rank, alpha) over param paths

`wrap(experiment)` (done by `vdm_jax.train.setup`) gives the experiment whose parameters are the adapters
(`vdm_jax.models.lora`, shaped and sharded like their kernels) and whose frozen parameters add the base, read once
from `init_from` and checked leaf by leaf against the model. The loss, the evaluators and the samples see
the base with the adapters applied, so the gradient, the optimizer state, the EMA and the checkpoints hold only the
adapters; the run's `config.json` names its base (`init_from`). The training loss applies them per `lora.mode`:
'inline' (`lora.inline`: each Dense adds its adapter's product; `lora.dropout` on the adapter's input) or 'merge'
(`lora.merge`, at `train.param_dtype`); evaluators and samples always see the merged model, without dropout.
`lora.base_dtype` stores the frozen base in bfloat16 to halve its memory.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vdm_jax.config import ConfigError
from vdm_jax.models import lora
from vdm_jax.train import warm_start

BASE = "lora_base"


def enabled(config) -> bool:
  return bool(config.get("lora") and config.lora.targets)


def validate(config) -> None:
  if not enabled(config):
    return
  if not config.init_from:
    raise ConfigError("Config key 'lora.targets' is set, but 'init_from' is empty: LoRA fine-tunes a base run; set "
                      "init_from to its workdir or a diffusers CogVideoX folder.")
  try:
    lora.Spec.of(config.lora.targets)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"Config key 'lora.targets': {e}") from None
  if config.lora.base_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"Config key 'lora.base_dtype' is {config.lora.base_dtype!r}; allowed: 'float32', 'bfloat16'.")
  if config.lora.mode not in ("inline", "merge"):
    raise ConfigError(f"Config key 'lora.mode' is {config.lora.mode!r}; allowed: 'inline', 'merge'.")
  dropout = config.lora.dropout
  if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
    raise ConfigError(f"Config key 'lora.dropout' is {dropout!r}; must be a number in [0, 1).")
  if dropout and config.lora.mode != "inline":
    raise ConfigError(f"Config key 'lora.dropout' is {dropout!r}, which needs lora.mode 'inline' (a merged kernel "
                      "cannot drop the adapter's input); lora.mode is 'merge'.")


def _is_box(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


class LoraExperiment:
  """`inner` with adapters as its parameters; every hook not defined here is the inner experiment's."""

  def __init__(self, inner):
    self.inner = inner
    self.spec = lora.Spec.of(inner.config.lora.targets)
    self._abstract = None
    self._base = None

  def __getattr__(self, name):
    return getattr(self.inner, name)

  def _boxed_abstract(self) -> Any:
    """The inner experiment's parameters as boxed ShapeDtypeStructs (their logical axes)."""
    if self._abstract is None:
      shapes = self.inner.batch_shapes(self.inner.config.input.batch_size)
      if shapes is None:
        raise ConfigError(f"LoRA needs an experiment that knows its batch shapes; {self.inner.name!r} does not.")
      self._abstract = jax.eval_shape(self.inner.init, jax.random.PRNGKey(0), shapes)
    return self._abstract

  def _axes(self) -> Any:
    return jax.tree.map(lambda b: tuple(b.names) if _is_box(b) else (None,) * len(b.shape), self._boxed_abstract(),
                        is_leaf=_is_box)

  def base(self) -> Any:
    """The base parameters from `init_from` (host, in `lora.base_dtype`), checked against the model, read once."""
    if self._base is None:
      config = self.inner.config
      dtype = np.dtype("float32") if config.lora.base_dtype == "float32" else jax.numpy.bfloat16
      loaded, step = warm_start.read_params(config.init_from, config.init_from_item,
                                            warm_start.experiment_dit(self.inner), dtype)
      expected = jax.tree.map(lambda b: b.value if _is_box(b) else b, self._boxed_abstract(), is_leaf=_is_box)
      warm_start.check_match(expected, loaded, config.init_from)
      # copy=False: a diffusers folder's base is read in `dtype` already (a second copy of a 5B base is 11 GB)
      self._base = jax.tree.map(lambda x: np.asarray(x).astype(dtype, copy=False), loaded)
      self.base_step = step
    return self._base

  def init(self, rng, batch):
    abstract = jax.tree.map(lambda b: b.value if _is_box(b) else b, self._boxed_abstract(), is_leaf=_is_box)
    adapters = lora.init(rng, abstract, self.spec)
    axes = lora.logical_axes(adapters, self._axes())
    return jax.tree.map(lambda x, names: nn.LogicallyPartitioned(x, names), adapters, axes,
                        is_leaf=lambda x: isinstance(x, tuple))

  def frozen_params(self, abstract: bool = False):
    frozen = dict(self.inner.frozen_params(abstract))
    names = self._axes()
    if abstract:
      dtype = jax.numpy.dtype(self.inner.config.lora.base_dtype)
      values = jax.tree.map(lambda b: jax.ShapeDtypeStruct((b.value if _is_box(b) else b).shape, dtype),
                            self._boxed_abstract(), is_leaf=_is_box)
    else:
      values = self.base()
    frozen[BASE] = jax.tree.map(lambda x, n: nn.LogicallyPartitioned(x, n), values, names,
                                is_leaf=lambda x: isinstance(x, tuple))
    return frozen

  def merged(self, adapters, base=None, scale: float = 1.0):
    """The model's parameters: the base with the adapters merged; the adapted kernels at `train.param_dtype`, the
    rest as the base stores them (the model casts to its compute dtype)."""
    base = self.base() if base is None else base
    return lora.merge(base, adapters, self.spec, scale, dtype=jax.numpy.dtype(self.inner.config.train.param_dtype))

  def loss(self, params, batch, rng, frozen, step):
    rest = {k: v for k, v in frozen.items() if k != BASE}
    settings = self.inner.config.lora
    if settings.mode == "merge":
      return self.inner.loss(self.merged(params, frozen[BASE]), batch, rng, rest, step)
    # A key apart from the inner loss's draws, so its noise is the same as in 'merge' mode.
    dropout_rng = jax.random.fold_in(rng, 0x10AA)
    model_params = lora.insert(frozen[BASE], params, self.spec, dropout=settings.dropout, rng=dropout_rng)
    with lora.inline(settings.dropout, lora.adapter_paths(params)):
      return self.inner.loss(model_params, batch, rng, rest, step)

  def evaluate(self, params, step, names=None):
    return self.inner.evaluate(self.merged(params), step, names=names)

  def write_samples(self, params, step, out_dir):
    return self.inner.write_samples(self.merged(params), step, out_dir)


def wrap(experiment):
  """`experiment` itself, or its LoRA fine-tuning when the config sets `lora.targets`."""
  return LoraExperiment(experiment) if enabled(experiment.config) else experiment
