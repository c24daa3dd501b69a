"""vdm_jax.xla_cpu: the library's CPU compile options take convolutions away from YNNPACK and change no result."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import xla_cpu
from vdm_jax.models.vae import Conv3d


def _ynn_roots(hlo: str, opcode: str) -> int:
  """How many YNN fusions in optimised HLO text have an `opcode` instruction at their root."""
  roots, current = set(), None
  for line in hlo.splitlines():
    header = re.match(r"^%(\S+) .*\{$", line)
    if header:
      current = header.group(1)
    elif line.strip().startswith("ROOT") and f" {opcode}(" in line and current:
      roots.add(current)
  calls = [re.search(r"calls=%([^,\s]+)", line) for line in hlo.splitlines() if "__ynn_fusion" in line]
  return sum(1 for call in calls if call and call.group(1) in roots)


def _ynn_convolutions(hlo: str) -> int:
  return _ynn_roots(hlo, "convolution")


@pytest.fixture(scope="module")
def conv_grad():
  # 32 channels: jaxlib 0.10 gives this conv's forward and backward to YNNPACK by default (8 channels it does not).
  conv = Conv3d(32)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 16, 16, 32)).astype(np.float32))
  params = conv.init(jax.random.PRNGKey(0), x)
  grad = jax.grad(lambda p, v: jnp.sum(jnp.square(conv.apply(p, v))), argnums=(0, 1))
  return grad, params, x


def test_cpu_options_drop_ynn_convolutions(conv_grad):
  grad, params, x = conv_grad
  assert xla_cpu.compiler_options() == {xla_cpu.YNN_OPTION: xla_cpu.YNN_WITHOUT_CONVOLUTIONS}
  default = jax.jit(grad).lower(params, x).compile().as_text()
  ours = jax.jit(grad, compiler_options=xla_cpu.compiler_options()).lower(params, x).compile().as_text()
  assert _ynn_convolutions(default) > 0  # the test shape exercises the YNN path, so the next line can fail
  assert _ynn_convolutions(ours) == 0
  assert "__ynn_fusion" in ours  # dots and reductions keep YNNPACK


def test_jit_gives_the_same_values(conv_grad):
  grad, params, x = conv_grad
  ours, default = xla_cpu.jit(grad)(params, x), jax.jit(grad)(params, x)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default)):  # two conv algorithms: float32 rounding only
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))))


def test_user_xla_flags_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  assert xla_cpu.compiler_options() is None


def test_unknown_option_falls_back_to_defaults(monkeypatch):
  monkeypatch.setattr(xla_cpu, "YNN_WITHOUT_CONVOLUTIONS", "LIBRARY_FUSION_TYPE_NOT_A_TYPE")
  assert xla_cpu.compiler_options() is None
  assert float(xla_cpu.jit(lambda v: v * 2)(jnp.float32(3))) == 6.0


def test_has_amx_bf16_reads_the_cpu_flags(tmp_path):
  path = tmp_path / "cpuinfo"
  path.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
  assert xla_cpu.has_amx_bf16(str(path))
  path.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile amx_bf16x\n")  # whole flags only
  assert not xla_cpu.has_amx_bf16(str(path))
  assert not xla_cpu.has_amx_bf16(str(tmp_path / "missing"))


def test_cpu_options_without_ynn_reductions_keep_ynn_dots():
  """train.cpu_ynn_reductions=False: a sum over tokens goes to XLA's own reduction, a matmul stays with YNNPACK,
  and the values agree to float32 rounding (1e-4)."""
  assert xla_cpu.compiler_options(ynn_reductions=False) == {xla_cpu.YNN_OPTION: xla_cpu.YNN_DOTS_ONLY}
  rng = np.random.default_rng(0)
  x, w = (jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in ((1, 1950, 256), (256, 256)))
  fn = lambda w, x: (jnp.sum(x * jnp.tanh(x), axis=1), x[0] @ w)  # a bias gradient's sum over tokens, a matmul
  with_reduce = jax.jit(fn, compiler_options=xla_cpu.compiler_options()).lower(w, x).compile()
  dots_only = jax.jit(fn, compiler_options=xla_cpu.compiler_options(ynn_reductions=False)).lower(w, x).compile()
  assert _ynn_roots(with_reduce.as_text(), "reduce") > 0  # the shape exercises YNN's reductions: the next can fail
  assert _ynn_roots(dots_only.as_text(), "reduce") == 0
  assert _ynn_roots(dots_only.as_text(), "dot") > 0
  for a, b in zip(with_reduce(w, x), dots_only(w, x)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
