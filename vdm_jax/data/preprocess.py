"""The preprocessing registry and spec parser: op factories registered by name, and specs built into pipelines.

A spec is ops joined by `|`, each a registered name with literal arguments (big_vision style):

    "decode_video|temporal_sample(num_frames=17, stride=2)|resize(64)|center_crop(64)|value_range(-1, 1)"
    "|decode_text('caption')|keep('video', 'caption')"

`build(spec)` returns a callable `(example, rng) -> example` to hand to grain, e.g.
`grain.MapDataset.source(records).seed(0).random_map(build(spec))`. Ops register themselves with `@register(name)`
when their module is imported; the standard ones are in `vdm_jax.data.ops`, which re-exports this module's
functions, so `ops.build(spec)` always finds them.
"""
import ast
import importlib
import inspect

_REGISTRY = {}


def register(name):
  """Decorator: registers an op factory `get_<name>(*args, **kwargs) -> op` under `name`."""
  def wrap(factory):
    if name in _REGISTRY and _REGISTRY[name] is not factory:
      raise ValueError(f"preprocessing op {name!r} is already registered (by {_REGISTRY[name].__module__})")
    _REGISTRY[name] = factory
    return factory
  return wrap


def names():
  """The registered op names, sorted."""
  return sorted(_REGISTRY)


def get(name):
  """Returns the factory registered under `name`; ValueError listing the registered names if there is none."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown preprocessing op {name!r}; registered ops: {names()}")
  return _REGISTRY[name]


# ----------------------------------------------------------------------------------------------------------------
# Spec parsing.


def parse(spec):
  """Parses a spec string into a list of ops, in order. An empty spec gives `[]`.

  Arguments are read with `ast.literal_eval` (numbers, strings, tuples, lists, dicts, True/False/None); nothing is
  evaluated. Raises ValueError naming the piece of the spec that is wrong.
  """
  return [_make_op(*piece) for piece in _parse_pieces(spec)]


def build(spec):
  """Returns a `Pipeline`: a callable `(example, rng=None) -> example` running the ops of `spec` in order."""
  return Pipeline(spec)


class Pipeline:
  """The ops of a spec, chained. Pickles as its spec (ops are closures), so it can be sent to grain workers."""

  def __init__(self, spec):
    self.spec = spec
    pieces = _parse_pieces(spec)
    self.ops = [_make_op(*piece) for piece in pieces]
    # Modules that registered the ops, imported again on unpickling so that ops registered outside this one resolve.
    self._modules = sorted({get(piece[0]).__module__ for piece in pieces})

  def __call__(self, example, rng=None):
    """Runs every op on `example` (a dict); `rng` is an `np.random.Generator`, needed by random ops."""
    for op in self.ops:
      example = op(example, rng)
    return example

  def __getstate__(self):
    return {"spec": self.spec, "modules": self._modules}

  def __setstate__(self, state):
    for module in state["modules"]:
      importlib.import_module(module)
    self.__init__(state["spec"])

  def __repr__(self):
    return f"Pipeline({self.spec!r})"


def _parse_pieces(spec):
  """spec -> [(name, args, kwargs, piece_text)]."""
  if not isinstance(spec, str):
    raise TypeError(f"a preprocessing spec is a string like \"resize(64)|center_crop(64)\", got {type(spec).__name__}")
  source = spec.strip()
  if not source:
    return []
  try:
    tree = ast.parse(source, mode="eval")
  except SyntaxError as e:
    raise ValueError(_syntax_error_message(spec, e)) from None
  return [_parse_piece(node, source) for node in _split_on_bar(tree.body)]


def _split_on_bar(node):
  """The ops of `a | b | c`, left to right."""
  if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
    return _split_on_bar(node.left) + _split_on_bar(node.right)
  return [node]


def _parse_piece(node, source):
  text = ast.get_source_segment(source, node)
  if isinstance(node, ast.Name):
    return node.id, (), {}, text
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(f"spec piece {text!r} is not an op: write name or name(literal args), "
                     f"e.g. 'resize(64)'; registered ops: {names()}")
  if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
    raise ValueError(f"spec piece {text!r}: *args and **kwargs are not allowed, only literal arguments")
  args = tuple(_literal(a, text, source) for a in node.args)
  kwargs = {k.arg: _literal(k.value, text, source) for k in node.keywords}
  return node.func.id, args, kwargs, text


def _literal(node, text, source):
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f"spec piece {text!r}: argument {ast.get_source_segment(source, node)!r} is not a literal "
                     "(allowed: numbers, strings, tuples, lists, dicts, True, False, None)") from None


def _syntax_error_message(spec, error):
  """Names the first `|`-separated piece that does not parse on its own, else the whole spec."""
  for piece in spec.split("|"):
    try:
      ast.parse(piece.strip(), mode="eval")
    except SyntaxError as e:
      return f"cannot parse spec piece {piece.strip()!r} of {spec!r}: {e.msg}"
  return f"cannot parse preprocessing spec {spec!r}: {error.msg} at column {error.offset}"


def _make_op(name, args, kwargs, text):
  factory = get(name)
  try:
    return factory(*args, **kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"spec piece {text!r}: {e}; signature: {name}{inspect.signature(factory)}") from e
