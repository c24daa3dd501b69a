"""Schedules, timesteps and single DDIM / DPM++ steps against diffusers' CogVideoX schedulers (float64 where they
compute in float64; the tests that take the `diffusers` fixture), objectives' identities, and exactness of the
samplers on a point-mass oracle."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import objectives, samplers, schedules, timesteps

COGVIDEOX_2B = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, snr_shift_scale=3.0,
                    rescale_betas_zero_snr=True, set_alpha_to_one=True)
COGVIDEOX_5B = dict(COGVIDEOX_2B, snr_shift_scale=1.0)
CONFIGS = {"2b": COGVIDEOX_2B, "5b": COGVIDEOX_5B,
           "no_alpha_to_one": dict(COGVIDEOX_2B, set_alpha_to_one=False, rescale_betas_zero_snr=False)}
# diffusers computes these two in float32 (we compute all in float64): compared to 1e-6 absolute.
FP32_CONFIGS = {"linear": dict(COGVIDEOX_2B, beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
                "cosine": dict(COGVIDEOX_2B, beta_schedule="cosine", rescale_betas_zero_snr=False)}


def _reference(cls, config, **extra):
  kw = dict(config)
  kw["beta_schedule"] = {"cosine": "squaredcos_cap_v2"}.get(kw["beta_schedule"], kw["beta_schedule"])
  return cls(num_train_timesteps=1000, prediction_type="v_prediction", timestep_spacing="trailing",
             clip_sample=False, **kw, **extra)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_alphas_cumprod_match_diffusers_fp64(diffusers, name):
  ours = schedules.make_schedule(**CONFIGS[name])
  ref = _reference(diffusers.CogVideoXDDIMScheduler, CONFIGS[name])
  ref_abar = ref.alphas_cumprod.numpy()
  assert ref_abar.dtype == np.float64
  np.testing.assert_allclose(ours.alphas_cumprod, ref_abar, rtol=1e-12, atol=1e-15)
  assert ours.final_alpha_cumprod == pytest.approx(float(ref.final_alpha_cumprod), abs=1e-15)
  if CONFIGS[name]["rescale_betas_zero_snr"]:
    assert ours.alphas_cumprod[-1] == 0.0


@pytest.mark.parametrize("name", sorted(FP32_CONFIGS))
def test_float32_schedules_match_diffusers(diffusers, name):
  ours = schedules.make_schedule(**FP32_CONFIGS[name]).alphas_cumprod
  ref = _reference(diffusers.CogVideoXDDIMScheduler, FP32_CONFIGS[name]).alphas_cumprod.numpy()
  assert ref.dtype == np.float32
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 3, 10, 50, 999])
def test_inference_timesteps_match_diffusers(diffusers, spacing, steps):
  ref = diffusers.CogVideoXDDIMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
  ref.set_timesteps(steps)
  ours = schedules.inference_timesteps(steps, 1000, spacing, steps_offset=1 if spacing == "leading" else 0)
  np.testing.assert_array_equal(ours, ref.timesteps.numpy())
  if spacing == "trailing" and steps == 50:
    assert list(ours[:3]) == [999, 979, 959] and ours[-1] == 19


def _rand(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("step_index", [0, 1, 2])  # first (t=999, zero SNR for v), middle, last (prev < 0)
def test_ddim_single_step_matches_diffusers(diffusers, torch, prediction_type, step_index):
  cfg = COGVIDEOX_2B if prediction_type == "v_prediction" else dict(COGVIDEOX_2B, rescale_betas_zero_snr=False)
  ref = _reference(diffusers.CogVideoXDDIMScheduler, cfg)
  ref.config.prediction_type = prediction_type  # pylint: disable=protected-access
  ref.register_to_config(prediction_type=prediction_type)
  ref.set_timesteps(3)
  t = int(ref.timesteps[step_index])
  x, out = _rand((2, 3, 4, 4, 16), 0), _rand((2, 3, 4, 4, 16), 1)
  expected = ref.step(torch.from_numpy(out), t, torch.from_numpy(x)).prev_sample.numpy()
  ours_schedule = schedules.make_schedule(**cfg)
  abar_prev = ours_schedule.alpha_prev(schedules.prev_timestep(t, 3))
  got, _ = samplers.ddim_step(jnp.asarray(x), jnp.asarray(out), prediction_type, ours_schedule.alphas_cumprod[t],
                              abar_prev)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)


def test_dpm_sde_steps_match_diffusers_with_injected_noise(diffusers, torch, monkeypatch):
  """Three steps of CogVideoX's DPM++(2M) SDE: first order at t=999, second order, and the final step."""
  from diffusers.schedulers import scheduling_dpm_cogvideox  # pylint: disable=g-import-not-at-top
  ref = _reference(diffusers.CogVideoXDPMScheduler, COGVIDEOX_2B)
  ref.set_timesteps(3)
  ours = schedules.make_schedule(**COGVIDEOX_2B)
  shape = (1, 2, 4, 4, 16)
  draws = []

  def injected_randn(shape_, generator=None, device=None, dtype=None):
    del generator, device, dtype
    draws.append(_rand(shape_, 100 + len(draws)))
    return torch.from_numpy(draws[-1])

  monkeypatch.setattr(scheduling_dpm_cogvideox, "randn_tensor", injected_randn)
  x_ref = x_ours = _rand(shape, 0)
  old_ref, old_ours = None, None
  tsteps = [int(t) for t in ref.timesteps]
  for i, t in enumerate(tsteps):
    out = _rand(shape, 10 + i)
    back = tsteps[i - 1] if i > 0 else None
    n_before = len(draws)
    x_ref_t, old_ref = ref.step(torch.from_numpy(out), old_ref, t, back, torch.from_numpy(x_ref), return_dict=False)
    used = draws[-1]  # the reference's update uses its last draw (the second one on second-order steps)
    t_prev = schedules.prev_timestep(t, 3)
    c = samplers.dpm_coefficients(ours.alphas_cumprod[t], ours.alpha_prev(t_prev),
                                  ours.alphas_cumprod[back] if back is not None else None, stochastic=True,
                                  use_second_order=t_prev >= 0)
    assert c.second_order == (len(draws) - n_before == 2)
    x_ours, old_ours = samplers.dpm_step(jnp.asarray(x_ours), jnp.asarray(out), old_ours, "v_prediction",
                                         ours.alphas_cumprod[t], c, jnp.asarray(used))
    np.testing.assert_allclose(np.asarray(x_ours), x_ref_t.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(old_ours), old_ref.numpy(), rtol=1e-6, atol=1e-6)
    x_ref, x_ours = x_ref_t.numpy(), np.asarray(x_ours)
  # first step: one draw (first order); middle: two (second order); last (prev < 0): one, first order again
  assert len(draws) == 4


def test_dynamic_cfg_formula():
  assert samplers.dynamic_guidance_scale(6.0, 999, 50) == pytest.approx(
      1 + 6.0 * (1 - math.cos(math.pi * ((50 - 999) / 50) ** 5.0)) / 2)
  assert samplers.dynamic_guidance_scale(6.0, 50, 50) == pytest.approx(1.0)


@pytest.mark.parametrize("guidance_rescale", [0.0, 0.7, 1.0])
def test_guidance_rescale_matches_diffusers(diffusers, torch, guidance_rescale):
  from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
  rng = np.random.default_rng(3)
  uncond, cond = rng.normal(size=(2, 3, 5, 4, 4, 8)).astype(np.float32) * np.array([1.0, 1.3])[:, None, None, None,
                                                                                               None, None, None]
  guided = uncond + 4.0 * (cond - uncond)
  want = rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(cond), guidance_rescale).numpy()
  got = np.asarray(samplers.rescale_guidance(jnp.asarray(guided), jnp.asarray(cond), guidance_rescale))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32
  if guidance_rescale == 1.0:  # fully rescaled: each example has the conditional output's std
    np.testing.assert_allclose(got.reshape(3, -1).std(1), cond.reshape(3, -1).std(1), rtol=1e-5)


def test_guidance_rescale_changes_guided_samples_only():
  """With uncond != cond, rescale changes the sample; without guidance it is ignored; out of [0, 1] it fails."""
  schedule = schedules.make_schedule(**COGVIDEOX_2B)
  text = jnp.asarray([[-1.0], [2.0]])  # [uncond; cond] for a batch of one

  def model_fn(x, t, scale):
    return x * scale[:, None, None, None, None] + 0.1 * t[:, None, None, None, None] / 1000.0

  noise = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 2, 2, 4))
  run = lambda g, r: np.asarray(samplers.sample(model_fn, noise, schedule=schedule, num_steps=4, guidance_scale=g,
                                                guidance_rescale=r, progress=False,
                                                model_args=(text if g > 1 else text[1:],)))
  assert float(np.abs(run(4.0, 0.7) - run(4.0, 0.0)).max()) > 1e-3
  np.testing.assert_array_equal(run(1.0, 0.7), run(1.0, 0.0))
  with pytest.raises(ValueError, match="guidance_rescale"):
    run(4.0, 1.5)


def test_v_loss_equals_x0_loss_weighted_by_one_over_one_minus_abar():
  """CogVideoX trains with an x0 loss weighted 1 / (1 - abar); that is the v-prediction MSE."""
  rng = np.random.default_rng(0)
  x0, noise, v_pred = (jnp.asarray(rng.normal(size=(4, 8)), jnp.float32) for _ in range(3))
  abar = jnp.asarray([0.9, 0.5, 0.1, 0.01], jnp.float32)
  x_t = objectives.add_noise(x0, noise, abar)
  v_mse = objectives.mse_per_example(v_pred, objectives.velocity(x0, noise, abar))
  x0_pred = objectives.predict_x0("v_prediction", x_t, v_pred, abar)
  x0_mse = jnp.mean((x0_pred - x0) ** 2, axis=1) / (1 - abar)
  np.testing.assert_allclose(np.asarray(v_mse), np.asarray(x0_mse), rtol=1e-4)  # float32


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow"])
def test_predict_x0_inverts_the_target(prediction_type):
  rng = np.random.default_rng(1)
  x0, noise = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32), jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  level = jnp.asarray([0.8, 0.4, 0.2], jnp.float32)
  x_t = (objectives.flow_interpolate if prediction_type == "flow" else objectives.add_noise)(x0, noise, level)
  out = objectives.target(prediction_type, x0, noise, level)
  np.testing.assert_allclose(np.asarray(objectives.predict_x0(prediction_type, x_t, out, level)), np.asarray(x0),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "euler"])
def test_samplers_land_on_a_point_mass_with_an_exact_model(sampler):
  """For data concentrated at one point x*, the exact model output is known in closed form at every (x_t, t);
  every sampler must end at x* (with CFG on, since uncond == cond here)."""
  x_star = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 4, 4, 4)), jnp.float32)
  schedule = schedules.make_schedule(**COGVIDEOX_2B)
  abar = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
  target = x_star
  if sampler == "euler":
    def model_fn(x, t):
      tt = (t / 1000.0)[:, None, None, None, None]
      return (x - jnp.concatenate([target] * (x.shape[0] // target.shape[0]))) / jnp.maximum(tt, 1e-6)
    prediction_type = "flow"
  else:
    def model_fn(x, t):
      x0 = jnp.concatenate([target] * (x.shape[0] // target.shape[0]))
      a = abar[t][:, None, None, None, None]
      eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
      return jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0  # v
    prediction_type = "v_prediction"
  noise = jax.random.normal(jax.random.PRNGKey(0), x_star.shape)
  out = samplers.sample(model_fn, noise, schedule=schedule, sampler=sampler, num_steps=8,
                        prediction_type=prediction_type, guidance_scale=3.0, use_dynamic_cfg=sampler == "ddim",
                        rng=jax.random.PRNGKey(1), progress=False)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x_star), atol=2e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_2m_sde"])
def test_a_flow_model_with_a_discrete_time_sampler_is_refused_by_name(sampler):
  refused = f"sampler '{sampler}' needs a discrete-time model; .* samples with sampler 'euler'"
  with pytest.raises(ValueError, match=refused):
    samplers.sample(lambda x, t: x, jnp.zeros((1, 2, 4, 4, 4)), sampler=sampler, num_steps=2, prediction_type="flow",
                    progress=False)


def test_timestep_samplers():
  t = timesteps.explicit_uniform(jax.random.PRNGKey(0), 8, 1000, num_groups=4)
  groups = np.asarray(t).reshape(4, 2)
  for g in range(4):
    assert ((groups[g] >= g * 250) & (groups[g] < (g + 1) * 250)).all()
  u = np.asarray(timesteps.uniform(jax.random.PRNGKey(1), 4096, 1000))
  assert u.min() >= 0 and u.max() <= 999 and abs(u.mean() - 499.5) < 20
  f = np.asarray(timesteps.logit_normal(jax.random.PRNGKey(2), 4096, shift=3.0))
  assert (f > 0).all() and (f < 1).all() and f.mean() > 0.6  # shift 3 moves mass toward noise
  with pytest.raises(ValueError, match="not divisible by 3 timestep groups"):
    timesteps.explicit_uniform(jax.random.PRNGKey(0), 8, 1000, num_groups=3)
