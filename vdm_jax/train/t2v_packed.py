"""The text-to-video loss of a packed step (`input.pack_length` > 0, vdm_jax.data.buckets): the clips of every
bucket in the step go into rows of `pack_length` tokens (vdm_jax.models.packing, first fit, largest first), each
with its own noise, time, prompt and positions, and the loss is the mean over clips of each clip's weighted MSE,
which is what the same clips give unpacked (tests/test_packing.py). The layout follows from the batch's shapes, so
the step compiles once.

    config.input.buckets = {"64": {"17": (1.0, 4), "33": (1.0, 2), "1": (1.0, 8)}}   # clips of each per step
    config.input.pack_length = 144                                                      # tokens per row
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm_jax import config as config_lib
from vdm_jax.data import buckets
from vdm_jax.diffusion import conditioning, objectives
from vdm_jax.models import packing


def validate(config) -> None:
  """Packing needs what restarts per clip and has no frame conditions; fails naming the key."""
  if not buckets.packed(config.input):
    return
  config_lib.check(not conditioning.is_conditioned(config.diffusion.condition.mix), "input.pack_length",
                   "packs text-to-video clips only; drop the frame conditions of diffusion.condition.mix or packing.")
  config_lib.check(config.diffusion.image_fraction == 0.0, "diffusion.image_fraction",
                   "must be 0 with input.pack_length (images are a bucket with 1 frame there).")
  model = config.model
  pos_embed, use_rope, rope_grid = (model.get("pos_embed", "sincos"), model.get("use_rope", False),
                                    model.get("rope_grid", "linspace"))
  key, value = ("model.pos_embed", pos_embed) if pos_embed == "learned" else ("model.rope_grid", rope_grid)
  config_lib.check(packing.positions_restart(pos_embed, use_rope, rope_grid), key,
                   f"is {value!r}; packing needs positions that restart per clip: pos_embed 'sincos' or 'none', "
                   "and with RoPE rope_grid 'slice'.")


def loss(experiment, params, batch, rng, frozen):
  """(Loss, metrics) of a packed step's batch {'key@bucket': [n_b, ...]} for the `t2v` experiment."""
  d = experiment.config.diffusion
  dit = experiment.dit()
  z_rng, drop_rng, t_rng, n_rng = jax.random.split(rng, 4)
  clips, embeds = [], []
  for i, part in enumerate(buckets.split_packed(batch).values()):
    z = experiment.latents(part["latent_moments"], jax.random.fold_in(z_rng, i))
    clips.extend(z[j] for j in range(z.shape[0]))
    embeds.append(experiment.batch_embeds(params, part, frozen, jax.random.fold_in(drop_rng, i)))
  layout = packing.plan([clip.shape[:3] for clip in clips], int(experiment.config.input.pack_length),
                        dit.patch_size, dit.patch_size_t)
  x0, segments = packing.pack(clips, layout)
  noise = jax.random.normal(n_rng, x0.shape)
  t = packing.per_slot(experiment.times(t_rng, len(clips)), layout)
  x_t, model_t, target, weight = objectives.noised_packed(d.prediction_type, x0, noise, t, segments.slot_index,
                                                          experiment.alphas_cumprod, d.loss_weighting)
  out = dit.apply({"params": params["dit"]}, x_t, model_t, packing.per_slot(jnp.concatenate(embeds), layout),
                  packing=segments)
  value = objectives.packed_loss(out, target, weight, segments.segment_ids)
  return value, {"diffusion_loss": value, "pack_fill": jnp.float32(layout.fill),
                 "pack_rows": jnp.float32(layout.rows)}
