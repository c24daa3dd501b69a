"""The experiment-config schema and its validation.

A config is an `ml_collections.ConfigDict` built from `base_config(experiment)`: the generic keys every run has
(mesh, sharding rules, input, optimizer, schedule, train loop) plus the keys the experiment registers
(`model`, `loss`, ...). `validate(config)` runs at start-up and fails with a `ConfigError` that names the key and
what is allowed, so a typo never silently trains the wrong thing.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

import ml_collections
from absl import flags
from ml_collections import config_flags

from vdm_jax.config import ConfigError, check, check_choice  # noqa: F401  (re-exported for configs/)
from vdm_jax.data import buckets as buckets_lib
from vdm_jax.data import ops
from vdm_jax.eval import evaluators
from vdm_jax.parallel.mesh import MESH_AXES
from vdm_jax.parallel.sharding import DEFAULT_RULES
from vdm_jax.train import lora_run, registry

OPTIMIZERS = ("adamw", "adam", "sgd", "lion")
SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


def generic_config() -> ml_collections.ConfigDict:
  """The keys every experiment has, with their defaults (CPU-sized)."""
  c = ml_collections.ConfigDict()
  c.experiment = ""
  c.seed = 0
  # Staged training / fine-tuning (vdm_jax.train.warm_start): a new run starts from this workdir's parameters
  # (its 'ema_params' or 'params') with a fresh optimizer; once it has a checkpoint it resumes from that.
  c.init_from = ""
  c.init_from_item = "ema_params"
  # LoRA fine-tuning (vdm_jax.train.lora_run): (pattern, rank, alpha) triples over parameter paths, e.g.
  # (("dit/layers/attn/to_(q|k|v|out)$", 8, 8.0),); the run trains only these adapters over init_from's parameters.
  # mode 'merge' trains through merged kernels W + A @ B (any kernel, Conv too; fastest for small models),
  # 'inline' adds x @ A @ B inside each Dense (no merged copy of the stacked kernels; dropout on the adapter's input).
  c.lora = ml_collections.ConfigDict({"targets": (), "base_dtype": "float32", "mode": "merge", "dropout": 0.0})

  # Device mesh: sizes per axis, -1 fills the remaining devices (exactly one axis may be -1).
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "context": 1})
  # Logical axis name -> mesh axis (str), tuple of mesh axes, or None (replicated).
  c.sharding_rules = DEFAULT_RULES

  # Multi-host: jax.distributed.initialize(...) is called when enabled. Empty address / -1 ids are auto-detected
  # from the cluster environment (TPU pods, SLURM, ...).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = -1
  c.distributed.process_id = -1

  c.input = ml_collections.ConfigDict()
  c.input.dataset = "captioned_shapes"
  c.input.builder_config = "64x64x17"  # a tfds builder config of the dataset
  c.input.data_dir = ""  # '' -> tfds' default (~/tensorflow_datasets)
  # dataset 'video_folder' (vdm_jax.data.video_folder; builder_config is then its spec, e.g. '64x64x17_8fps'):
  c.input.folder = ""  # the output folder of `experiments.curate`
  c.input.videos = ""  # the folder that was curated ('' -> what its report.json says)
  c.input.validation_fraction = 0.1  # of the kept clips
  c.input.max_windows = 0  # windows per clip (0: all)
  c.input.split = "train"
  c.input.pp = "decode_video|value_range(-1, 1)|decode_text('caption')|keep('video', 'caption')"
  c.input.batch_size = 8  # global batch, over all processes
  c.input.shuffle_seed = 0
  c.input.num_threads = 2
  c.input.prefetch = 2
  # Several sizes and durations in one run (vdm_jax.data.buckets): {resolution: {frames: (keep_probability,
  # batch_size)}} at each of `aspect_ratios` (height:width); `builder_config` is then a template such as
  # '{height}x{width}x{frames}'. Empty: one size, `builder_config` as is.
  c.input.buckets = None
  c.input.aspect_ratios = ("1:1",)
  c.input.bucket_multiple = 16  # bucket sides are multiples of this (VAE 8x times DiT patch 2)
  c.input.bucket_block = 256  # steps per shuffled block of the bucket order
  # > 0: every step packs batch_size clips of every bucket into rows of this many tokens (vdm_jax.models.packing)
  c.input.pack_length = 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 1.0  # <= 0 disables clipping

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "cosine"
  c.schedule.base_lr = 1e-3
  c.schedule.warmup_steps = 0
  c.schedule.end_lr_factor = 0.0  # cosine/linear decay to base_lr * end_lr_factor at train.steps

  # Evaluators by name (vdm_jax.eval.evaluators): {name: {type, every_steps, prefix, settings}}; their settings
  # default to the shared `eval` section's keys of the same name.
  c.evals = ml_collections.ConfigDict({"_free_form": True})

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.ema_decay = 0.0  # 0 keeps EMA params equal to params
  c.train.log_every = 10
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.async_checkpoints = True
  c.train.eval_every = 0  # the evaluators' default every_steps (0: only at the end)
  c.train.sample_every = 0  # 0: only at the end
  c.train.compute_dtype = "float32"
  c.train.param_dtype = "float32"
  c.train.cpu_ynn_reductions = True  # on a CPU, the train step's reductions by YNNPACK (False: XLA's own)
  c.train.profile_steps = 0  # > 0: trace this many steps into <workdir>/profile (vdm_jax.train.profiler)
  c.train.profile_start = 10  # ... after this many steps of the invocation (compiled and warm)
  c.train.peak_tflops = 0.0  # per device, for MFU; 0: from the table in vdm_jax/train/flops.py (None on CPUs)
  return c


def base_config(experiment: str) -> ml_collections.ConfigDict:
  """The full default config of a registered experiment: generic keys plus the experiment's own."""

  c = generic_config()
  c.experiment = experiment
  exp_cls = registry.get(experiment)
  for key, value in exp_cls.default_config().items():
    if key in c and isinstance(c[key], ml_collections.ConfigDict):
      c[key].update(value)
    else:
      c[key] = value
  return c


def unknown_key(path: str, allowed) -> ConfigError:
  """The error for the unknown key at dotted `path` in a section with keys `allowed`: names the closest match."""
  prefix, _, key = path.rpartition(".")
  close = difflib.get_close_matches(key, list(allowed), n=1)
  hint = f" Did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
  return ConfigError(f"Unknown config key '{path}'.{hint} Allowed keys here: {sorted(allowed)}.")


def _check_keys(config, schema, prefix: str) -> None:
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      raise unknown_key(path, schema.keys())
    value, default = config[key], schema[key]
    if isinstance(default, ml_collections.ConfigDict) and not _free_form(default):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"Config key '{path}' must be a section (ConfigDict), got {type(value).__name__}.")
      _check_keys(value, default, path + ".")
    elif default is not None and value is not None and not _same_kind(value, default):
      raise ConfigError(
          f"Config key '{path}' has type {type(value).__name__} ({value!r}); expected {type(default).__name__} "
          f"like the default {default!r}.")


def _free_form(section) -> bool:
  """Sections whose keys are user-chosen names (e.g. a dict of evaluators) are marked with `_free_form=True`."""
  return bool(section.get("_free_form", False))


def _same_kind(value, default) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, (int, float)):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys, types and values; returns the config unchanged or raises ConfigError naming the key."""

  if "experiment" not in config or not config.experiment:
    raise ConfigError(f"Config key 'experiment' must name one of {registry.names()}.")
  check_choice(config, "experiment", registry.names())
  _check_keys(config, base_config(config.experiment), "")

  for axis in config.mesh.keys():
    check(axis in MESH_AXES, f"mesh.{axis}", f"is not a mesh axis; allowed axes: {list(MESH_AXES)}.")
  sizes = [config.mesh[a] for a in config.mesh.keys()]
  for axis, size in zip(config.mesh.keys(), sizes):
    check(size == -1 or size >= 1, f"mesh.{axis}", f"is {size}; sizes are positive, or -1 to fill.")
  check(sizes.count(-1) <= 1, "mesh", f"has {sizes.count(-1)} axes set to -1; at most one may fill.")
  for i, rule in enumerate(config.sharding_rules):
    check(isinstance(rule, (tuple, list)) and len(rule) == 2, f"sharding_rules[{i}]",
           f"is {rule!r}; each rule is (logical_axis, mesh_axis | (mesh_axes...) | None).")
    targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    for t in targets:
      check(t is None or t in MESH_AXES, f"sharding_rules[{i}]", f"maps to {t!r}; allowed: {list(MESH_AXES)}.")

  check_choice(config, "init_from_item", ("ema_params", "params"))
  check_choice(config, "optimizer.name", OPTIMIZERS)
  check_choice(config, "schedule.name", SCHEDULES)
  check_choice(config, "train.compute_dtype", ("float32", "bfloat16", "float16"))
  check_choice(config, "train.param_dtype", ("float32", "bfloat16"))
  check(config.train.steps > 0, "train.steps", f"is {config.train.steps}; must be > 0.")
  check(config.input.batch_size > 0, "input.batch_size", f"is {config.input.batch_size}; must be > 0.")
  check(config.schedule.base_lr >= 0, "schedule.base_lr", "must be >= 0.")
  check(0.0 <= config.train.ema_decay < 1.0, "train.ema_decay", f"is {config.train.ema_decay}; must be in [0, 1).")
  check(config.train.log_every > 0, "train.log_every", "must be > 0.")
  check(config.train.checkpoint_every > 0, "train.checkpoint_every", "must be > 0.")
  check(config.train.keep_checkpoints > 0, "train.keep_checkpoints", "must be > 0.")
  for key in ("eval_every", "sample_every"):
    check(config.train[key] >= 0, f"train.{key}", "must be >= 0 (0: only at the end).")
  for key in ("profile_steps", "profile_start"):
    check(config.train[key] >= 0, f"train.{key}", "must be >= 0.")

  if config.input.get("buckets"):
    try:
      table = buckets_lib.table(config.input)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    check("{height}" in config.input.builder_config and "{width}" in config.input.builder_config
          and "{frames}" in config.input.builder_config, "input.builder_config",
          f"is {config.input.builder_config!r}; with input.buckets it names each bucket's dataset by its size, "
          "e.g. '{height}x{width}x{frames}' (Captioned Shapes) or '{height}x{width}x{frames}_8fps' (a folder).")
    check(config.input.bucket_block >= len(table), "input.bucket_block",
          f"is {config.input.bucket_block}; must be >= the number of buckets ({len(table)}).")
  check(config.input.pack_length >= 0, "input.pack_length", "must be >= 0 (0: no packing).")
  check(not config.input.pack_length or config.input.get("buckets"), "input.pack_length",
        f"is {config.input.pack_length}; packing mixes the clips of several buckets: set input.buckets too.")

  try:
    ops.parse(config.input.pp)
  except (ValueError, KeyError) as e:
    raise ConfigError(f"Config key 'input.pp' is not a valid preprocessing spec: {e}") from e

  lora_run.validate(config)
  try:
    evaluators.validate(config, registry.get(config.experiment))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  registry.get(config.experiment).validate_config(config)
  return config


def check_batch_size(batch_size: int, mesh_shape: Mapping[str, int], process_count: int = 1,
                     path: str = "input.batch_size") -> None:
  """The global batch is split over the mesh axes data x fsdp only (tensor and context split heads and sequence),
  and each process loads its own equal part of it; raises ConfigError naming the numbers and what is allowed.

  So a per-device batch below 1 is fine when the spare devices go to context or tensor parallelism, e.g. 2 clips
  on 8 devices with fsdp=2, context=4 (0.25 per device).
  """
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  devices = math.prod(mesh_shape.values())
  if batch_size % shards:
    fsdp = math.gcd(batch_size, devices)
    raise ConfigError(
        f"Config key '{path}' is {batch_size}, which does not split over the batch axes data x fsdp = "
        f"{mesh_shape['data']} x {mesh_shape['fsdp']} = {shards} of mesh {dict(mesh_shape)}; allowed: multiples of "
        f"{shards}. The batch is split over data x fsdp only, so fewer examples than devices ({batch_size} on "
        f"{devices} = {batch_size / devices:g} per device) need the other devices on mesh.context (sequence) or "
        f"mesh.tensor (heads), e.g. --config.mesh.data=1 --config.mesh.fsdp={fsdp} "
        f"--config.mesh.context={devices // fsdp} (heads and tokens must divide by the context size).")
  if batch_size % process_count:
    raise ConfigError(f"Config key '{path}' is {batch_size}, which does not split over the {process_count} "
                      f"processes (each loads batch / processes examples); allowed: multiples of {process_count}.")


def parse_arg(arg: str | None, **defaults) -> dict[str, str | bool]:
  """Parses a config argument `"size=tiny,runlocal"` into {'size': 'tiny', 'runlocal': True} over `defaults`.

  Unknown names fail, so a typo in `configs/x.py:runlcoal` is caught.
  """
  out = dict(defaults)
  for item in (arg or "").split(","):
    if not item.strip():
      continue
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"Unknown config argument {key!r}; allowed: {sorted(defaults)}.")
    out[key] = value.strip() if _ else True
  return out


def int_arg(name: str, value: str, least: int, allowed: str) -> int:
  """Config argument `name=value` as an int >= `least`, else a ConfigError saying what is `allowed`."""
  try:
    number = int(value)
  except ValueError:
    number = least - 1
  if number < least:
    raise ConfigError(f"Config argument {name}={value!r}; allowed: {allowed}.")
  return number


def use_fvd(c: ml_collections.ConfigDict, value: str) -> None:
  """Config argument `fvd=N`: an evaluator `fvd` (vdm_jax/eval/evaluators/fvd.py) on N real clips against N of the
  model's, with its reference points (the floor and, for a text-to-video model, the VAE's reconstructions), run at
  the end of training and by `experiments.evaluate --evals fvd`. The split needs 2N clips."""
  if not value:
    return
  num_clips = int_arg("fvd", value, 2, "a number of clips per set >= 2, e.g. fvd=256")
  c.evals.fvd = {"type": "fvd", "num_clips": num_clips, "reference_points": True, "every_steps": 0}


def use_lora(c: ml_collections.ConfigDict, value: str, base_dtype: str = "float32") -> None:
  """Config argument `lora=R`: rank-R adapters (alpha R) on every block's attention projections of the DiT, over
  the frozen parameters of the run given as `--config.init_from` (vdm_jax.train.lora_run)."""
  if not value:
    return
  rank = int_arg("lora", value, 1, "a rank >= 1, e.g. lora=8")
  c.lora.targets = (("dit/layers/attn/to_(q|k|v|out)$", rank, float(rank)),)
  c.lora.base_dtype = base_dtype


def use_folder(c: ml_collections.ConfigDict, args: Mapping[str, Any]) -> None:
  """Config arguments `data=folder[,folder=OUT]`: the input becomes a curated video folder at the config's frame
  size and length (`input.builder_config` of Captioned Shapes, `HxWxT`)."""
  if args["data"] not in ("", "folder"):
    raise ConfigError(f"Config argument data={args['data']!r}; allowed: '' (Captioned Shapes) or 'folder'.")
  if args["folder"] and args["data"] != "folder":
    raise ConfigError("Config argument folder=... needs data=folder.")
  if args["data"] == "folder":
    c.input.dataset = "video_folder"
    c.input.builder_config = c.input.builder_config.split("_")[0]  # '32x32x9_tiny' -> '32x32x9'
    c.input.split = c.input.split.split("[")[0]
    c.input.folder = args["folder"]


def check_paths(config: ml_collections.ConfigDict, paths) -> None:
  """Raises `unknown_key` for a dotted path (a command-line override) that names no key of `config`; free-form
  sections and values that are not sections end the check of a path."""
  for path in paths:
    node, parts = config, path.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or _free_form(node):
        break
      if part not in node:
        raise unknown_key(".".join(parts[:i + 1]), node.keys())
      node = node[part]


class ConfigFlagError(ConfigError, flags.IllegalFlagValueError):
  """A ConfigError in a command-line override; absl prints it as a two-line flags error (exit status 1)."""


def define_config_flag(name: str = "config", help_string: str = "Config file, e.g. configs/toy_ae.py[:arg].", *,
                       lock_config: bool = True, flag_values=flags.FLAGS, **kwargs):
  """`config_flags.DEFINE_config_file` whose `--<name>.<key>=<value>` overrides are checked (`check_paths`) before
  ml_collections applies them, so an unknown key fails like one in a config file: naming the key, the closest
  match and the allowed keys (ml_collections' own error is a 55-line AttributeError traceback)."""
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values,
                                           lock_config=lock_config, **kwargs)
  flag = flag_values[name]
  # The first step of ml_collections' override handling that walks the paths (it raises KeyError on a typo).
  apply = flag._initialize_missing_parent_fields  # pylint: disable=protected-access

  def check_then_apply(config, overrides):
    try:
      check_paths(config, overrides)
    except ConfigError as e:
      raise ConfigFlagError(str(e)) from None
    apply(config, overrides)

  flag._initialize_missing_parent_fields = check_then_apply  # pylint: disable=protected-access
  return holder
