"""Meshes from config, logical-axis shardings, and sharded math equal to unsharded math (8 CPU devices)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vdm_jax.models.layers import dense
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.parallel import sharding


def test_mesh_shape_fills_and_checks():
  assert mesh_lib.mesh_shape({"data": -1}, 8) == (8, 1, 1, 1)
  assert mesh_lib.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2, 1)
  assert mesh_lib.mesh_shape({"fsdp": 2, "tensor": 2, "context": 2, "data": -1}, 8) == (1, 2, 2, 2)
  with pytest.raises(ValueError, match="at most one axis"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="has 4 devices but 8 are available"):
    mesh_lib.mesh_shape({"data": 4}, 8)
  with pytest.raises(ValueError, match="not divisible"):
    mesh_lib.mesh_shape({"data": -1, "tensor": 3}, 8)
  with pytest.raises(ValueError, match="Unknown mesh axes"):
    mesh_lib.mesh_shape({"pipe": 2}, 8)


def test_create_mesh_uses_all_devices():
  m = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "context": 1}
  assert sorted(d.id for d in m.devices.flat) == list(range(8))


class MLP(nn.Module):
  hidden: int = 64

  @nn.compact
  def __call__(self, x):
    x = nn.with_logical_constraint(x, ("batch", "embed"))
    h = nn.gelu(dense(self.hidden, ("embed", "mlp"), name="wi")(x))
    h = nn.with_logical_constraint(h, ("batch", "mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), name="wo")(h)


def _sharded_params(mesh, model, x):
  rules = sharding.DEFAULT_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    init = jax.jit(lambda r, x: nn.meta.unbox(model.init(r, x)), out_shardings=shardings)
    return init(jax.random.PRNGKey(0), x), shardings


def test_logical_annotations_become_named_shardings():
  mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params, shardings = _sharded_params(mesh, MLP(), jnp.ones((8, 32)))
  assert shardings["params"]["wi"]["kernel"].spec == P("fsdp", "tensor")
  assert shardings["params"]["wo"]["kernel"].spec == P("tensor", "fsdp")
  assert shardings["params"]["wi"]["bias"].spec == P("tensor")
  assert params["params"]["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
  # each device holds a quarter of the kernel (fsdp 2 x tensor 2)
  assert params["params"]["wi"]["kernel"].addressable_shards[0].data.shape == (16, 32)


def test_non_dividing_axis_is_dropped():
  mesh = mesh_lib.create_mesh({"fsdp": 8})
  fitted = sharding._fit_spec(P("fsdp", None), (12, 5), mesh)  # pylint: disable=protected-access
  assert fitted == P(None, None)
  assert sharding._fit_spec(P(("data", "fsdp")), (16,), mesh) == P(("data", "fsdp"))  # pylint: disable=protected-access


@pytest.mark.parametrize("sizes", [{"data": 8}, {"data": 2, "fsdp": 4}, {"fsdp": 2, "tensor": 2, "context": 2},
                                   {"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_mlp_equals_unsharded(sizes):
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32))
  model = MLP()
  reference = model.apply(nn.meta.unbox(model.init(jax.random.PRNGKey(0), x)), x)
  mesh = mesh_lib.create_mesh(sizes)
  params, _ = _sharded_params(mesh, model, x)
  xs = sharding.shard_batch(np.asarray(x), mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    out = jax.jit(model.apply)(params, xs)
  np.testing.assert_allclose(np.asarray(out), np.asarray(reference), rtol=1e-5, atol=1e-6)


def test_shard_batch_splits_over_data_parallel_axes():
  mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = {"video": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "caption": np.array(["a"] * 8)}
  out = sharding.shard_batch(batch, mesh)
  assert out["video"].sharding.spec == P(("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(out["video"]), batch["video"])
  assert out["caption"] is batch["caption"]


def test_optimizer_state_and_ema_are_sharded_like_params():
  from vdm_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from vdm_jax.train import loop, registry  # pylint: disable=g-import-not-at-top
  from vdm_jax.train.state import make_optimizer  # pylint: disable=g-import-not-at-top

  class MLPExperiment(registry.Experiment):
    def init(self, rng, batch):
      return MLP().init(rng, jnp.zeros(batch["x"].shape))["params"]

  mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  config = config_lib.generic_config()
  tx = make_optimizer(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    init_fn, abstract, shardings = loop.state_initializer(
        MLPExperiment(config, mesh), tx, {"x": jax.ShapeDtypeStruct((8, 32), jnp.float32)}, mesh,
        sharding.DEFAULT_RULES)
    state = init_fn(jax.random.PRNGKey(0))
  kernel_spec = P("fsdp", "tensor")
  assert state.params["wi"]["kernel"].sharding.spec == kernel_spec
  assert state.ema_params["wi"]["kernel"].sharding.spec == kernel_spec
  flat = jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
  moments = [leaf for path, leaf in flat if "wi" in jax.tree_util.keystr(path) and "kernel" in
             jax.tree_util.keystr(path)]
  assert len(moments) == 2  # adam mu and nu
  assert all(m.sharding.spec == kernel_spec for m in moments)
  assert abstract.params["wi"]["kernel"].shape == (32, 64)
