"""The codebase's shape: layers only point down (the import-linter contracts in .importlinter), imports sit at the
top of modules, and every library file does one job in under 400 lines."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(REPO, "vdm_jax")
MAX_LINES = 400
# Function-level imports of vdm_jax modules that stay, each for a reason (module -> imported module).
ALLOWED_LOCAL_IMPORTS = {
    # the tfds builders import tensorflow_datasets, which takes seconds and is needed only for their datasets
    ("vdm_jax.data.pipeline", "vdm_jax.data.captioned_shapes"),
    ("vdm_jax.data.pipeline", "vdm_jax.data.video_folder"),
}


def _library_files():
  for root, _, files in os.walk(LIBRARY):
    for name in sorted(files):
      if name.endswith(".py"):
        yield os.path.join(root, name)


def _module_name(path):
  rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def test_import_contracts_hold():
  lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
  if lint is None:
    pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter.")
  result = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  assert "0 broken" in result.stdout


def test_function_level_library_imports_are_the_allowed_few():
  found = set()
  for path in _library_files():
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for inner in ast.walk(node):
        if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("vdm_jax"):
          found.update((_module_name(path), f"{inner.module}.{a.name}") for a in inner.names)
        elif isinstance(inner, ast.Import):
          found.update((_module_name(path), a.name) for a in inner.names if a.name.startswith("vdm_jax"))
  assert found == ALLOWED_LOCAL_IMPORTS
  assert len(ALLOWED_LOCAL_IMPORTS) <= 3


def test_library_files_are_short():
  long = {os.path.relpath(p, REPO): n for p in _library_files() if (n := len(open(p).read().splitlines())) > MAX_LINES}
  assert not long, f"files over {MAX_LINES} lines: {long}"
