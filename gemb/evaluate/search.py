"""Exact top-k nearest-neighbour search, blockwise, so the [Q, M] score matrix never exists at once.

Each (query block x corpus block) of scores is reduced to its own best k (or, once every query
holds k, to the few entries that beat its current k-th best), which is merged into the running
best k. Order is score descending, then corpus index ascending, so the result is the same for
every block size (ties included) and equals a full stable sort.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # ([q, ...], [m, ...]) -> [q, m]


def dot_scores(queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
  """[q, D] x [m, D] -> [q, m] inner products (cosine for unit rows)."""
  return queries @ corpus.T


def best_k(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k best of each row of candidates ([q, n] scores and indices), by score desc then index
  asc."""
  order = np.lexsort((indices, -scores), axis=-1)[:, :k]  # last key is the primary one
  return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def _block_top_k(scores: np.ndarray, offset: int, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Best k of a [q, m] score block whose columns are corpus items offset..offset+m-1."""
  q, m = scores.shape
  if m <= k:
    return best_k(scores, np.broadcast_to(np.arange(offset, offset + m), (q, m)), k)
  picked = np.argpartition(scores, m - k, axis=1)[:, m - k:]  # [q, k], unordered
  picked_scores = np.take_along_axis(scores, picked, 1)
  # argpartition breaks ties at the k-th score arbitrarily; redo such rows with a stable sort.
  tied = (scores >= picked_scores.min(axis=1, keepdims=True)).sum(axis=1) > k
  if tied.any():
    rows = np.flatnonzero(tied)
    picked[rows] = np.argsort(-scores[rows], axis=1, kind="stable")[:, :k]
    picked_scores[rows] = np.take_along_axis(scores[rows], picked[rows], 1)
  return best_k(picked_scores, picked + offset, k)


def _block_survivors(scores: np.ndarray, offset: int, threshold: np.ndarray, k: int):
  """Entries of a [q, m] block that beat each row's current k-th best score, padded to [q, width].

  Blocks come in increasing index order, so a new entry that only ties the k-th best loses the
  index tie-break: strictly greater is exact. Returns None when survivors are too many to be
  worth it (the caller then reduces the block with `_block_top_k`).
  """
  rows, cols = np.divmod(np.flatnonzero(scores > threshold[:, None]), scores.shape[1])  # row-major
  counts = np.bincount(rows, minlength=len(scores))
  width = int(counts.max(initial=0))
  if width > max(4 * k, 64):
    return None
  position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within row
  survivor_scores = np.full((len(scores), width), -np.inf, np.float32)
  survivor_indices = np.zeros((len(scores), width), np.int64)
  survivor_scores[rows, position] = scores[rows, cols]
  survivor_indices[rows, position] = cols + offset
  return survivor_scores, survivor_indices


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, *, score_fn: ScoreFn = dot_scores,
          query_block: int = 1024, corpus_block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
  """For each query, the k highest-scoring corpus rows.

  Args:
    queries: [Q, ...] rows given to `score_fn`.
    corpus: [M, ...] rows given to `score_fn`.
    k: neighbours kept per query (capped at M).
    score_fn: ([q, ...], [m, ...]) -> [q, m] scores, higher is nearer (default: inner product).
    query_block, corpus_block: block sizes; peak memory is about query_block x corpus_block scores.
  Returns:
    scores [Q, k] float32 and corpus indices [Q, k] int64, best first.
  """
  if k < 1:
    raise ValueError(f"k={k}; top_k needs k >= 1.")
  k = min(k, len(corpus))
  all_scores, all_indices = [], []
  for q0 in range(0, len(queries), query_block):
    query_rows = queries[q0:q0 + query_block]
    best_scores = np.full((len(query_rows), 0), -np.inf, np.float32)
    best_indices = np.zeros((len(query_rows), 0), np.int64)
    for c0 in range(0, len(corpus), corpus_block):
      block = np.asarray(score_fn(query_rows, corpus[c0:c0 + corpus_block]), np.float32)
      # Once every row holds k, most of a block cannot enter it: keep only what beats the k-th.
      survivors = (_block_survivors(block, c0, best_scores[:, -1], k)
                   if best_scores.shape[1] == k else None)
      block_scores, block_indices = (survivors if survivors is not None
                                     else _block_top_k(block, c0, k))
      best_scores, best_indices = best_k(np.concatenate([best_scores, block_scores], 1),
                                          np.concatenate([best_indices, block_indices], 1), k)
    all_scores.append(best_scores)
    all_indices.append(best_indices)
  return np.concatenate(all_scores), np.concatenate(all_indices)


def rescore(queries: np.ndarray, corpus: np.ndarray, candidates: np.ndarray, k: int, *,
            query_block: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Re-ranks each query's candidate corpus indices by inner product with the given rows.

  Used after a search over compressed codes: queries [Q, D] and corpus [M, D] are the float
  embeddings, candidates [Q, R] the indices the compressed search returned. Returns the best k
  as scores [Q, k] and indices [Q, k], in the same order convention as `top_k`.
  """
  all_scores, all_indices = [], []
  for q0 in range(0, len(queries), query_block):
    rows = candidates[q0:q0 + query_block]                                   # [q, R]
    scores = np.einsum("qd,qrd->qr", queries[q0:q0 + query_block], corpus[rows]).astype(np.float32)
    block_scores, block_indices = best_k(scores, rows, k)
    all_scores.append(block_scores)
    all_indices.append(block_indices)
  return np.concatenate(all_scores), np.concatenate(all_indices)
