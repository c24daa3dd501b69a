"""`t2v`: text-to-video latent diffusion: a DiT denoises VAE latents conditioned on text.

Data: each clip's VAE posterior moments come from a latent cache written once with the frozen VAE (a VAE workdir
or a CogVideoX folder), joined to the examples by index (`vdm_jax.train.t2v_data`); captions are tokenized in the
input pipeline, or a frozen encoder's embeddings are cached once per split (`text.cached`). The step:

  z = (mean + std eps - shift) * scale           the posterior sample (or its mean), normalised (`vae.latent_norm`,
                                                 vdm_jax.pipelines.latents)
  text: byte/T5 encoder (trained with the DiT, or frozen), captions dropped to "" with `diffusion.text_dropout`
  t ~ timestep sampler; (x_t, target, weight) = objectives.noised(z, eps, t); loss = weight * MSE(DiT(x_t), target)

A share `diffusion.image_fraction` of each batch trains as images (the first latent frame, which the causal VAE
encodes from the first frame alone). With frame conditions (`diffusion.condition.mix`), each clip draws a task
(image-to-video, extension, ...) whose given latent frames stay clean in x_t and out of the loss, and reach the DiT
on extra channels (`vdm_jax.diffusion.conditioning`). Evals and samples: `vdm_jax.train.t2v_eval`.
"""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import ml_collections

from vdm_jax import config as config_lib
from vdm_jax import text as text_lib
from vdm_jax.data import buckets
from vdm_jax.diffusion import conditioning, objectives, samplers, timesteps
from vdm_jax.models.dit import DiT
from vdm_jax.pipelines import t2v as t2v_pipeline
from vdm_jax.pipelines import t2v_config
from vdm_jax.pipelines.latents import LatentSpace
from vdm_jax.train import flops as flops_lib
from vdm_jax.train import registry, t2v_data, t2v_eval, t2v_packed


@registry.register("t2v")
class TextToVideo(registry.Experiment):
  """DiT on cached VAE latents of Captioned Shapes (or any captioned video dataset)."""

  @classmethod
  def default_config(cls):
    c = t2v_config.inference_defaults()
    c.sample = ml_collections.ConfigDict({
        "prompts": ("a red circle moving left", "a blue square moves up", "green triangle sliding down",
                    "a white circle standing still"),
        "sampler": "ddim", "num_steps": 25, "guidance_scale": 4.0, "use_dynamic_cfg": False, "seed": 0,
        "batch_size": 16,
        "guidance_rescale": 0.0,  # Lin et al.'s rescale of the guided output, in [0, 1] (0: off)
    })
    c.eval = ml_collections.ConfigDict({
        "split": "validation", "num_examples": 64, "batch_size": 16, "loss_timesteps": (100, 300, 500, 700, 900),
        "probe_prompts": 64, "probe_seed": 1000,  # probe videos use seeds the samples never used
    })
    c.evals = ml_collections.ConfigDict({"val_loss": {"type": "val_loss_grid"}, "probe": {"type": "probe"}})
    return c

  @classmethod
  def validate_config(cls, config):
    t2v_config.validate(config)
    t2v_packed.validate(config)
    config_lib.check_choice(config, "sample.sampler", samplers.SAMPLERS)
    config_lib.check(0.0 <= config.sample.guidance_rescale <= 1.0, "sample.guidance_rescale",
                     f"is {config.sample.guidance_rescale}; must be in [0, 1] (0: off).")
    if "tokenize(" in config.input.pp:
      config_lib.check(f"tokenize({config.text.max_length}" in config.input.pp.replace(" ", ""), "input.pp",
                       f"tokenizes to another length than text.max_length={config.text.max_length}; use "
                       f"tokenize({config.text.max_length}).")
    if conditioning.needs_hints(config.diffusion.condition.mix):
      config_lib.check("'hint_moments'" in config.input.pp or '"hint_moments"' in config.input.pp, "input.pp",
                       "must keep 'hint_moments' (the condition cache's hint latents) when diffusion.condition.mix "
                       f"has a task with hints ({list(conditioning.TAIL_TASKS + conditioning.BACKWARD_TASKS)}), "
                       "e.g. keep('latent_moments', 'hint_moments', 'tokens', 'caption').")
    if config.text.cached:
      config_lib.check("'text_embeds'" in config.input.pp or '"text_embeds"' in config.input.pp, "input.pp",
                       "must keep 'text_embeds' when text.cached=True, e.g. "
                       "\"decode_text('caption')|keep('latent_moments', 'text_embeds', 'caption')\".")

  def __init__(self, config, mesh, workdir=None):
    # With input.buckets, everything but the training input (latent statistics, evals, samples) reads the first
    # bucket; each bucket's own source is a view of this experiment on its input (`bucket_source`).
    super().__init__(buckets.one_size(config), mesh, workdir)
    config = self.config
    self._views = {}
    self.text = text_lib.build(config.text)
    self.schedule = t2v_config.make_schedule(config.diffusion)
    self._alphas_cumprod = jnp.asarray(self.schedule.alphas_cumprod, jnp.float32)
    self.space = LatentSpace(config, workdir, ensure_cache=lambda split, directory: t2v_data.write_latent_cache(
        self, split, directory))
    self._text_caches = {}
    self._frozen_text = None
    self.conditioned = t2v_config.is_conditioned(config)

  # --- Inputs: the latent and text-embedding caches joined to the examples.

  def text_cache(self, split: str):
    """The split's text-embedding cache (`text.cached`), written first if missing."""
    if split not in self._text_caches:
      self._text_caches[split] = t2v_data.text_cache(self, split)
    return self._text_caches[split]

  def data_source(self, split):
    return t2v_data.joined_source(self, split)

  def bucket_source(self, input_config, split):
    """One bucket's examples joined to their own latent (and condition) caches, written with the same frozen VAE;
    the latents are normalised with the first bucket's statistics, as every bucket's are."""
    name = input_config.builder_config
    view = self if name == self.config.input.builder_config else self._views.get(name)
    if view is None:
      view = copy.copy(self)
      view.config = self.config.copy_and_resolve_references()
      with view.config.unlocked():
        view.config.input = input_config
      view.space = LatentSpace(view.config, self.workdir, ensure_cache=lambda s, d: t2v_data.write_latent_cache(
          view, s, d))
      view._text_caches = {}  # pylint: disable=protected-access
      self._views[name] = view
    source = view.data_source(split)
    frames = view.space.latent_shape()[0]
    if self.conditioned and frames <= self.config.diffusion.condition.extend_frames:
      raise config_lib.ConfigError(
          f"Config key 'input.buckets': bucket {name} has {frames} latent frames, no more than "
          f"diffusion.condition.extend_frames={self.config.diffusion.condition.extend_frames}; frame conditions need "
          "longer clips (train images and short clips without diffusion.condition.mix, or drop the bucket).")
    return source

  # --- Model.

  def dit(self) -> DiT:
    return t2v_pipeline.build_dit(self.config, self.space.latent_shape(), self.text)

  def init(self, rng, batch):
    dit_rng, text_rng = jax.random.split(rng)
    t, h, w, c = self.space.latent_shape()
    b = 1
    c += conditioning.extra_channels(c) if self.conditioned else 0
    params = {"dit": self.dit().init(dit_rng, jnp.zeros((b, t, h, w, c)), jnp.zeros((b,), jnp.int32),
                                     jnp.zeros((b, self.text.max_length, self.text.d_model)))["params"]}
    if self.text.trainable:
      ids = jnp.zeros((1, self.text.max_length), jnp.int32)
      params["text"] = self.text.module.init(text_rng, ids)["params"]
    return params

  def frozen_params(self, abstract=False):
    """{'text': the frozen encoder's params}, or with `text.cached` only {'empty_text': [L, D]}, the cached
    embedding of "" that dropped captions get; {} for a trained encoder."""
    if self.text.trainable:
      return {}
    if self.config.text.cached:
      if abstract:
        return {"empty_text": jax.ShapeDtypeStruct((self.text.max_length, self.text.d_model), self.text.module.dtype)}
      return {"empty_text": self.text_cache(self.config.input.split).empty_prompt()["text_embeds"]}
    if abstract:
      ids = jnp.zeros((1, self.text.max_length), jnp.int32)
      return {"text": jax.eval_shape(lambda: self.text.module.init(jax.random.PRNGKey(0), ids)["params"])}
    return {"text": self.encoder_params()}

  def encoder_params(self):
    """The frozen encoder's params (its weights, or a fixed random init), loaded once."""
    if self._frozen_text is None:
      self._frozen_text = t2v_pipeline.frozen_text_params(self.config, self.text)
    return self._frozen_text

  def text_params(self, params):
    return params["text"] if self.text.trainable else self.encoder_params()

  def text_embeds(self, text_params, tokens: jax.Array) -> jax.Array:
    mask = (tokens != 0).astype(jnp.int32)
    return self.text.apply(text_params, tokens, mask).astype(jnp.float32)

  # --- Loss.

  def latents(self, moments: jax.Array, rng: jax.Array | None) -> jax.Array:
    """Normalised latents from posterior moments [..., 2C]: a posterior sample (`vae.sample_posterior` and an rng)
    or the mean."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    z = mean
    if rng is not None and self.config.vae.sample_posterior:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.space.normalize(z)

  @property
  def alphas_cumprod(self) -> jax.Array:
    return self._alphas_cumprod

  def times(self, rng: jax.Array, b: int) -> jax.Array:
    """Training times [B] by the configured sampler (explicit-uniform groups: one per data-parallel shard)."""
    return self._times(rng, b, self.mesh.shape["data"] * self.mesh.shape["fsdp"])

  def _times(self, rng: jax.Array, b: int, num_groups: int) -> jax.Array:
    """Training times [B]: flow t in (0, 1), else int32 timesteps."""
    d = self.config.diffusion
    if d.prediction_type == "flow":
      return (timesteps.logit_normal(rng, b, shift=d.flow_shift) if d.timestep_sampling == "logit_normal"
              else jax.random.uniform(rng, (b,)))
    if d.timestep_sampling == "explicit_uniform" and b % num_groups == 0:
      return timesteps.explicit_uniform(rng, b, d.num_train_timesteps, num_groups)
    return timesteps.uniform(rng, b, d.num_train_timesteps)

  def mse_at(self, dit_params, z, noise, t, embeds, condition: conditioning.Condition | None = None,
             channels: conditioning.Condition | None = None) -> tuple[jax.Array, jax.Array]:
    """(MSE [B] of the DiT against its target, the loss weight [B]) on latents z [B, T', h, w, C] noised with
    `noise` at times t [B], with text embeddings [B, L, D]. Shared by the loss and the validation grid.

    A conditioned run's DiT sees `condition`'s kept frames clean in x_t and `channels` (the condition, possibly
    noise-augmented; default `condition`) on its condition channels, and the MSE skips the kept frames; no
    condition: text-to-video."""
    d = self.config.diffusion
    x_t, model_t, target, weight = objectives.noised(d.prediction_type, z, noise, t, self._alphas_cumprod,
                                                     d.loss_weighting)
    if not self.conditioned:
      out = self.dit().apply({"params": dit_params}, x_t, model_t, embeds)
      return objectives.mse_per_example(out, target), weight
    condition = condition if condition is not None else conditioning.empty(z.shape, z.dtype)
    x_t = conditioning.apply(x_t, condition)
    out = self.dit().apply({"params": dit_params}, conditioning.model_input(x_t, channels or condition), model_t,
                           embeds)
    return conditioning.masked_mse(out, target, conditioning.generated_fraction(condition.keep)), weight

  def denoise_loss(self, dit_params, z, embeds, rng, condition: conditioning.Condition | None = None) -> jax.Array:
    """Per-example weighted MSE [B] at noise and times drawn from `rng` (times by the configured sampler), with
    the condition's channels noise-augmented by `diffusion.condition.noise_sigma`."""
    t_rng, n_rng, a_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(n_rng, z.shape)
    t = self.times(t_rng, z.shape[0])
    channels = None
    if condition is not None:
      channels = conditioning.augment(a_rng, condition, self.config.diffusion.condition.noise_sigma)
    mse, weight = self.mse_at(dit_params, z, noise, t, embeds, condition, channels)
    return weight * mse

  def draw_condition(self, z: jax.Array, rng: jax.Array, hint_moments: jax.Array | None = None
                     ) -> tuple[conditioning.Condition | None, jax.Array | None]:
    """(A frame condition per clip of z [B, T', ...] drawn from the mix, the task index [B]); (None, None) for a
    text-to-video run. Tasks with hints read them from `hint_moments` [B, 1 + k, h, w, 2C] (their means)."""
    if not self.conditioned:
      return None, None
    cond = self.config.diffusion.condition
    tasks, probabilities = conditioning.mix_probabilities(cond.mix)
    hints = None if hint_moments is None else self.latents(hint_moments, None)
    return conditioning.draw(rng, z, tasks, probabilities, cond.extend_frames, hints)

  def batch_embeds(self, params, batch, frozen, drop_rng) -> jax.Array:
    """Text embeddings [B, L, D] of a batch's prompts (cached, or encoded by the run's encoder), each replaced by
    the empty prompt's with probability `diffusion.text_dropout` (for classifier-free guidance)."""
    d = self.config.diffusion
    b = (batch["text_embeds"] if self.config.text.cached else batch["tokens"]).shape[0]
    drop = jax.random.bernoulli(drop_rng, d.text_dropout, (b, 1)) if d.text_dropout > 0 else None
    if self.config.text.cached:
      embeds = batch["text_embeds"].astype(jnp.float32)
      if drop is not None:
        embeds = jnp.where(drop[:, :, None], frozen["empty_text"].astype(jnp.float32)[None], embeds)
    else:
      tokens = batch["tokens"]
      if drop is not None:
        tokens = jnp.where(drop, jnp.asarray(self.text.tokenize([""])[0][0])[None], tokens)
      embeds = self.text_embeds(params["text"] if self.text.trainable else frozen["text"], tokens)
    return embeds if self.text.trainable else jax.lax.stop_gradient(embeds)

  def loss(self, params, batch, rng, frozen, step):
    if buckets.packed(self.config.input):
      return t2v_packed.loss(self, params, batch, rng, frozen)
    d = self.config.diffusion
    z_rng, drop_rng, video_rng, image_rng = jax.random.split(rng, 4)
    cond_rng = jax.random.fold_in(rng, 4)  # apart from the split, so text-to-video runs draw as they always did
    z = self.latents(batch["latent_moments"], z_rng)
    embeds = self.batch_embeds(params, batch, frozen, drop_rng)
    num_images = int(round(d.image_fraction * z.shape[0]))
    losses = []
    if num_images:
      losses.append(self.denoise_loss(params["dit"], z[:num_images, :1], embeds[:num_images], image_rng))
    task = None
    if num_images < z.shape[0]:
      hints = batch["hint_moments"][num_images:] if "hint_moments" in batch else None
      condition, task = self.draw_condition(z[num_images:], cond_rng, hints)
      losses.append(self.denoise_loss(params["dit"], z[num_images:], embeds[num_images:], video_rng, condition))
    loss = jnp.mean(jnp.concatenate(losses))
    metrics = {"diffusion_loss": loss}
    if num_images:
      metrics["image_loss"] = jnp.mean(losses[0])
    if task is not None:
      # Per-task losses (NaN-free: a task absent from the batch reports 0 with weight 0).
      tasks = conditioning.mix_probabilities(d.condition.mix)[0]
      for i, name in enumerate(tasks):
        hit = (task == i).astype(jnp.float32)
        metrics[f"loss_{name}"] = jnp.sum(hit * losses[-1]) / jnp.maximum(jnp.sum(hit), 1.0)
    return loss, metrics

  def batch_shapes(self, batch_size: int):
    t, h, w, c = self.space.latent_shape()
    shapes = {"latent_moments": jax.ShapeDtypeStruct((batch_size, t, h, w, 2 * c), jnp.float32)}
    if conditioning.needs_hints(self.config.diffusion.condition.mix):
      k = self.config.diffusion.condition.extend_frames
      shapes["hint_moments"] = jax.ShapeDtypeStruct((batch_size, 1 + k, h, w, 2 * c), jnp.float32)
    if self.config.text.cached:
      shapes["text_embeds"] = jax.ShapeDtypeStruct((batch_size, self.text.max_length, self.text.d_model),
                                                   self.text.module.dtype)
    else:
      shapes["tokens"] = jax.ShapeDtypeStruct((batch_size, self.text.max_length), jnp.int32)
    return shapes

  def flops_per_step(self, batch_shapes) -> float:
    """Model FLOPs of one training step over the global batch (forward + backward = 3x forward; recomputation
    from remat is not model work and is not counted): the DiT on its joint (or video + cross) sequence, plus the
    text encoder (3x when trained, 1x frozen, 0 when its embeddings are cached)."""
    if buckets.packed(self.config.input):  # each clip's own work (attention across a row's clips is masked out)
      return sum(self._flops(shapes["latent_moments"]) for shapes in buckets.split_packed(batch_shapes).values())
    return self._flops(batch_shapes["latent_moments"])

  def _flops(self, moments) -> float:
    """`flops_per_step` of a batch of latent moments of one shape."""
    dit = self.dit()
    b = moments.shape[0]
    t, h, w, _ = moments.shape[1:]
    video = (t // dit.patch_size_t) * (h // dit.patch_size) * (w // dit.patch_size)
    text = self.text.max_length
    width, hidden = dit.num_heads * dit.head_dim, int(dit.num_heads * dit.head_dim * dit.mlp_ratio)
    if dit.conditioning == "joint":
      forward = flops_lib.transformer_flops(video + text, width, hidden, dit.num_layers)
    else:
      forward = flops_lib.transformer_flops(video, width, hidden, dit.num_layers, context=text)
    m = self.text.module
    text_forward = flops_lib.transformer_flops(text, m.d_model, int(1.5 * m.d_ff), m.num_layers)
    text_passes = 3 if self.text.trainable else (0 if self.config.text.cached else 1)
    return b * (3 * forward + text_passes * text_forward)

  # --- Evals and samples (vdm_jax.train.t2v_eval).

  def pipeline(self, params) -> t2v_pipeline.TextToVideoPipeline:
    """A TextToVideoPipeline over these params (host-side generation), sharing this run's VAE and encoder."""
    return t2v_pipeline.TextToVideoPipeline.from_config(self.config, params, self.workdir, space=self.space,
                                                        text=self.text, text_params=self.text_params(params))

  def loss_at(self, params, batch, t, rng):
    return t2v_eval.loss_at(self, params, batch, t, rng)

  def generate_videos(self, params, prompts, seeds):
    return t2v_eval.generate(self, params, prompts, seeds)

  def reconstruct_videos(self, params, video):
    return t2v_eval.reconstruct(self, params, video)

  def write_samples(self, params, step, out_dir):
    t2v_eval.write_samples(self, params, out_dir)
