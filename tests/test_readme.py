"""README.md and docs/*.md stay true: the README is short and shows .ci/run's test command, every
`python -m experiments.<x>` command shown names an existing module and only flags that module defines (and config keys
its config has), every `configs/<x>.py`, repository path and `vdm_jax.<module>[.<name>]` named exists, and every
relative link points to an existing file (and heading).

Flags are read from the modules' source (absl `DEFINE_*` calls and argparse `add_argument`), not by importing them:
the entry points define flags with the same names, which absl refuses to register twice in one process.
"""
import ast
import functools
import importlib.util
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 200
# absl's own flags, accepted by every absl entry point.
ABSL_FLAGS = {"help", "helpshort", "helpfull", "helpxml", "flagfile", "undefok", "logtostderr", "alsologtostderr",
              "verbosity", "v", "log_dir", "stderrthreshold", "showprefixforinfo", "only_check_args", "pdb",
              "pdb_post_mortem", "run_with_pdb", "run_with_profiling", "use_cprofile_for_profiling"}
CONFIG_PATH = re.compile(r"configs/([A-Za-z_]\w*)\.py(?::([^\s\"'`)\]]*))?")


def _code(path: pathlib.Path) -> list[str]:
  """The text of every fenced code block, then every inline code span, of a Markdown file."""
  text = path.read_text(encoding="utf-8")
  blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
  prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
  return blocks + re.findall(r"`([^`\n]+)`", prose)


def _commands(snippet: str) -> list[list[str]]:
  """Shell commands of a snippet as token lists, with continuation lines joined, `#` comments dropped and `$NAME`
  expanded from `NAME=value` assignments earlier in the snippet."""
  variables, commands = {}, []
  for line in snippet.replace("\\\n", " ").splitlines():
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
      tokens = list(lexer)
    except ValueError:  # not shell (Python, a table): nothing to check
      continue
    command = []
    for token in tokens + [";"]:
      if set(token) <= set(";&|"):
        if len(command) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
          name, _, value = command[0].partition("=")
          variables[name] = value
        if command:
          commands.append(command)
        command = []
      elif token.startswith("$") and token[1:] in variables:
        command.extend(shlex.split(variables[token[1:]]))
      else:
        command.append(token)
  return commands


def _experiment_commands(path: pathlib.Path) -> list[tuple[str, list[str]]]:
  """(module, arguments) of every `python -m experiments.<x>` command in a page."""
  found = []
  for snippet in _code(path):
    for command in _commands(snippet):
      for i in range(len(command) - 2):
        if command[i] in ("python", "python3") and command[i + 1] == "-m" and command[i + 2].startswith("experiments."):
          found.append((command[i + 2], command[i + 3:]))
          break
  return found


@functools.lru_cache(maxsize=None)
def _defined_flags(module: str) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
  """(flag names, boolean flag names, names of flags that take a config file and its `.<key>` overrides) that
  `experiments/<module>.py` defines."""
  source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
  tree = ast.parse(source)
  names, booleans, configs = set(), set(), set()
  uses_absl = False
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      uses_absl |= any("absl" in (alias.name or "") for alias in node.names) or "absl" in (
          getattr(node, "module", None) or "")
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
      continue
    func = node.func.attr
    first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg in ("name", "flag_name")),
                                                None)
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
      continue
    if func.startswith("DEFINE_") or func == "define_config_flag":
      names.add(first.value)
      if func == "DEFINE_bool" or func == "DEFINE_boolean":
        booleans.add(first.value)
      if func.startswith("DEFINE_config_") or func == "define_config_flag":
        configs.add(first.value)
    elif func == "add_argument" and first.value.startswith("--"):
      names.add(first.value[2:])
  if uses_absl:
    names |= ABSL_FLAGS
  if "config" in names and '"--config."' in source:  # passes `--config.<key>=<value>` through (experiments.ablate)
    configs.add("config")
  return frozenset(names), frozenset(booleans), frozenset(configs)


@functools.lru_cache(maxsize=None)
def _config(name: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(f"readme_configs_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _has_key(config, key: str) -> bool:
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def _problems(module: str, args: list[str]) -> list[str]:
  path = ROOT / (module.replace(".", "/") + ".py")
  if not path.is_file():
    return [f"{module}: no file {path.relative_to(ROOT)}"]
  names, booleans, config_flags = _defined_flags(module)
  problems, config, overrides = [], None, []
  for i, arg in enumerate(args):
    if not arg.startswith("--"):
      continue
    flag, has_value, value = arg[2:].partition("=")
    if not has_value and i + 1 < len(args) and not args[i + 1].startswith("--"):
      value = args[i + 1]
    root, dot, key = flag.partition(".")
    if dot and root in config_flags:
      overrides.append(key)
    elif flag in names or (flag.startswith("no") and flag[2:] in booleans):
      if flag in config_flags:
        match = CONFIG_PATH.fullmatch(value)
        if match is None:
          problems.append(f"{module} --{flag}={value}: not a configs/<x>.py[:args] path")
        elif (ROOT / "configs" / f"{match[1]}.py").is_file():
          config = _config(match[1], match[2])
      if flag == "sweep" and "=" in value:
        overrides.append(value.partition("=")[0])
    else:
      problems.append(f"{module}: no flag --{flag}")
  for key in overrides:
    if config is None:
      problems.append(f"{module}: --config.{key} without a --config file to override")
    elif not _has_key(config, key):
      problems.append(f"{module}: the config has no key {key!r}")
  return problems


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short():
  lines = README.read_text(encoding="utf-8").count("\n")
  assert lines <= MAX_README_LINES, f"README.md has {lines} lines; at most {MAX_README_LINES} (move detail to docs/)"


def test_readme_shows_the_ci_test_command():
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
  command = "python -m pytest -n 2 -q tests"
  assert command in ci and any(snippet.strip() == command for snippet in _code(README))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_experiment_commands_take_the_flags_shown(page):
  commands = _experiment_commands(page)
  if page == README:
    assert {"experiments.quickstart", "experiments.train", "experiments.sample"} <= {m for m, _ in commands}
  problems = [p for module, args in commands for p in _problems(module, args)]
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_configs_exist(page):
  missing = sorted({m[0] for m in CONFIG_PATH.finditer(page.read_text(encoding="utf-8"))
                    if not (ROOT / "configs" / f"{m[1]}.py").is_file()})
  assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
  broken = []
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+:", target):
      continue
    file_part, _, anchor = target.partition("#")
    linked = (page.parent / file_part).resolve() if file_part else page
    if not linked.exists():
      broken.append(target)
    elif anchor and linked.suffix == ".md":
      headings = re.findall(r"^#+\s+(.*)$", linked.read_text(encoding="utf-8"), flags=re.M)
      if anchor not in {_slug(h) for h in headings}:
        broken.append(target)
  assert not broken, broken


def test_the_checks_catch_mistakes():
  assert _problems("experiments.sample", ["--workdir", "W", "--num_samples", "4"]) == []
  assert _problems("experiments.sample", ["--use_dynamic_cfg", "--nouse_dynamic_cfg"]) == []
  assert _problems("experiments.sample", ["--num_sample", "4"]) == ["experiments.sample: no flag --num_sample"]
  assert _problems("experiments.nothing", []) == ["experiments.nothing: no file experiments/nothing.py"]
  assert _problems("experiments.train", ["--config", "configs/toy_ae.py", "--config.train.stpes=3"]) == [
      "experiments.train: the config has no key 'train.stpes'"]
  assert _problems("experiments.bench_vae", ["--sizes", "9x64x64", "--repeat", "3"]) == [
      "experiments.bench_vae: no flag --repeat"]
  assert _commands('P="python -m experiments.plan"; U=--x=1\n$P --mesh a=1 $U  # note') == [
      ["P=python -m experiments.plan"], ["U=--x=1"], ["python", "-m", "experiments.plan", "--mesh", "a=1", "--x=1"]]


def _top_level_names(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.parse(path.read_text(encoding="utf-8")).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names |= {t.id for t in targets if isinstance(t, ast.Name)}
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names |= {(a.asname or a.name).split(".")[0] for a in node.names}
  return names


def _unresolved_name(dotted: str) -> str | None:
  """None when `vdm_jax.a.b[.attr]` names a module of the repository (and an attribute defined at its top level)."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    base = ROOT.joinpath(*parts[:i])
    module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if module.is_file():
      rest = parts[i:]
      if not rest or rest[0] in _top_level_names(module) or (base / f"{rest[0]}.py").is_file():
        return None
      return dotted
  return dotted


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_modules_and_files_exist(page):
  text = page.read_text(encoding="utf-8")
  names = set(re.findall(r"\bvdm_jax(?:\.\w+)+", text))
  missing = sorted(n for n in names if _unresolved_name(n))
  paths = set(re.findall(r"(?<![\w/.])((?:vdm_jax|experiments|configs|tests|colab|docs|\.ci)/[\w./-]*\w)", text))
  missing += sorted(p for p in paths if not (ROOT / p).exists() and not (ROOT / f"{p}.py").exists())
  assert not missing, missing
