"""Config checks shared by every layer: a `ConfigError` that names the key and what is allowed.

Modules below `vdm_jax.train` (text encoders, pipelines) validate their own config sections with these, so a
typo fails at start-up with the key's full path instead of deep inside a traced function.
"""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
  """A config key is unknown, or its value is not allowed."""


def get_path(config, path: str) -> Any:
  """The value at a dotted `path` ('diffusion.prediction_type') of a ConfigDict or dict."""
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def check_choice(config, path: str, allowed) -> None:
  """Raises ConfigError unless the value at `path` is one of `allowed`."""
  value = get_path(config, path)
  if value not in allowed:
    raise ConfigError(f"Config key '{path}' is {value!r}; allowed values: {list(allowed)}.")


def check(condition: bool, path: str, message: str) -> None:
  """Raises ConfigError('Config key <path> <message>') unless `condition`."""
  if not condition:
    raise ConfigError(f"Config key '{path}' {message}")
