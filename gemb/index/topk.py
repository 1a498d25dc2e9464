"""Exact top-k of inner-product scores over a corpus in chunks, optionally sharded over devices.

The corpus is scanned `chunk_size` rows at a time: each chunk's [Q, C] scores are reduced to
their own best k and merged into the running best k, so the [Q, M] score matrix never exists.
With a mesh, each device scans its own rows of the corpus and the per-device best k are gathered
and merged. Order: score descending, then corpus index ascending (lax.top_k keeps the lower
position first on ties, and every merge puts lower indices first).

A corpus is stored in one of three forms (`kind`), each scored by a float matmul:

  float   [M, d] float32 rows                   scores = q . c
  int8    [M, d] int8 codes, scales [d]         scores = (q * scales) . codes  (asymmetric: the
                                                query stays float, the corpus is dequantised)
  binary  [M, ceil(d / 8)] uint8 packed sign    scores = s(q) . s(c) = d - 2 * Hamming, with
          bits (np.packbits, bit = x > 0)       s() the +-1 signs; unpacked per chunk so the
                                                matmul units do the popcount
`prepare_queries` turns float queries into the operand each kind's matmul needs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

KINDS = ("float", "int8", "binary")


def prepare_queries(queries: np.ndarray, kind: str, scales: np.ndarray | None = None,
                    code_bytes: int | None = None) -> np.ndarray:
  """Float queries [Q, d] -> the float32 left operand of `kind`'s score matmul.

  float: the queries; int8: queries * scales (folds the corpus scales into the query);
  binary: +-1 signs (+1 where q > 0), zero-padded to 8 * code_bytes columns.
  """
  queries = np.asarray(queries, np.float32)
  if kind == "float":
    return queries
  if kind == "int8":
    return queries * np.asarray(scales, np.float32)
  if kind == "binary":
    signs = np.where(queries > 0, 1.0, -1.0).astype(np.float32)
    return np.pad(signs, ((0, 0), (0, 8 * code_bytes - queries.shape[1])))
  raise ValueError(f"index kind {kind!r} is not one of {KINDS}")


def _unpack_signs(packed: jax.Array) -> jax.Array:
  """[C, W] uint8 packed bits (most significant bit first, as np.packbits) -> [C, 8W] +-1."""
  shifts = jnp.arange(7, -1, -1, dtype=jnp.uint8)
  bits = (packed[:, :, None] >> shifts) & 1  # [C, W, 8]
  return bits.reshape(packed.shape[0], -1).astype(jnp.float32) * 2.0 - 1.0


def _scores(queries: jax.Array, block: jax.Array, kind: str) -> jax.Array:
  """[Q, d'] prepared queries x one corpus chunk -> [Q, C] float32 scores."""
  if kind == "binary":
    block = _unpack_signs(block)
  return jnp.dot(queries, block.astype(jnp.float32).T, preferred_element_type=jnp.float32)


def _scan_top_k(queries, corpus, k: int, kind: str, chunk_size: int, offset, num_valid: int):
  """Best k of `corpus` rows (global indices offset + row) for each query; rows whose global
  index is >= num_valid are padding and never chosen."""
  rows = corpus.shape[0]
  chunks = corpus.reshape(rows // chunk_size, chunk_size, *corpus.shape[1:])
  starts = jnp.arange(0, rows, chunk_size, dtype=jnp.int32)
  n_queries = queries.shape[0]

  def merge(best, chunk_and_start):
    best_scores, best_indices = best
    chunk, start = chunk_and_start
    scores = _scores(queries, chunk, kind)  # [Q, C]
    indices = offset + start + jnp.arange(chunk_size, dtype=jnp.int32)  # [C]
    scores = jnp.where(indices < num_valid, scores, -jnp.inf)
    chunk_scores, picked = jax.lax.top_k(scores, min(k, chunk_size))
    scores = jnp.concatenate([best_scores, chunk_scores], axis=1)  # [Q, k + k']
    indices = jnp.concatenate([best_indices, indices[picked]], axis=1)
    top_scores, top = jax.lax.top_k(scores, k)
    return (top_scores, jnp.take_along_axis(indices, top, axis=1)), None

  init = (jnp.full((n_queries, k), -jnp.inf, jnp.float32), jnp.full((n_queries, k), -1, jnp.int32))
  (scores, indices), _ = jax.lax.scan(merge, init, (chunks, starts))
  return scores, indices


@functools.partial(jax.jit, static_argnames=("k", "kind", "chunk_size", "num_valid", "mesh"))
def top_k(queries: jax.Array, corpus: jax.Array, *, k: int, kind: str, chunk_size: int,
          num_valid: int, mesh: Mesh | None = None) -> tuple[jax.Array, jax.Array]:
  """For each query, the k best corpus rows: scores [Q, k] float32 and indices [Q, k] int32.

  Args:
    queries: [Q, d'] from `prepare_queries`.
    corpus: [M_pad, ...] stored rows (see the module docstring); M_pad is a multiple of
      chunk_size (times the mesh size when sharded); rows from num_valid on are padding.
    k: neighbours per query, at most num_valid.
    mesh: a one-axis mesh whose axis splits the corpus rows (the corpus should already be
      placed with NamedSharding(mesh, P(axis))), or None for one device.
  """
  if not 0 < k <= num_valid:
    raise ValueError(f"k={k} must lie in [1, {num_valid}] (the corpus size)")
  if mesh is None:
    return _scan_top_k(queries, corpus, k, kind, chunk_size, 0, num_valid)
  (axis,) = mesh.axis_names
  shard_rows = corpus.shape[0] // mesh.shape[axis]

  def per_shard(queries, shard):
    offset = jax.lax.axis_index(axis).astype(jnp.int32) * shard_rows
    scores, indices = _scan_top_k(queries, shard, k, kind, chunk_size, offset, num_valid)
    # [Q, devices * k], lower devices (lower indices) first, so ties keep index order.
    scores = jax.lax.all_gather(scores, axis, axis=1, tiled=True)
    indices = jax.lax.all_gather(indices, axis, axis=1, tiled=True)
    top_scores, top = jax.lax.top_k(scores, k)
    return top_scores, jnp.take_along_axis(indices, top, axis=1)

  return jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()),
                       check_vma=False)(queries, corpus)

