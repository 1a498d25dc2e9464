"""Specification of gemb/sharding.py on 8 simulated CPU devices (see conftest.py)."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import common
from gemb import sharding
from gemb.data.packing import Layout, pack_inputs
from gemb.model.encoder import Encoder
from model_helpers import with_nonzero_shared_tables

RNG = np.random.default_rng(0)


def test_make_mesh_fills_the_minus_one_axis():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert dict(sharding.make_mesh({"data": -1}).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  small = sharding.make_mesh({"fsdp": -1}, devices=jax.devices()[:2])
  assert dict(small.shape) == {"data": 1, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("mesh_cfg, match", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices but 8 are available"),
    ({"data": -1, "fsdp": 3}, "does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
    ({"data": -1, "model": 2}, r"unknown axes \['model'\]"),
    ({"data": 0}, "positive or -1"),
])
def test_make_mesh_rejects_impossible_shapes(mesh_cfg, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(mesh_cfg)


def test_rules_map_logical_names_to_mesh_axes():
  sizes = {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.logical_to_spec(("embed", "mlp"), (64, 256), sizes) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("batch", None), (8, 5), sizes) == P(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("vocab", "embed"), (264, 64), sizes) == P("tensor", "fsdp")
  # Not divisible by the mesh axis: replicated rather than an error.
  assert sharding.logical_to_spec(("parts", "heads"), (8, 3), sizes) == P(None, None)
  # A mesh axis is used at most once per array.
  assert sharding.logical_to_spec(("mlp", "heads"), (4, 4), sizes) == P("tensor", None)
  with pytest.raises(ValueError, match="'hidden' has no entry"):
    sharding.logical_to_spec(("hidden",), (4,), sizes)


@pytest.fixture(scope="module")
def cfg():
  return common.model("tiny")


@pytest.fixture(scope="module")
def model(cfg):
  return with_nonzero_shared_tables(Encoder(cfg, rngs=nnx.Rngs(0)))


def test_param_shardings_follow_the_rules(cfg, model):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.param_shardings(nnx.state(model), mesh)
  block = shardings["blocks"][0]
  assert block["mlp"]["up"]["kernel"].get_value().spec == P("fsdp", "tensor")
  assert block["mlp"]["down"]["kernel"].get_value().spec == P("tensor", "fsdp")
  assert block["attention"]["query"]["kernel"].get_value().spec == P("fsdp", "tensor", None)
  assert block["attention"]["out"]["kernel"].get_value().spec == P("tensor", None, "fsdp")
  assert (shardings["stems"]["text"]["token_embed"]["embedding"].get_value().spec
          == P("tensor", "fsdp"))
  assert shardings["stems"]["image"]["patch_embed"]["kernel"].get_value().spec == P(None, "fsdp")
  # Every variable gets a sharding on this mesh; those without names are replicated.
  for leaf in jax.tree.leaves(shardings):
    assert isinstance(leaf, jax.sharding.NamedSharding) and leaf.mesh == mesh
  for leaf in jax.tree.leaves(sharding.param_shardings(nnx.state(model, nnx.RngState), mesh)):
    assert leaf.spec == P()


def test_shard_model_splits_parameters_across_devices(cfg, model):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = sharding.shard_model(nnx.clone(model), mesh)
  kernel = sharded.blocks[0].mlp.up.kernel.get_value()  # [64, 256] over (fsdp, tensor)
  assert kernel.addressable_shards[0].data.shape == (32, 128)
  np.testing.assert_array_equal(kernel, model.blocks[0].mlp.up.kernel.get_value())


def test_create_sharded_makes_parameters_born_sharded():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

  def make_model():
    return nnx.Linear(16, 32, kernel_metadata=sharding.logical_axes("embed", "mlp"),
                      rngs=nnx.Rngs(3))

  layer = sharding.create_sharded(make_model, mesh)
  assert layer.kernel.get_value().sharding.spec == P("fsdp", "tensor")
  np.testing.assert_allclose(layer.kernel.get_value(), make_model().kernel.get_value(), rtol=1e-6)


def test_shard_batch_splits_rows_over_data_and_fsdp():
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  host = {"query": {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)},
          "positive": {"y": np.arange(16)}}
  batch = sharding.shard_batch(host, mesh)
  for side, key in (("query", "x"), ("positive", "y")):
    array = batch[side][key]
    np.testing.assert_array_equal(array, host[side][key])
    assert array.sharding == sharding.batch_sharding(mesh)
    assert {s.data.shape[0] for s in array.addressable_shards} == {2}
  with pytest.raises(ValueError, match=r"\['query'\]\['x'\] .* multiple of the 8 data x fsdp"):
    sharding.shard_batch({"query": {"x": np.zeros((12, 3))}}, mesh)


@pytest.mark.parametrize("mesh_shape", [(4, 2, 1), (2, 2, 2), (8, 1, 1)])
def test_sharded_forward_equals_single_device(cfg, model, mesh_shape):
  inputs = [
      [{"text": RNG.integers(1, 257, size=5 + 3 * b).astype(np.int32)},
       {"image": RNG.normal(size=(16, 8 * (1 + b % 4), 3)).astype(np.float32)},
       {"audio": RNG.normal(size=(8 + 7 * b, 32)).astype(np.float32)}][b % 3:]
      for b in range(8)
  ]
  side = pack_inputs(inputs, Layout.from_config(cfg, dict(text=1, image=1, audio=1)))
  forward = nnx.jit(lambda m, s: m(s))
  reference = np.asarray(forward(model, side))

  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape)))
  with jax.set_mesh(mesh):
    sharded = sharding.shard_model(nnx.clone(model), mesh)
    embeddings = forward(sharded, sharding.shard_batch(side, mesh))
  assert embeddings.sharding.spec[0] in (("data", "fsdp"), "data")
  np.testing.assert_allclose(np.asarray(embeddings), reference, rtol=1e-5, atol=1e-6)
