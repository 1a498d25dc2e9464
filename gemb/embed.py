"""The in-framework embedding function: raw inputs (lists of parts) -> unit-norm embeddings.

`make_embed_fn` is what evaluation, distillation and export parity tests call; an exported
bundle (gemb.serve) provides the same function without flax.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from gemb import sharding
from gemb.data import features


def make_embed_fn(model_cfg, graphdef, encoder_params, rest, mesh: Mesh):
  """Returns embed_fn(inputs: list of raw inputs) -> float32 [N, embed_dim] (numpy).

  Inputs are featurised and packed with the layout their modalities need, padded to a multiple
  of the mesh's batch shards, and embedded under jit (one compilation per layout and size).
  Every process must call it with the same inputs (multi-host evaluation).
  """
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_sharding: NamedSharding = sharding.batch_sharding(mesh)

  @jax.jit
  def forward(params, side):
    return nnx.merge(graphdef, params, rest)(side, deterministic=True)

  def embed_fn(inputs: Sequence[Sequence[dict[str, Any]]]) -> np.ndarray:
    side = features.pack_raw_inputs(list(inputs), model_cfg)
    count = len(inputs)
    padded = -(-count // shards) * shards
    global_side = {}
    for key, value in side.items():
      if padded != count:  # repeat the last input; its embeddings are dropped below
        value = np.concatenate([value, np.repeat(value[-1:], padded - count, axis=0)])
      global_side[key] = jax.make_array_from_callback(
          value.shape, batch_sharding, lambda index, value=value: value[index])
    with jax.set_mesh(mesh):
      out = forward(encoder_params, global_side)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))[:count]

  return embed_fn
