"""Low-rank adapters (LoRA, Hu et al. 2021) as a transform of a parameter tree, not a second model class.

    spec = lora.Spec.of([("attn/to_(q|k|v|out)$", 4, 4.0)])        # (pattern, rank, alpha) per group of kernels
    adapters = lora.init(rng, params, spec)                         # {..., "to_q": {"lora_a", "lora_b"}, ...}
    out = module.apply({"params": lora.merge(params, adapters, spec)}, ...)   # W + alpha / r * A @ B

A Dense kernel `[..., in, out]` (leading axes: the layers of an `nn.scan`ned stack) whose module path (its keys
joined by '/', e.g. 'layers/attn/to_q') matches a pattern (`re.search`; the first pattern that matches wins) gets
`lora_a [..., in, r]` and `lora_b [..., r, out]`, initialised as PEFT does: A uniform in +-1/sqrt(in) (torch's
Kaiming-uniform with a = sqrt(5)), B zero, so a fresh adapter leaves the model unchanged. The adapter tree mirrors
the parameter tree, so the adapters shard like their kernels (`logical_axes` gives each its kernel's axes with the
rank unsharded). `merge` adds `scale * alpha / r * A @ B` (float32, cast to the kernel's dtype); `unmerge`
subtracts it (exact up to the rounding of one add and one subtract). Training the adapters alone keeps the base
parameters out of the optimizer: differentiate with respect to the adapters, with the base passed as a constant.

Merging materialises every adapted kernel again (for a scanned stack, all layers at once, before the scan) and cannot
express dropout on the adapter's input. `inline` is the other way to apply the same adapters, for training:

    with lora.inline():
      out = module.apply({"params": lora.insert(params, adapters, spec, dropout=0.1, rng=rng)}, ...)

`insert` puts each adapter into its Dense module's parameters (with its scaling and, for dropout, a key per layer:
leaves that `nn.scan` slices per layer like the kernel), and `inline` intercepts every `nn.Dense` call that finds
an adapter there and adds `scaling * dropout(x) @ A @ B` to its output, as PEFT's LoRA layer does. The kernels stay
as they are; per layer, the adapter costs two rank-r products.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

KEYS = ("lora_a", "lora_b")
SCALING, SEED = "lora_scaling", "lora_seed"  # the leaves `insert` adds beside an adapter for `inline`


@dataclasses.dataclass(frozen=True)
class Target:
  """Kernels whose module path matches `pattern` get adapters of `rank` with scaling `alpha / rank`."""
  pattern: str
  rank: int
  alpha: float

  def __post_init__(self):
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"LoRA target {self.pattern!r}: rank is {self.rank!r}; must be an int >= 1.")
    if not self.alpha > 0:
      raise ValueError(f"LoRA target {self.pattern!r}: alpha is {self.alpha!r}; must be > 0.")
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f"LoRA target pattern {self.pattern!r} is not a regular expression: {e}.") from None

  @property
  def scaling(self) -> float:
    return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class Spec:
  """Which kernels get adapters, and their rank and alpha (see the module docstring)."""
  targets: tuple[Target, ...]

  @classmethod
  def of(cls, targets: Iterable[Sequence[Any]]) -> "Spec":
    """From (pattern, rank, alpha) triples, e.g. a config's `lora.targets`."""
    out = []
    for t in targets:
      if isinstance(t, Target):
        out.append(t)
        continue
      if len(t) != 3:
        raise ValueError(f"LoRA target {t!r}: expected (pattern, rank, alpha).")
      out.append(Target(str(t[0]), int(t[1]), float(t[2])))
    if not out:
      raise ValueError("A LoRA spec needs at least one (pattern, rank, alpha) target.")
    return cls(tuple(out))

  def target(self, module_path: str) -> Target | None:
    return next((t for t in self.targets if re.search(t.pattern, module_path)), None)


def _modules(tree: Any, prefix: tuple[str, ...] = ()):
  """(path, module dict) of every dict holding a 'kernel' of rank >= 2."""
  if not isinstance(tree, dict):
    return
  kernel = tree.get("kernel")
  if kernel is not None and len(getattr(kernel, "shape", ())) >= 2:
    yield prefix, tree
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _modules(value, prefix + (key,))


def targets(params: Any, spec: Spec) -> dict[tuple[str, ...], Target]:
  """module path -> its Target, for every kernel of `params` that a pattern of `spec` matches; a pattern that
  matches nothing is an error naming it and the kernels there are."""
  out, used = {}, set()
  paths = [path for path, _ in _modules(params)]
  for path in paths:
    target = spec.target("/".join(path))
    if target is not None:
      out[path] = target
      used.add(target.pattern)
  unused = [t.pattern for t in spec.targets if t.pattern not in used]
  if unused:
    raise ValueError(f"LoRA patterns {unused} match no kernel; kernels: {['/'.join(p) for p in paths]}.")
  return out


def subtree(tree: Any, path: Sequence[str]) -> Any:
  """tree[path[0]][path[1]]...: the module dict (or adapter) at a module path."""
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def init(rng: jax.Array, params: Any, spec: Spec, dtype=jnp.float32) -> dict:
  """Fresh adapters for the kernels of `params` (arrays or ShapeDtypeStructs) that `spec` targets."""
  adapters: dict = {}
  for i, (path, target) in enumerate(sorted(targets(params, spec).items())):
    shape = subtree(params, path)["kernel"].shape
    *lead, fan_in, fan_out = shape
    bound = 1.0 / fan_in ** 0.5
    a = jax.random.uniform(jax.random.fold_in(rng, i), (*lead, fan_in, target.rank), dtype, -bound, bound)
    _set(adapters, path, {"lora_a": a, "lora_b": jnp.zeros((*lead, target.rank, fan_out), dtype)})
  return adapters


def adapter_paths(adapters: Any) -> list[tuple[str, ...]]:
  """Module paths of an adapter tree (dicts holding 'lora_a' and 'lora_b')."""
  out = []

  def walk(tree, prefix):
    if set(KEYS) <= set(tree):
      out.append(prefix)
      return
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, prefix + (key,))
  walk(adapters, ())
  return out


def _adapted(adapters: Any, spec: Spec) -> list[tuple[tuple[str, ...], Target]]:
  """(module path, its Target) of every adapter; an adapter that no pattern of `spec` matches is an error."""
  out = []
  for path in adapter_paths(adapters):
    target = spec.target("/".join(path))
    if target is None:
      raise ValueError(f"The adapter of {'/'.join(path)} matches no pattern of the LoRA spec "
                       f"{[t.pattern for t in spec.targets]}.")
    out.append((path, target))
  return out


def delta(adapter: dict, scaling: float) -> jax.Array:
  """scaling * A @ B for one module's adapter, in float32 (layer axes kept): the kernel's update."""
  a, b = adapter["lora_a"].astype(jnp.float32), adapter["lora_b"].astype(jnp.float32)
  return scaling * jnp.einsum("...ir,...ro->...io", a, b, precision=jax.lax.Precision.HIGHEST)


def _apply(params: Any, adapters: Any, spec: Spec, scale: float, sign: float, dtype=None) -> Any:
  out = jax.tree.map(lambda x: x, params)  # a new tree (dicts copied); the arrays are shared
  for path, target in _adapted(adapters, spec):
    module = subtree(out, path)
    kernel = module["kernel"]
    update = delta(subtree(adapters, path), target.scaling * scale)
    if update.shape != kernel.shape:
      raise ValueError(f"The adapter of {'/'.join(path)} gives an update of shape {update.shape} for a kernel of "
                       f"{kernel.shape}.")
    module["kernel"] = (kernel.astype(jnp.float32) + sign * update).astype(dtype or kernel.dtype)
  return out


def merge(params: Any, adapters: Any, spec: Spec, scale: float = 1.0, dtype=None) -> Any:
  """`params` with each adapted kernel W replaced by W + scale * alpha / r * A @ B (a new tree), in `dtype`
  (default W's: a bfloat16 base would round small updates away, so a trainer asks for float32)."""
  return _apply(params, adapters, spec, scale, 1.0, dtype)


def unmerge(params: Any, adapters: Any, spec: Spec, scale: float = 1.0) -> Any:
  """The inverse of `merge`: W - scale * alpha / r * A @ B."""
  return _apply(params, adapters, spec, scale, -1.0)


def logical_axes(adapters: Any, kernel_axes: Any) -> Any:
  """The logical axes of each adapter leaf from its kernel's (a tree like the params of axis-name tuples): A takes
  the kernel's axes but the last (its output is the rank), B all but the second last (its input is the rank); the
  rank axis is None (replicated)."""
  out: dict = {}
  for path in adapter_paths(adapters):
    axes = tuple(subtree(kernel_axes, path)["kernel"])
    _set(out, path, {"lora_a": axes[:-1] + (None,), "lora_b": axes[:-2] + (None, axes[-1])})
  return out


def insert(params: Any, adapters: Any, spec: Spec, scale: float = 1.0, dropout: float = 0.0,
           rng: jax.Array | None = None) -> Any:
  """`params` (a new tree) with each adapter, its scaling (`scale * alpha / r`) and, when `dropout` > 0, dropout
  keys (one per layer of a scanned stack, from `rng`) put into its module's dict, for a model applied under
  `inline()`. The kernels are untouched."""
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"LoRA dropout is {dropout!r}; must be in [0, 1).")
  if dropout and rng is None:
    raise ValueError("LoRA dropout needs an rng.")
  out = jax.tree.map(lambda x: x, params)
  for i, (path, target) in enumerate(_adapted(adapters, spec)):
    adapter, module = subtree(adapters, path), subtree(out, path)
    lead = tuple(module["kernel"].shape[:-2])
    if adapter["lora_a"].shape[:-2] != lead or adapter["lora_a"].shape[-2] != module["kernel"].shape[-2]:
      raise ValueError(f"The adapter of {'/'.join(path)} has A of shape {adapter['lora_a'].shape} for a kernel of "
                       f"{module['kernel'].shape}.")
    module.update(adapter)
    module[SCALING] = jnp.full(lead, target.scaling * scale, jnp.float32)
    if dropout:
      keys = jax.random.split(jax.random.fold_in(rng, i), math.prod(lead))
      if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
      module[SEED] = keys.reshape(*lead, -1)
  return out


@contextlib.contextmanager
def inline(dropout: float = 0.0, expected: Sequence[Sequence[str]] = ()):
  """Within the context, an `nn.Dense` whose parameters hold an adapter (`insert`) returns
  `x @ W + b + scaling * dropout(x) @ A @ B`, computed in the layer's dtype. `expected`: the adapters' module paths;
  leaving the context checks that each was applied (an adapter on anything but an nn.Dense would be ignored)."""
  seen = set()

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.Dense)
        or not module.has_variable("params", "lora_a")):
      return next_fun(*args, **kwargs)
    seen.add(tuple(module.path))
    x = args[0] if args else kwargs["inputs"]
    y = next_fun(*args, **kwargs)
    dtype = module.dtype or x.dtype
    a, b = (module.get_variable("params", k).astype(dtype) for k in KEYS)
    h = x.astype(dtype)
    if dropout:
      key = jax.random.wrap_key_data(module.get_variable("params", SEED))
      keep = jax.random.bernoulli(key, 1.0 - dropout, h.shape)
      h = jnp.where(keep, h / (1.0 - dropout), 0).astype(dtype)
    scaling = module.get_variable("params", SCALING).astype(dtype)
    return y + (scaling * ((h @ a) @ b)).astype(y.dtype)

  with nn.intercept_methods(interceptor):
    yield
  # A module applied inside a sub-apply (params["dit"]) reports its path relative to that apply's root.
  missed = ["/".join(p) for p in map(tuple, expected) if not any(s and p[len(p) - len(s):] == s for s in seen)]
  if missed:
    raise ValueError(f"LoRA adapters of {missed} were not applied: inline LoRA adapts nn.Dense layers only; merge "
                     "the adapters (lora.mode 'merge') for other kernels.")
