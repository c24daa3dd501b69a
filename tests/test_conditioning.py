"""Frame conditions (vdm_jax.diffusion.conditioning): task masks, the per-example mix, kept frames that every sampler
returns bit for bit, a loss that ignores them, and a conditioned text-to-video run end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.diffusion import conditioning, samplers
from vdm_jax.pipelines import t2v_config


def test_keep_masks_and_frame_counts():
  assert conditioning.keep_mask("t2v", 5).tolist() == [False] * 5
  assert conditioning.keep_mask("i2v_head", 5).tolist() == [True, False, False, False, False]
  assert conditioning.keep_mask("extend_forward", 5, 3).tolist() == [True, True, True, False, False]
  assert conditioning.keep_mask("interpolate", 5).tolist() == [True, False, False, False, False]
  assert not conditioning.keep_mask("i2v_tail", 5).any() and not conditioning.keep_mask("extend_backward", 5).any()
  assert conditioning.latent_frames(17, 4) == 5 and conditioning.pixel_frames(3, 4) == 9
  assert conditioning.latent_frames(1, 4) == 1
  with pytest.raises(ValueError, match=r"1 \+ 4 k frames"):
    conditioning.latent_frames(8, 4)
  with pytest.raises(ValueError, match=r"extend_frames=5: must be in \[1, 4\]"):
    conditioning.keep_mask("extend_forward", 5, 5)
  with pytest.raises(ValueError, match="Unknown condition task 'i2v_middle'"):
    conditioning.keep_mask("i2v_middle", 5)
  with pytest.raises(ValueError, match=r"Unknown condition tasks \['bogus'\]"):
    conditioning.mix_probabilities({"t2v": 1.0, "bogus": 1.0})
  with pytest.raises(ValueError, match="at least one task"):
    conditioning.mix_probabilities({"t2v": 0.0})
  assert not conditioning.is_conditioned({"t2v": 1.0, "i2v_head": 0.0})
  assert conditioning.is_conditioned({"t2v": 1.0, "i2v_head": 0.5})
  assert not conditioning.needs_hints({"t2v": 1.0, "i2v_head": 0.5, "i2v_tail": 0.0})
  assert conditioning.needs_hints({"t2v": 1.0, "extend_backward": 0.5})
  video = np.ones((2, 3, 4, 4, 3), np.float32)
  np.testing.assert_array_equal(conditioning.hint_input(video, 4)[:, :4], 0.0)
  np.testing.assert_array_equal(conditioning.hint_input(video, 4)[:, 4:], video)


def test_draw_follows_the_mix_and_gives_the_clips_own_latents():
  tasks, probabilities = conditioning.mix_probabilities({"t2v": 1.0, "i2v_head": 5.0, "extend_forward": 2.0})
  latents = jax.random.normal(jax.random.PRNGKey(1), (4000, 5, 2, 2, 3))
  condition, task = jax.jit(lambda r, z: conditioning.draw(r, z, tasks, probabilities, 2))(jax.random.PRNGKey(0),
                                                                                            latents)
  counts = np.bincount(np.asarray(task), minlength=3) / 4000
  np.testing.assert_allclose(counts, [1 / 8, 5 / 8, 2 / 8], atol=0.03)  # 4000 draws: std < 0.008
  table = np.stack([conditioning.keep_mask(t, 5, 2) for t in tasks])
  np.testing.assert_array_equal(np.asarray(condition.keep), table[np.asarray(task)])
  np.testing.assert_array_equal(np.asarray(condition.given), np.asarray(condition.keep))
  keep = np.asarray(condition.keep)[:, :, None, None, None]
  np.testing.assert_array_equal(np.asarray(condition.latents), np.where(keep, np.asarray(latents), 0.0))


def test_draw_places_the_hints_of_tail_tasks():
  mix = {"t2v": 1.0, "i2v_head": 1.0, "extend_forward": 1.0, "i2v_tail": 1.0, "interpolate": 1.0,
         "extend_backward": 1.0}
  tasks, probabilities = conditioning.mix_probabilities(mix)
  latents = jax.random.normal(jax.random.PRNGKey(1), (600, 5, 1, 1, 2))
  hints = jax.random.normal(jax.random.PRNGKey(2), (600, 3, 1, 1, 2)) + 10.0  # tail, then k = 2 backward
  condition, task = conditioning.draw(jax.random.PRNGKey(0), latents, tasks, probabilities, 2, hints)
  z, h = np.asarray(latents), np.asarray(hints)
  expect = {  # task: (keep, given, what the condition holds at each frame: 'z' clip, 't' tail, 'b<i>', '0')
      "t2v": ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0], "00000"),
      "i2v_head": ([1, 0, 0, 0, 0], [1, 0, 0, 0, 0], "z0000"),
      "extend_forward": ([1, 1, 0, 0, 0], [1, 1, 0, 0, 0], "zz000"),
      "i2v_tail": ([0, 0, 0, 0, 0], [0, 0, 0, 0, 1], "0000t"),
      "interpolate": ([1, 0, 0, 0, 0], [1, 0, 0, 0, 1], "z000t"),
      "extend_backward": ([0, 0, 0, 0, 0], [0, 0, 0, 1, 1], "000bc"),
  }
  for i in range(600):
    keep, given, holds = expect[tasks[int(task[i])]]
    assert np.asarray(condition.keep[i]).tolist() == [bool(x) for x in keep]
    assert np.asarray(condition.given[i]).tolist() == [bool(x) for x in given]
    source = {"z": lambda f: z[i, f], "t": lambda f: h[i, 0], "b": lambda f: h[i, 1], "c": lambda f: h[i, 2],
              "0": lambda f: np.zeros_like(z[i, f])}
    for f, what in enumerate(holds):
      np.testing.assert_array_equal(np.asarray(condition.latents[i, f]), source[what](f))
  assert len(set(np.asarray(task).tolist())) == 6
  with pytest.raises(ValueError, match=r"need the clips' hint latents"):
    conditioning.draw(jax.random.PRNGKey(0), latents, tasks, probabilities, 2, None)


def test_model_input_layout_and_augmentation():
  x = jnp.full((1, 3, 2, 2, 2), 7.0)
  given = jnp.arange(24, dtype=jnp.float32).reshape(1, 3, 2, 2, 2)
  condition = conditioning.from_keep(given, jnp.asarray([True, False, False]))
  inp = np.asarray(conditioning.model_input(x, condition))
  assert inp.shape == (1, 3, 2, 2, 6)
  np.testing.assert_array_equal(inp[..., :2], 7.0)
  np.testing.assert_array_equal(inp[0, 0, ..., 2:4], np.asarray(given)[0, 0])
  np.testing.assert_array_equal(inp[0, 1:, ..., 2:4], 0.0)
  np.testing.assert_array_equal(inp[0, :, 0, 0, 4:], [[1, 1], [0, 0], [0, 0]])
  noisy = conditioning.augment(jax.random.PRNGKey(0), condition, 0.5)
  changed = np.asarray(noisy.latents) != np.asarray(condition.latents)
  assert changed[0, 0].all() and not changed[0, 1:].any()  # noise only where a frame is given
  np.testing.assert_array_equal(np.asarray(conditioning.apply(x, noisy))[0, 1:], 7.0)
  assert conditioning.augment(jax.random.PRNGKey(0), condition, 0.0) is condition


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
@pytest.mark.parametrize("guidance", ["none", "text", "text_and_image"])
def test_kept_frames_are_bit_identical_after_every_step(sampler, guidance):
  b, shape = 2, (2, 4, 3, 3, 2)
  rng = np.random.default_rng(0)
  given = jnp.asarray(rng.normal(size=shape), jnp.float32)
  keep = conditioning.from_keep(given, jnp.asarray([[True, True, False, False], [True, False, False, False]]))
  weights = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
  seen = []

  def model_fn(x, t, w, condition):
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), x, ordered=True)
    out = jnp.tanh(jnp.einsum("bthwc,cd->bthwd", conditioning.model_input(x, condition), w))
    return out + (t.astype(jnp.float32) / 1000.0)[:, None, None, None, None]

  branches = {"none": [keep], "text": [keep, keep], "text_and_image": [conditioning.empty(shape), keep, keep]}[guidance]
  condition = jax.tree.map(lambda *xs: jnp.concatenate(xs), *branches)
  noise = jnp.asarray(rng.normal(size=shape), jnp.float32)
  out = samplers.sample(model_fn, noise, schedule=t2v_config.make_schedule(t2v_config.diffusion_config()),
                        sampler=sampler, num_steps=4, guidance_scale=1.0 if guidance == "none" else 3.0,
                        image_guidance_scale=1.5 if guidance == "text_and_image" else None,
                        rng=jax.random.PRNGKey(0), model_args=(weights, condition), keep=keep, progress=False)
  jax.effects_barrier()  # the callbacks run asynchronously
  assert len(seen) == 4
  mask = np.asarray(keep.keep)
  states = [s[i * b:(i + 1) * b] for s in seen for i in range(len(branches))] + [np.asarray(out)]
  for state in states:  # the input of every step (the previous step's output) and the last step's output
    np.testing.assert_array_equal(state[mask], np.asarray(given)[mask])
  assert not np.array_equal(np.asarray(out)[~mask], np.asarray(noise)[~mask])  # the other frames were sampled


def test_image_guidance_needs_a_condition():
  with pytest.raises(ValueError, match="image_guidance_scale guides a frame condition"):
    samplers.sample(lambda x, t: x, jnp.zeros((1, 2, 1, 1, 1)), schedule=t2v_config.make_schedule(
        t2v_config.diffusion_config()), image_guidance_scale=2.0, progress=False)


def test_masked_mse_counts_only_generated_frames():
  out = jnp.zeros((2, 3, 1, 1, 1))
  target = jnp.asarray([1.0, 2.0, 3.0])[None, :, None, None, None] * jnp.ones((2, 1, 1, 1, 1))
  keep = jnp.asarray([[True, False, False], [False, False, False]])
  np.testing.assert_allclose(conditioning.masked_mse(out, target, conditioning.generated_fraction(keep)),
                             [(4 + 9) / 2, (1 + 4 + 9) / 3], rtol=1e-6)


def test_sdedit_starts_from_the_noised_input_and_an_oracle_returns_it():
  """With init_latents, the first step sees the input noised to the start timestep; a model that predicts the input
  as x0 gives it back (DDIM, DPM++, and Euler with the matching velocity); strength 1 ignores the input."""
  schedule = t2v_config.make_schedule(t2v_config.diffusion_config())
  init = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 2, 2, 4)), jnp.float32)
  noise = jnp.asarray(np.random.default_rng(1).normal(size=init.shape), jnp.float32)
  seen = []

  def oracle(x, t):
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), x, ordered=True)
    return jnp.broadcast_to(init, x.shape)

  for sampler in ("ddim", "dpmpp_2m"):
    seen.clear()
    out = samplers.sample(oracle, noise, schedule=schedule, sampler=sampler, num_steps=10, prediction_type="sample",
                          init_latents=init, strength=0.3, progress=False)
    jax.effects_barrier()
    assert len(seen) == 3
    abar = schedule.alphas_cumprod[int(samplers.inference_timesteps(10, 1000, "trailing")[7])]
    np.testing.assert_allclose(seen[0], np.sqrt(abar) * init + np.sqrt(1 - abar) * noise, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out), np.asarray(init), atol=1e-4)
  seen.clear()
  flow = lambda x, t: (x - init) / (t / 1000.0)[:, None, None, None, None]  # v = eps - x0 = (x_t - x0) / t
  out = samplers.sample(flow, noise, sampler="euler", num_steps=10, init_latents=init, strength=0.5, progress=False)
  np.testing.assert_allclose(np.asarray(out), np.asarray(init), atol=1e-4)
  full = samplers.sample(oracle, noise, schedule=schedule, num_steps=4, prediction_type="sample", progress=False)
  again = samplers.sample(oracle, noise, schedule=schedule, num_steps=4, prediction_type="sample", init_latents=init,
                          strength=1.0, progress=False)
  np.testing.assert_array_equal(np.asarray(full), np.asarray(again))
  with pytest.raises(ValueError, match=r"strength=0.0; allowed: \(0, 1\]"):
    samplers.sample(oracle, noise, schedule=schedule, init_latents=init, strength=0.0, progress=False)
  with pytest.raises(ValueError, match="runs none of the 4 steps"):
    samplers.sample(oracle, noise, schedule=schedule, num_steps=4, init_latents=init, strength=0.1, progress=False)


def _conditioned_config(data_dir, vae_dir):
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import t2v as t2v_recipes  # pylint: disable=g-import-not-at-top
  c = t2v_recipes.get_config("runlocal,conditions=all")
  assert conditioning.needs_hints(c.diffusion.condition.mix)
  c.input.data_dir, c.vae.workdir = data_dir, vae_dir
  c.train.update(steps=2, checkpoint_every=2, eval_every=0)
  c.diffusion.condition.mix = {task: 1.0 for task in conditioning.TASKS}
  c.diffusion.condition.extend_frames = 2
  c.diffusion.condition.noise_sigma = 0.05
  return c


@pytest.mark.slow(45)
def test_the_loss_ignores_kept_frames(shapes_data_dir, vae_workdir):
  """Changing the noise (hence x_t and the target) at kept frames leaves the MSE bit-identical; changing it at a
  generated frame does not."""
  from vdm_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import registry  # pylint: disable=g-import-not-at-top
  config = _conditioned_config(shapes_data_dir, vae_workdir)
  experiment = registry.get("t2v")(config, mesh_lib.create_mesh({"data": 1}, jax.devices()[:1]))
  t, h, w, c = experiment.space.latent_shape()
  params = experiment.init(jax.random.PRNGKey(0), None)
  # adaLN-Zero starts as zero output: perturb every parameter so the DiT is a non-trivial function of its inputs
  leaves, tree = jax.tree.flatten(params["dit"])
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  dit_params = tree.unflatten([x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  z = jax.random.normal(jax.random.PRNGKey(2), (2, t, h, w, c))
  noise = jax.random.normal(jax.random.PRNGKey(3), z.shape)
  embeds = jax.random.normal(jax.random.PRNGKey(4), (2, config.text.max_length, config.text.d_model))
  times = jnp.asarray([300, 700], jnp.int32)
  condition = conditioning.from_keep(z, jnp.asarray([True, True] + [False] * (t - 2)))
  mse = jax.jit(lambda n: experiment.mse_at(dit_params, z, n, times, embeds, condition)[0])
  base = np.asarray(mse(noise))
  other = noise.at[:, :2].set(jax.random.normal(jax.random.PRNGKey(5), noise[:, :2].shape))
  np.testing.assert_array_equal(np.asarray(mse(other)), base)
  changed = noise.at[:, 2].add(1.0)
  assert (np.abs(np.asarray(mse(changed)) - base) > 1e-6).all()


@pytest.fixture(scope="module")
def conditioned_run(shapes_data_dir, vae_workdir, tmp_path_factory):
  """A 2-step t2v run trained on the mix of every task."""
  from vdm_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("conditioned") / "run")
  loop.train(_conditioned_config(shapes_data_dir, vae_workdir), workdir)
  return workdir


@pytest.mark.slow(170)
def test_a_conditioned_run_trains_and_samples_from_frames(conditioned_run):
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from vdm_jax.pipelines.t2v import TextToVideoPipeline  # pylint: disable=g-import-not-at-top
  workdir = conditioned_run
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [m for m in lines if "loss" in m and "step" in m]
  assert train_lines and {f"loss_{task}" for task in conditioning.TASKS} <= set(train_lines[-1])

  pipe = TextToVideoPipeline.from_workdir(workdir)
  assert pipe.conditioned and pipe.dit.in_channels == 2 * pipe.latent_shape[-1] + 2
  t, h, w, _ = pipe.latent_shape
  s, r = pipe.vae.spatial_compression, pipe.temporal_ratio
  frames = np.random.default_rng(0).integers(0, 256, (2, 1 + r, h * s, w * s, 3), np.uint8)
  prompts, seeds = ["a red circle moving left", "a blue square moves up"], [0, 1]
  for given, guidance in ((frames[:, :1], {}), (frames, {"image_guidance_scale": 1.5})):
    latents = pipe.generate(prompts, seeds, num_steps=2, return_latents=True, frames=given, **guidance)
    k = conditioning.latent_frames(given.shape[1], r)
    np.testing.assert_array_equal(latents[:, :k], np.asarray(pipe.encode_frames(given)))
  video = pipe.generate(prompts, seeds, num_steps=2, frames=frames[:, :1])
  assert video.shape == (2, conditioning.pixel_frames(t, r), h * s, w * s, 3) and video.dtype == np.uint8
  with pytest.raises(ValueError, match="fill all"):
    pipe.generate(prompts[:1], seeds[:1], frames=np.zeros((1, conditioning.pixel_frames(t, r), h * s, w * s, 3),
                                                           np.uint8))
  with pytest.raises(ValueError, match=r"expected uint8 \[N, F, "):
    pipe.generate(prompts[:1], seeds[:1], frames=np.zeros((1, 1, h * s + 1, w * s, 3), np.uint8))

  # hints: r zero frames then the given ones encode like a whole video of zeros ending with them (per-frame
  # GroupNorm, causal convolutions: a zero prefix computes the same values whatever its length)
  pixels = frames.astype(np.float32) / 127.5 - 1.0
  whole = np.concatenate([np.zeros((2, conditioning.pixel_frames(t, r) - 3, h * s, w * s, 3), np.float32), pixels], 1)
  np.testing.assert_allclose(np.asarray(pipe._encode(pipe.vae_params, jnp.asarray(conditioning.hint_input(pixels, r))))[:, 1:],  # pylint: disable=protected-access
                             np.asarray(pipe._encode(pipe.vae_params, jnp.asarray(whole)))[:, -2:], atol=1e-5)  # pylint: disable=protected-access
  # the last frames as hints: the kept head stays exact, the hints are the zero-prefixed encoding's last frames
  for last in (frames[:, -1:], frames):
    latents = pipe.generate(prompts, seeds, num_steps=2, return_latents=True, frames=frames[:, :1], last_frames=last)
    np.testing.assert_array_equal(latents[:, :1], np.asarray(pipe.encode_frames(frames[:, :1])))
  # extension: any length, beginning (or ending) with the given frames; SDEdit: the model's length
  window = conditioning.pixel_frames(t, r)
  longer = pipe.extend(prompts, seeds, frames, 2 * window + 1, num_steps=2)
  assert longer.shape == (2, 2 * window + 1, h * s, w * s, 3)
  np.testing.assert_array_equal(longer[:, :frames.shape[1]], frames)
  earlier = pipe.extend(prompts, seeds, frames, window + 2, num_steps=2, backward=True)
  assert earlier.shape == (2, window + 2, h * s, w * s, 3)
  np.testing.assert_array_equal(earlier[:, -frames.shape[1]:], frames)
  edited = pipe.generate(prompts, seeds, num_steps=4, videos=longer[:, :window], strength=0.5)
  assert edited.shape == (2, window, h * s, w * s, 3)
  with pytest.raises(ValueError, match="shorter than the 3 given frames"):
    pipe.extend(prompts, seeds, frames, 2, num_steps=2)


@pytest.mark.slow(40)
def test_sample_command_takes_images_and_videos(conditioned_run, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), np.uint8)  # runlocal: 32x32, r = 2
  Image.fromarray(frames[0]).save(tmp_path / "first.png")
  np.save(tmp_path / "clip.npy", frames)
  base = [sys.executable, "-m", "experiments.sample", f"--workdir={conditioned_run}", "--prompt", "a red circle",
          "--prompt", "a blue square", "--num_steps=2"]
  Image.fromarray(frames[-1]).save(tmp_path / "last.png")
  runs = {"interpolate": ["--image", str(tmp_path / "first.png"), "--last_image", str(tmp_path / "last.png")],
          "extend_backward": ["--video", str(tmp_path / "clip.npy"), "--task", "extend_backward", "--num_frames",
                              "13"]}
  for task, extra in runs.items():
    out = str(tmp_path / task)
    result = subprocess.run(base + extra + [f"--out={out}"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(out, "samples.jsonl"))]
    assert [(r["prompt"], r["task"]) for r in rows] == [("a red circle", task), ("a blue square", task)]
    assert rows[0]["condition"] == extra[1]
    video = np.load(rows[1]["npy"], allow_pickle=False)
    assert video.shape == ((13 if task == "extend_backward" else 9), 32, 32, 3)
    if task == "extend_backward":
      np.testing.assert_array_equal(video[-5:], frames)
    else:
      assert rows[0]["last_condition"] == extra[3]
  bad = subprocess.run(base + ["--video", str(tmp_path / "clip.npy"), f"--out={tmp_path / 'bad'}"], cwd=repo,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "--video needs --task" in bad.stderr
  bad = subprocess.run(base + ["--video", str(tmp_path / "clip.npy"), "--task", "extend_backward",
                               f"--out={tmp_path / 'bad'}"], cwd=repo, capture_output=True, text=True, timeout=600)
  assert bad.returncode != 0 and "--task extend_backward needs --num_frames" in bad.stderr


def test_tasks_with_hints_need_hint_moments_kept():
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import t2v as t2v_recipes  # pylint: disable=g-import-not-at-top
  from vdm_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import registry  # pylint: disable=g-import-not-at-top
  c = t2v_recipes.get_config("runlocal,conditions=all")
  c.vae.workdir = "/nowhere"
  registry.get("t2v").validate_config(c)
  c.input.pp = c.input.pp.replace("'hint_moments', ", "")
  with pytest.raises(ConfigError, match="must keep 'hint_moments'"):
    registry.get("t2v").validate_config(c)
  c.diffusion.condition.mix.bogus = 1.0
  with pytest.raises(ConfigError, match=r"diffusion.condition.mix.*Unknown condition tasks \['bogus'\]"):
    registry.get("t2v").validate_config(c)


def test_task_scores_find_the_object_and_run_every_task(conditioned_run):
  from vdm_jax.data import shapes  # pylint: disable=g-import-not-at-top
  from vdm_jax.eval import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.pipelines.t2v import TextToVideoPipeline  # pylint: disable=g-import-not-at-top
  clip = shapes.render_clip(7, 9, 32, 32, motion="right")
  found = tasks_lib.centroids(clip["video"])
  assert np.all(np.diff(found[:, 1]) > 0) and np.abs(np.diff(found[:, 0])).max() < 0.5  # moving right
  np.testing.assert_array_equal(tasks_lib.centroid_errors(clip["video"], clip["video"], range(9)), 0.0)
  empty = np.zeros_like(clip["video"])
  assert np.isinf(tasks_lib.centroid_errors(empty, clip["video"], [0, 1])).all()
  report = tasks_lib.evaluate_tasks(TextToVideoPipeline.from_workdir(conditioned_run), num=2, extend_frames=2,
                                    num_steps=2)
  assert set(report) == set(tasks_lib.TASKS)
  assert {"first_frame_psnr_mean", "color", "shape", "motion"} <= set(report["i2v"])
  for task in ("interpolate", "extend", "extend_backward"):
    assert {"centroid_median_px", "centroid_missing", "color"} <= set(report[task])
  assert all(r["num_videos"] == 2 for r in report.values())


@pytest.mark.slow(65)
def test_eval_tasks_runs_each_task_through_the_sample_command(conditioned_run, one_device_env, tmp_path):
  """`experiments.eval_tasks --through=cli`: the given frames go to files, one sample command per task generates
  from them, and its videos are the ones scored (an extension backward ends with the frames it was given)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "tasks.json"
  cmd = [sys.executable, "-m", "experiments.eval_tasks", f"--workdir={conditioned_run}", "--num=2",
         "--tasks=interpolate,extend_backward,v2v", f"--out={out}"]
  result = subprocess.run(cmd, cwd=repo, env=one_device_env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.load(open(out))
  assert report["through"] == "cli" and set(report["tasks"]) == {"interpolate", "extend_backward", "v2v"}
  assert all(r["num_videos"] == 2 for r in report["tasks"].values())
  folder = os.path.join(conditioned_run, "eval", "tasks")
  assert sorted(os.listdir(os.path.join(folder, "interpolate", "inputs"))) == [
      "000_first.png", "000_last.png", "001_first.png", "001_last.png"]
  given = np.load(os.path.join(folder, "extend_backward", "inputs", "001.npy"))
  rows = [json.loads(line) for line in open(os.path.join(folder, "extend_backward", "videos", "samples.jsonl"))]
  video = np.load(rows[1]["npy"])
  assert rows[1]["task"] == "extend_backward" and video.shape[1:] == given.shape[1:]
  np.testing.assert_array_equal(video[-len(given):], given)
