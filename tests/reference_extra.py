"""The parity tests' references, torch, diffusers and transformers (setup.py's `reference` extra): imported, or the
test skipped with a reason that says how to install them, so that `pip install -e ".[test]"` runs every other test.

A test file that is all parity tests calls `need` at module level (the whole file is skipped); a test among others
asks for the `torch`, `diffusers` or `transformers` fixture (tests/conftest.py), which is skipped on its own.
"""
import pytest

REASON = ('a parity test: needs the `reference` extra (torch, diffusers, transformers): '
          'pip install torch==2.13.0, then pip install -e ".[test,reference]"')


def need(module: str):
  """`module` imported, or the calling test (at module level: the whole file) skipped with REASON."""
  __tracebackhide__ = True  # pylint: disable=unused-variable  (pytest reports the skip at the caller's line)
  return pytest.importorskip(module, reason=REASON)
