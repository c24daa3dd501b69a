r"""Attention backends on a GPU: accuracy of 'cudnn', 'xla' and 'chunked' in bf16/fp16 and their speed.

    python -m experiments.check_gpu_attention --out attention.jsonl    # CogVideoX-2b heads (30 x 64) on a GPU:
                                                                        # 1 x 17,776 tokens and 2 x 2,176 tokens
    JAX_PLATFORMS=cpu python -m experiments.check_gpu_attention --heads 2 --cases 1x300 --repeats 1   # a dry run

For each case (batch x tokens, self-attention without a mask, as in the DiT) and each low-precision dtype, q/k/v and
an output cotangent are drawn from N(0, 1), rounded to the dtype, and the reference is computed from those rounded
values in float32 with the 'chunked' backend at 'highest' matmul precision (no TF32; 'chunked' equals 'xla' to 1e-5
in float32, tests/test_attention.py, and its memory is linear in the length, so the reference exists where the
[B, H, L, L] float32 logits of 'xla' do not fit). Each backend then runs in the dtype: forward output and the q/k/v
gradients of <out, cotangent> are compared with the reference (max abs error, max abs error / max |ref| and the
relative L2 error) and with the 'xla' backend in the same dtype where that ran. Times are medians over `repeats` of
the jitted forward and of the jitted forward + backward (the vjp), after a compile-and-first call that is reported
separately; the compiled programs' temporary memory comes from XLA's memory analysis. A backend that fails (cuDNN
refusing a shape, running out of memory, 'cudnn' off a GPU) has its error recorded and the others go on. One JSON
object per (case, dtype, backend) goes to `--out` and a table is printed last.
"""
from __future__ import annotations

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_common
from vdm_jax.models import attention

FLAGS = flags.FLAGS
flags.DEFINE_integer("heads", 30, "Attention heads.")
flags.DEFINE_integer("head_dim", 64, "Channels per head.")
flags.DEFINE_list("cases", ["1x17776", "2x2176"], "BATCHxTOKENS, e.g. 1x17776 (226 text + 13*30*45 video "
                  "tokens, the full CogVideoX-2b latent) and 2x2176 (226 + 13*15*10).")
flags.DEFINE_list("dtypes", ["bfloat16", "float16"], "Low-precision dtypes to check.")
flags.DEFINE_list("backends", ["cudnn", "xla", "chunked"], "Backends to check (see vdm_jax.models.attention).")
flags.DEFINE_integer("repeats", 10, "Timed repetitions (after the compile-and-first call).")
flags.DEFINE_integer("seed", 0, "Seed of the random q/k/v and cotangent.")
flags.DEFINE_string("out", "", "Optional JSON-lines file for the results.")


def _parse_case(case: str) -> tuple[int, int]:
  try:
    batch, length = (int(v) for v in case.lower().split("x"))
  except ValueError as e:
    raise ValueError(f"--cases entry {case!r}: expected BATCHxTOKENS, e.g. 1x17776.") from e
  return batch, length


def _programs(backend: str):
  """(forward, forward + backward) jitted for one backend; the latter returns (dq, dk, dv) of <out, d_out>."""
  attend = lambda q, k, v: attention.dot_product_attention(q, k, v, backend=backend)

  def grads(q, k, v, d_out):
    _, vjp = jax.vjp(attend, q, k, v)
    return vjp(d_out)

  return jax.jit(attend), jax.jit(grads)


def _errors(values, reference) -> dict:
  """Max abs error, max abs error / max |reference| and the relative L2 error of each named array, in float32."""
  result = {}
  for name, value in values.items():
    errors = bench_common.errors(value, reference[name])
    result.update({f"{name}_max_abs": errors["max_abs"], f"{name}_rel": errors["max_rel"],
                   f"{name}_l2_rel": errors["l2_rel"]})
  return result


def check_case(batch: int, length: int, dtype, backends, repeats: int, seed: int) -> list[dict]:
  """All backends for one case and dtype; see the module docstring."""
  rng = np.random.default_rng(seed)
  shape = (batch, length, FLAGS.heads, FLAGS.head_dim)
  q, k, v, d_out = (jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype) for _ in range(4))
  with jax.default_matmul_precision("highest"):
    ref_forward, ref_grads = _programs("chunked")
    f32 = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
    reference = {"out": ref_forward(*f32[:3])}
    reference.update(zip(("dq", "dk", "dv"), ref_grads(*f32)))
  reference = {name: np.asarray(value) for name, value in reference.items()}
  info = {"batch": batch, "length": length, "heads": FLAGS.heads, "head_dim": FLAGS.head_dim,
          "dtype": jnp.dtype(dtype).name, "platform": jax.default_backend(), "device": jax.devices()[0].device_kind}
  rows, values_of = [], {}
  for backend in backends:
    row = dict(info, backend=backend)
    forward, grads = _programs(backend)
    try:
      start = time.perf_counter()
      out = np.asarray(forward(q, k, v))
      row["forward_compile_and_first_s"] = time.perf_counter() - start
      start = time.perf_counter()
      values = dict(out=out, **dict(zip(("dq", "dk", "dv"), (np.asarray(g) for g in grads(q, k, v, d_out)))))
      row["train_compile_and_first_s"] = time.perf_counter() - start
      row.update(_errors(values, reference))
      values_of[backend] = values
      row["forward_s"] = bench_common.median_time(lambda: forward(q, k, v), repeats, sync=jax.block_until_ready)
      row["forward_backward_s"] = bench_common.median_time(lambda: grads(q, k, v, d_out), repeats,
                                                            sync=jax.block_until_ready)
      memory = grads.lower(q, k, v, d_out).compile().memory_analysis()
      if memory is not None:
        row["forward_backward_temp_gb"] = memory.temp_size_in_bytes / 2 ** 30
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = bench_common.short_error(e, limit=3000)
    rows.append(row)
  for row in rows:
    if row["backend"] != "xla" and row["backend"] in values_of and "xla" in values_of:
      vs_xla = _errors(values_of[row["backend"]], values_of["xla"])
      row.update({f"vs_xla_{key}": value for key, value in vs_xla.items()})
    print(json.dumps(row), flush=True)
  return rows


def _table(rows: list[dict]) -> str:
  lines = ["| case | dtype | backend | fwd ms | fwd+bwd ms | out rel | dq rel | dk rel | dv rel | vs xla out/dq rel |"
           " temp GB |", "|" + " --- |" * 11]
  fmt = lambda v, scale=1.0, spec=".3g": "-" if v is None else format(v * scale, spec)
  for r in rows:
    case = f"{r['batch']}x{r['length']}"
    if "error" in r:
      lines.append(f"| {case} | {r['dtype']} | {r['backend']} | error: {r['error'][:150]} |")
      continue
    vs_xla = (f"{fmt(r.get('vs_xla_out_rel'))} / {fmt(r.get('vs_xla_dq_rel'))}" if "vs_xla_out_rel" in r else "-")
    lines.append(f"| {case} | {r['dtype']} | {r['backend']} | {fmt(r.get('forward_s'), 1e3, '.2f')} | "
                 f"{fmt(r.get('forward_backward_s'), 1e3, '.2f')} | {fmt(r['out_rel'])} | {fmt(r['dq_rel'])} | "
                 f"{fmt(r['dk_rel'])} | {fmt(r['dv_rel'])} | {vs_xla} | {fmt(r.get('forward_backward_temp_gb'))} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for backend in FLAGS.backends:
    attention.split_backend(backend)  # a ValueError naming the allowed backends
  dtypes = [jnp.dtype(name) for name in FLAGS.dtypes]
  cases = [_parse_case(case) for case in FLAGS.cases]
  print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
  rows = []
  for batch, length in cases:
    for dtype in dtypes:
      rows += check_case(batch, length, dtype, FLAGS.backends, FLAGS.repeats, FLAGS.seed)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in rows)
  print(_table(rows))


if __name__ == "__main__":
  app.run(main)
