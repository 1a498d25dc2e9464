"""Approximate nearest neighbours for large corpora on CPUs: a wrapper of faiss's HNSW graph.

Exact search (gemb/index/index.py) costs O(M * d) per query: on an accelerator it scans tens
of millions of int8/binary codes in milliseconds, but on CPUs it grows slow past about a
million vectors. There an HNSW graph answers in O(log M) distance evaluations. We wrap
faiss-cpu (Meta's library, maintained, wheels for every platform, the most used ANN package on
PyPI) instead of writing a graph index: its `IndexHNSWFlat` with the inner-product metric.
It is an optional dependency: `pip install faiss-cpu`.

    index = HnswIndex(corpus_embeddings, dim=256, rescore=4)   # MRL prefix graph + float rerank
    scores, indices = index.search(query_embeddings, k=10)
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from gemb.evaluate import search as search_lib
from gemb.evaluate.embeddings import mrl_prefix

FORMAT = "gemb-index"
FORMAT_VERSION = 1


def _faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("HnswIndex needs the optional package faiss-cpu (pip install faiss-cpu); "
                      "or use gemb.index.Index (exact / quantised search in jax)") from e
  return faiss


class HnswIndex:
  """Embeddings [M, D] in a faiss HNSW graph (inner product), best k per query, approximately."""

  def __init__(self, embeddings: np.ndarray, *, dim: int | None = None, neighbours: int = 32,
               ef_construction: int = 200, ef_search: int = 128, rescore: int = 0,
               ids: Sequence | None = None, _graph=None):
    """Builds the graph.

    Args:
      embeddings: [M, D] float corpus embeddings (kept on the host for rescoring and saving).
      dim: build the graph on the first `dim` coordinates, re-normalised (an MRL prefix).
      neighbours: HNSW links per node (faiss's M): memory and recall grow with it.
      ef_construction, ef_search: candidate list sizes when building and searching (recall
        against time).
      rescore: when > 0, the graph returns rescore * k candidates that the float full-width
        embeddings re-rank exactly.
      ids: optional M corpus ids that `search_ids` returns.
    """
    faiss = _faiss()
    embeddings = embeddings if isinstance(embeddings, np.memmap) else np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
      raise ValueError(f"embeddings must be a non-empty float array [M, D], got "
                       f"{list(embeddings.shape)}")
    self.count, self.full_dim = embeddings.shape
    self.dim = self.full_dim if dim is None else int(dim)
    if not 0 < self.dim <= self.full_dim:
      raise ValueError(f"dim={self.dim} must lie in [1, {self.full_dim}] (the embedding width)")
    self.embeddings = embeddings.astype(np.float32, copy=False)
    self.neighbours, self.ef_construction = int(neighbours), int(ef_construction)
    self.rescore = int(rescore)
    self.ids = None if ids is None else np.asarray(ids)
    if self.ids is not None and self.ids.shape != (self.count,):
      raise ValueError(f"ids has shape {list(self.ids.shape)}; it needs one id per embedding "
                       f"({self.count})")
    if _graph is None:
      _graph = faiss.IndexHNSWFlat(self.dim, self.neighbours, faiss.METRIC_INNER_PRODUCT)
      _graph.hnsw.efConstruction = self.ef_construction
      _graph.add(np.ascontiguousarray(self._searched_rows(self.embeddings)))
    self.graph = _graph
    self.graph.hnsw.efSearch = int(ef_search)

  def _searched_rows(self, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows if self.dim == self.full_dim else mrl_prefix(rows, self.dim)

  def search(self, queries: np.ndarray, k: int = 10, rescore: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """scores [Q, k] float32 and corpus row indices [Q, k] int64, best first (approximate)."""
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.full_dim:
      raise ValueError(f"queries must be [Q, {self.full_dim}], got {list(queries.shape)}")
    k = min(int(k), self.count)
    rescore = self.rescore if rescore is None else int(rescore)
    candidates = min(self.count, k * rescore) if rescore else k
    scores, indices = self.graph.search(np.ascontiguousarray(self._searched_rows(queries)),
                                        candidates)
    if rescore:
      return self._rescore(queries, indices.astype(np.int64), k)
    return scores.astype(np.float32), indices.astype(np.int64)

  def _rescore(self, queries: np.ndarray, candidates: np.ndarray, k: int, block: int = 256):
    """Exact full-width scores of the candidates, best k; faiss's -1 (no result) never wins."""
    out_scores, out_indices = [], []
    for q0 in range(0, len(queries), block):
      rows = candidates[q0:q0 + block]  # [q, R]
      exact = np.einsum("qd,qrd->qr", queries[q0:q0 + block],
                        self.embeddings[np.maximum(rows, 0)]).astype(np.float32)
      exact[rows < 0] = -np.inf
      scores, indices = search_lib.best_k(exact, rows, k)
      out_scores.append(scores)
      out_indices.append(indices)
    return np.concatenate(out_scores), np.concatenate(out_indices)

  def search_ids(self, queries: np.ndarray, k: int = 10, rescore: int | None = None):
    if self.ids is None:
      raise ValueError("this index has no ids; pass ids=... when building it")
    scores, indices = self.search(queries, k, rescore)
    return scores, self.ids[indices]

  def save(self, path: str) -> None:
    """Writes index.json, embeddings.npy, graph.faiss (and ids.npy) into folder `path`."""
    faiss = _faiss()
    os.makedirs(path, exist_ok=True)
    np.save(os.path.join(path, "embeddings.npy"), self.embeddings)
    if self.ids is not None:
      np.save(os.path.join(path, "ids.npy"), self.ids, allow_pickle=False)
    faiss.write_index(self.graph, os.path.join(path, "graph.faiss"))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "hnsw",
            "dim": self.dim, "full_dim": self.full_dim, "count": self.count,
            "neighbours": self.neighbours, "ef_construction": self.ef_construction,
            "ef_search": int(self.graph.hnsw.efSearch), "rescore": self.rescore,
            "has_ids": self.ids is not None}
    with open(os.path.join(path, "index.json"), "w") as f:
      json.dump(meta, f, indent=2)

  @classmethod
  def load(cls, path: str, *, mmap: bool = True) -> "HnswIndex":
    faiss = _faiss()
    with open(os.path.join(path, "index.json")) as f:
      meta = json.load(f)
    if meta.get("kind") != "hnsw":
      raise ValueError(f"{path} holds a {meta.get('kind')!r} index; use gemb.index.load")
    embeddings = np.load(os.path.join(path, "embeddings.npy"), mmap_mode="r" if mmap else None)
    ids = np.load(os.path.join(path, "ids.npy")) if meta["has_ids"] else None
    return cls(embeddings, dim=meta["dim"], neighbours=meta["neighbours"],
               ef_construction=meta["ef_construction"], ef_search=meta["ef_search"],
               rescore=meta["rescore"], ids=ids,
               _graph=faiss.read_index(os.path.join(path, "graph.faiss")))
