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
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp

KEYS = ("lora_a", "lora_b")


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


def delta(adapter: dict, scaling: float) -> jax.Array:
  """scaling * A @ B for one module's adapter, in float32 (layer axes kept): the kernel's update."""
  a, b = adapter["lora_a"].astype(jnp.float32), adapter["lora_b"].astype(jnp.float32)
  return scaling * jnp.einsum("...ir,...ro->...io", a, b, precision=jax.lax.Precision.HIGHEST)


def _apply(params: Any, adapters: Any, spec: Spec, scale: float, sign: float, dtype=None) -> Any:
  out = jax.tree.map(lambda x: x, params)  # a new tree (dicts copied); the arrays are shared
  for path in adapter_paths(adapters):
    target = spec.target("/".join(path))
    if target is None:
      raise ValueError(f"The adapter of {'/'.join(path)} matches no pattern of the LoRA spec "
                       f"{[t.pattern for t in spec.targets]}.")
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
