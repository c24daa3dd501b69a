"""The config sections of a text-to-video run that inference reads, with their defaults and checks.

`vae` (the frozen VAE and how its latents are normalised), `text` (the encoder), `model` (the DiT) and `diffusion`
(the objective and noise schedule). The `t2v` experiment builds its config from these and adds its training-only
sections; a pipeline reading an older run's `config.json` fills keys added since with these defaults.
"""
from __future__ import annotations

import ml_collections

from vdm_jax import config as config_lib
from vdm_jax import text as text_lib
from vdm_jax.diffusion import conditioning, objectives, schedules, timesteps
from vdm_jax.models import dit

LATENT_NORMS = ("auto", "channel", "scaling_factor")


def vae_config() -> ml_collections.ConfigDict:
  """The `vae` section: which frozen VAE, and how its latents are normalised for the DiT."""
  return ml_collections.ConfigDict({
      "workdir": "",  # a `vae` experiment's workdir (its EMA params), or
      "path": "",  # a diffusers AutoencoderKLCogVideoX folder
      # 'channel' = (z - mean_c) / std_c with the per-channel statistics of the training latent cache (a VAE trained
      # with a tiny KL weight has per-channel offsets far larger than its variations, which one global scale keeps);
      # 'scaling_factor' = z * scaling_factor (CogVideoX: no shift); 'auto' = 'scaling_factor' for a CogVideoX
      # folder (`path`) or an explicit scaling_factor, else 'channel'.
      "latent_norm": "auto",
      "scaling_factor": 0.0,  # 0: the folder's own value with `path`, else 1 / std of the cached training latents
      "cache_dir": "",  # '' -> <vae workdir or this workdir>/latent_cache/<builder_config>
      "sample_posterior": True,
      "encode_batch_size": 16,
      # [T', h, w, C] of one clip's latents when there is no latent cache yet (planning a run with no data or
      # weights on disk, e.g. (13, 60, 90, 16) for CogVideoX at 480x720x49); () reads it from the cache.
      "latent_shape": (),
  })


def text_config() -> ml_collections.ConfigDict:
  """The `text` section: a small byte-level encoder trained with the DiT (Captioned Shapes' captions are short)."""
  c = text_lib.default_config()
  # max_length 40: the longest Captioned Shapes caption is 36 bytes (+ EOS).
  c.update({"type": "byte", "trainable": True, "max_length": 40, "d_model": 128, "d_kv": 32, "num_heads": 4,
            "d_ff": 256, "num_layers": 2})
  # A frozen encoder (trainable=False) can run once per split into an embedding cache instead of in every step
  # (CogVideoX trains on cached T5-XXL embeddings); input.pp must then keep 'text_embeds'.
  c.cached = False
  c.cache_dir = ""  # '' -> <vae workdir or this workdir>/text_cache/<builder_config>
  return c


def dit_config(**overrides) -> ml_collections.ConfigDict:
  """The `model` section: DiT fields (vdm_jax.models.dit.DiT), small and trained from scratch by default."""
  c = ml_collections.ConfigDict({
      "conditioning": "joint", "activation": "gelu_tanh", "num_layers": 4, "num_heads": 4, "head_dim": 32,
      "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1, "time_embed_dim": 128, "pos_embed": "none",
      "use_rope": True, "rope_grid": "slice", "qk_norm": True, "attention_backend": "auto", "remat_policy": "none",
      "pooled_text": False, "scan_unroll": 1,
  })
  c.update(overrides)
  return c


def diffusion_config() -> ml_collections.ConfigDict:
  """The `diffusion` section: CogVideoX's objective (v-prediction, zero terminal SNR) by default."""
  return ml_collections.ConfigDict({
      "prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
      "beta_end": 0.012, "num_train_timesteps": 1000, "snr_shift_scale": 1.0, "rescale_betas_zero_snr": True,
      "timestep_sampling": "uniform", "flow_shift": 1.0, "loss_weighting": "none", "text_dropout": 0.1,
      "image_fraction": 0.0,
      "condition": condition_config(),
  })


def condition_config() -> ml_collections.ConfigDict:
  """The `diffusion.condition` section: the frame-condition tasks a run trains (`vdm_jax.diffusion.conditioning`).

  Only t2v by default: the DiT then takes the latents alone, as every run before frame conditions did."""
  return ml_collections.ConfigDict({
      # {task: weight}, drawn per example (Open-Sora's condition_config); t2v doubles as condition dropout.
      "mix": dict(conditioning.DEFAULT_MIX),
      "extend_frames": 2,  # k: latent frames extend_forward keeps and extend_backward hints (1 + r (k - 1) pixels)
      "noise_sigma": 0.0,  # std of the noise on the condition channels (SVD's cond_aug); kept frames stay clean
  })


def is_conditioned(config) -> bool:
  """Whether the run's DiT takes frame conditions (its mix trains a task other than t2v)."""
  return conditioning.is_conditioned(config.diffusion.condition.mix)


def inference_defaults() -> ml_collections.ConfigDict:
  """The four sections together, as a config a run's `config.json` is read over."""
  return ml_collections.ConfigDict({"vae": vae_config(), "text": text_config(), "model": dit_config(),
                                    "diffusion": diffusion_config()})


def validate(config) -> None:
  """Raises vdm_jax.config.ConfigError naming the key for values of these sections that cannot be used."""
  d, v = config.diffusion, config.vae
  config_lib.check(bool(v.workdir) != bool(v.path), "vae.workdir",
                   "and vae.path: give exactly one (a VAE workdir or a CogVideoX VAE folder).")
  config_lib.check_choice(config, "vae.latent_norm", LATENT_NORMS)
  config_lib.check_choice(config, "diffusion.prediction_type", objectives.PREDICTION_TYPES)
  config_lib.check_choice(config, "diffusion.beta_schedule", schedules.BETA_SCHEDULES)
  config_lib.check_choice(config, "diffusion.timestep_sampling", timesteps.SAMPLERS)
  config_lib.check_choice(config, "diffusion.loss_weighting", objectives.WEIGHTINGS)
  config_lib.check(0.0 <= d.text_dropout < 1.0, "diffusion.text_dropout", "must be in [0, 1).")
  config_lib.check(0.0 <= d.image_fraction < 1.0, "diffusion.image_fraction", "must be in [0, 1).")
  config_lib.check(d.prediction_type != "flow" or d.timestep_sampling in ("uniform", "logit_normal"),
                   "diffusion.timestep_sampling", "must be 'uniform' or 'logit_normal' for flow.")
  config_lib.check_choice(config, "model.conditioning", dit.CONDITIONINGS)
  cond = d.condition
  try:
    conditioning.mix_probabilities(cond.mix)
  except ValueError as e:
    raise config_lib.ConfigError(f"Config key 'diffusion.condition.mix': {e}") from None
  config_lib.check(cond.extend_frames >= 1, "diffusion.condition.extend_frames", "must be >= 1.")
  config_lib.check(cond.noise_sigma >= 0, "diffusion.condition.noise_sigma", "must be >= 0.")
  text_lib.validate_config(config.text)
  if config.text.cached:
    config_lib.check(not config.text.trainable, "text.cached",
                     "needs text.trainable=False: a trained encoder's embeddings change every step.")


def make_schedule(diffusion: ml_collections.ConfigDict) -> schedules.NoiseSchedule:
  """The noise schedule a `diffusion` section describes."""
  return schedules.make_schedule(diffusion.beta_schedule, diffusion.num_train_timesteps, diffusion.beta_start,
                                 diffusion.beta_end, diffusion.snr_shift_scale, diffusion.rescale_betas_zero_snr)



def sample_kwargs(config: ml_collections.ConfigDict, **overrides) -> dict:
  """TextToVideoPipeline.generate's sampling arguments from a t2v config's `sample` section (runs written before
  `guidance_rescale` existed sample without it), with `overrides` on top."""
  s = config.sample
  kwargs = dict(sampler=s.sampler, num_steps=s.num_steps, guidance_scale=s.guidance_scale,
                use_dynamic_cfg=s.use_dynamic_cfg, guidance_rescale=s.get("guidance_rescale", 0.0),
                batch_size=s.batch_size)
  return {**kwargs, **overrides}
