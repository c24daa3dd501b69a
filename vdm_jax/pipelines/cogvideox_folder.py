"""A diffusers CogVideoX folder's parts and its scheduler config, read without torch: what `cogvideox.load` checks
before loading weights, and the sampler settings a scheduler config maps to."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from vdm_jax.diffusion import schedules

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULER_CLASSES = {"CogVideoXDDIMScheduler": "ddim", "CogVideoXDPMScheduler": "dpmpp_2m_sde"}
# diffusers beta_schedule names -> vdm_jax.diffusion.schedules names
BETA_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
  """What `vdm_jax.diffusion.samplers.sample` needs from a diffusers scheduler config."""
  sampler: str
  schedule: schedules.NoiseSchedule
  prediction_type: str
  timestep_spacing: str


def scheduler_settings(config: dict[str, Any]) -> SchedulerSettings:
  """A diffusers CogVideoX scheduler config (`scheduler_config.json`) -> SchedulerSettings; fails naming the key
  whose value the samplers do not support."""
  name = config.get("_class_name")
  if name not in SCHEDULER_CLASSES:
    raise ValueError(f"scheduler_config.json: _class_name={name!r}; supported: {sorted(SCHEDULER_CLASSES)}.")
  beta_schedule = config.get("beta_schedule", "scaled_linear")
  if beta_schedule not in BETA_SCHEDULES:
    raise ValueError(f"scheduler_config.json: beta_schedule={beta_schedule!r}; supported: {sorted(BETA_SCHEDULES)}.")
  if config.get("trained_betas") is not None:
    raise ValueError("scheduler_config.json: trained_betas is not supported; give beta_schedule/beta_start/beta_end.")
  spacing = config.get("timestep_spacing", "leading")
  if spacing not in schedules.TIMESTEP_SPACINGS:
    raise ValueError(f"scheduler_config.json: timestep_spacing={spacing!r}; supported: "
                     f"{list(schedules.TIMESTEP_SPACINGS)}.")
  # diffusers adds steps_offset to 'leading' timesteps only; the samplers have no offset.
  if spacing == "leading" and config.get("steps_offset", 0):
    raise ValueError(f"scheduler_config.json: timestep_spacing='leading' with steps_offset="
                     f"{config['steps_offset']} is not supported by vdm_jax.diffusion.samplers (steps_offset 0 is; "
                     "'trailing' and 'linspace' ignore steps_offset).")
  prediction_type = config.get("prediction_type", "epsilon")
  if prediction_type not in ("epsilon", "v_prediction", "sample"):
    raise ValueError(f"scheduler_config.json: prediction_type={prediction_type!r}; supported: "
                     "['epsilon', 'v_prediction', 'sample'].")
  schedule = schedules.make_schedule(
      BETA_SCHEDULES[beta_schedule], num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
      beta_start=float(config.get("beta_start", 0.00085)), beta_end=float(config.get("beta_end", 0.012)),
      snr_shift_scale=float(config.get("snr_shift_scale", 3.0)),
      rescale_betas_zero_snr=bool(config.get("rescale_betas_zero_snr", False)),
      set_alpha_to_one=bool(config.get("set_alpha_to_one", True)))
  return SchedulerSettings(SCHEDULER_CLASSES[name], schedule, prediction_type, spacing)


def check_folder(path: str) -> None:
  """Fails naming every part of a diffusers CogVideoX folder that is missing (before anything is loaded)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is not a folder; expected a diffusers CogVideoX folder with {list(PARTS)}.")
  missing = [part for part in PARTS if not os.path.isdir(os.path.join(path, part))]
  if missing:
    raise FileNotFoundError(f"{path!r} is not a complete diffusers CogVideoX folder: missing {missing} "
                            f"(a CogVideoX folder has {list(PARTS)}).")
