"""The device mesh, and where parameters and batches live on it.

One mesh with three named axes:

  data    pure data parallelism: parameters replicated, batch split;
  fsdp    batch split AND parameters split along their `embed` dimension (ZeRO-3 style);
  tensor  Megatron-style model parallelism: attention heads, MLP hidden units, vocabulary.

Parameters carry *logical* axis names (`nnx.with_partitioning(init, ("embed", "mlp"))`), and
`RULES`, the one table in this file, maps each logical name to a mesh axis (or None =
replicated). The same code runs on one CPU and on a pod: a mesh axis of size 1 shards nothing.
A dimension that the mapped mesh axes do not divide evenly is replicated instead (e.g. a part
index table with 8 rows on a tensor axis of 3), so small tables never block a mesh shape.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (a name, a tuple of names, or None = replicated).
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),  # examples in a batch
    ("embed", "fsdp"),            # model width D
    ("mlp", "tensor"),            # MLP hidden units F
    ("heads", "tensor"),          # attention heads H
    ("kv", None),                 # per-head width D / H
    ("vocab", "tensor"),          # text vocabulary
    ("patch", None),              # flattened pixels / mel bins of one patch or tubelet
    ("positions", None),          # rows of a learned position table
    ("parts", None),              # rows of the part-index table
    ("projection", None),         # output embedding width embed_dim
    ("length", None),             # sequence positions of activations
    ("layers", None),             # the stacked blocks of a scanned encoder (scan_layers)
)


def logical_axes(*names: str | None) -> dict[str, Any]:
  """Variable metadata naming the logical axis of each dimension of a parameter.

  Use as `nnx.Linear(..., kernel_metadata=logical_axes("embed", "mlp"))`. Placement on a mesh
  happens later, by `param_shardings` through `RULES`, not when the parameter is created.
  """
  return {"out_sharding": tuple(names), "eager_sharding": False}


def mesh_shape(mesh_cfg: Mapping[str, int], device_count: int) -> dict[str, int]:
  """The ('data', 'fsdp', 'tensor') sizes of `config.mesh` on `device_count` devices.

  Missing axes are 1; at most one may be -1, which takes all remaining devices.
  Raises ValueError naming the config keys when the sizes cannot tile the devices.
  """
  unknown = set(mesh_cfg) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; known: {MESH_AXES}")
  sizes = [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if device_count % fixed:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes multiply to "
                       f"{fixed}, which does not divide the {device_count} devices")
    sizes[sizes.index(-1)] = device_count // fixed
  if math.prod(sizes) != device_count:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices but {device_count} are available; set one axis to -1 to fill")
  return dict(zip(MESH_AXES, sizes))


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh from `config.mesh` (see `mesh_shape`).

  Args:
    mesh_cfg: sizes for 'data', 'fsdp', 'tensor'.
    devices: the devices to use (default: all of `jax.devices()`).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = tuple(mesh_shape(mesh_cfg, len(devices)).values())
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(sizes, MESH_AXES, axis_types=auto, devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    axis_sizes: Mapping[str, int], rules=RULES) -> P:
  """Maps logical axis names of an array of `shape` to a PartitionSpec through `rules`.

  A dimension that its mesh axes do not divide is replicated; a mesh axis already used by an
  earlier dimension is not used twice.
  """
  table = dict(rules)
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no entry in gemb.sharding.RULES; add one")
    mesh_axes = table[name]
    mesh_axes = () if mesh_axes is None else (
        (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes))
    mesh_axes = tuple(a for a in mesh_axes if a in axis_sizes and a not in used)
    if not mesh_axes or size % math.prod(axis_sizes[a] for a in mesh_axes):
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def _variable_spec(variable: nnx.Variable, mesh: Mesh) -> P:
  value = variable.get_value()
  names = variable.get_metadata().get("out_sharding")
  if not names or not hasattr(value, "shape"):
    return P()
  return logical_to_spec(names, value.shape, dict(mesh.shape))


def param_shardings(model_state: nnx.State, mesh: Mesh) -> nnx.State:
  """NamedShardings for every Variable of `model_state` (same tree), from its logical names.

  Variables without logical names (RNG keys and counts, ...) are replicated.
  """
  return jax.tree.map(
      lambda v: v.replace(NamedSharding(mesh, _variable_spec(v, mesh))),
      model_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
  """Moves `model`'s variables onto `mesh` as the rules say (in place; returns `model`)."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, param_shardings(state, mesh)))
  return model


def create_sharded(make_model, mesh: Mesh) -> nnx.Module:
  """Creates `make_model()` with every parameter born sharded (never whole on one device)."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make_model))
  shardings = param_shardings(abstract_state, mesh)
  state = jax.jit(lambda: nnx.state(make_model()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over ('data', 'fsdp'); other dimensions replicated."""
  return NamedSharding(mesh, P(dict(RULES)["batch"]))


def shard_batch(host_batch: Any, mesh: Mesh) -> Any:
  """Turns this host's slice of a batch (a pytree of numpy arrays, e.g. {"query": side,
  "positive": side}) into global arrays on `mesh`, split over ('data', 'fsdp').

  Every host passes its own rows (`B_global / process_count` of them, in process order);
  `jax.make_array_from_process_local_data` assembles the global [B_global, ...] arrays.
  """
  sharding = batch_sharding(mesh)
  per_host = max(math.prod(mesh.shape[a] for a in ("data", "fsdp")) // jax.process_count(), 1)

  def put(path, value):
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[0] % per_host:
      raise ValueError(f"batch array {jax.tree_util.keystr(path)} has shape {value.shape}; its "
                       f"leading (batch) dimension must be a multiple of the {per_host} data x "
                       f"fsdp shards on this host (set the batch size accordingly)")
    return jax.make_array_from_process_local_data(sharding, value)
  return jax.tree_util.tree_map_with_path(put, host_batch)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation, by logical names, when a mesh is set.

  Outside `jax.set_mesh(mesh)` (single device, tests) this is the identity.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(
      x, logical_to_spec(logical_axes, x.shape, dict(mesh.shape)))


def sharding_on(x: jax.Array, mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """x's sharding if it is already on `mesh`, else replicated on it (optimizer counters, step)."""
  if isinstance(x.sharding, jax.sharding.NamedSharding) and x.sharding.mesh == mesh:
    return x.sharding
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_like(tree):
  """ShapeDtypeStructs with the shardings of `tree`'s arrays (a restore target for orbax)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
