"""A vector index over gemb embeddings: exact search, MRL-truncated and int8/binary-quantised
search with float rescoring, saved to and loaded from a folder.

    index = Index(corpus_embeddings, kind="binary", dim=64, rescore=4)
    scores, indices = index.search(query_embeddings, k=10)
    index.save("runs/index"); index = Index.load("runs/index")

The searched form of the corpus lives on the accelerator(s): float32 rows, int8 codes (4x
smaller) or packed sign bits (32x smaller), of the first `dim` coordinates (re-normalised when
dim < the full width, the Matryoshka prefix). With `rescore=r`, the compressed search returns
r * k candidates per query and the float32 full-width embeddings, kept in host memory (memory
mapped after `load`), re-rank them exactly: a funnel that keeps device memory small.
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gemb.evaluate import quantization, search as search_lib
from gemb.evaluate.embeddings import mrl_prefix
from gemb.index import topk

FORMAT = "gemb-index"
FORMAT_VERSION = 1
CORPUS_AXIS = "corpus"


class Index:
  """Embeddings [M, D] searched by inner product (cosine for unit rows), best k per query."""

  def __init__(self, embeddings: np.ndarray, *, kind: str = "float", dim: int | None = None,
               rescore: int = 4, ids: Sequence | None = None, chunk_size: int = 4096,
               shard: bool = False, int8_scale_mode: str = "per_dim",
               _codes: np.ndarray | None = None, _scales: np.ndarray | None = None):
    """Builds the index.

    Args:
      embeddings: [M, D] float corpus embeddings (kept on the host for rescoring and saving).
      kind: the searched form: 'float', 'int8' or 'binary' (see gemb/index/topk.py).
      dim: search on the first `dim` coordinates, re-normalised (an MRL prefix); default D.
      rescore: candidates per neighbour re-ranked with the float full-width embeddings when
        the search is not exact (kind != 'float' or dim < D); 0 returns the compressed scores.
      ids: optional M corpus ids (ints or strings) that `search_ids` returns.
      chunk_size: corpus rows scored at a time on each device (memory ~ Q x chunk_size).
      shard: split the corpus rows over all of jax.devices() (for corpora larger than one
        device's memory); otherwise it lives on the default device.
      int8_scale_mode: 'per_dim' or 'global' int8 scales, calibrated on the corpus.
    """
    embeddings = embeddings if isinstance(embeddings, np.memmap) else np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or not np.issubdtype(
        embeddings.dtype, np.floating):
      raise ValueError(f"embeddings must be a non-empty float array [M, D], got "
                       f"{embeddings.dtype}{list(embeddings.shape)}")
    if kind not in topk.KINDS:
      raise ValueError(f"kind={kind!r} is not one of {topk.KINDS}")
    count, full_dim = embeddings.shape
    dim = full_dim if dim is None else int(dim)
    if not 0 < dim <= full_dim:
      raise ValueError(f"dim={dim} must lie in [1, {full_dim}] (the embedding width)")
    if rescore < 0:
      raise ValueError(f"rescore={rescore} must be >= 0 (0: no rescoring)")
    if ids is not None:
      ids = np.asarray(ids)
      if ids.shape != (count,):
        raise ValueError(f"ids has shape {list(ids.shape)}; it needs one id per embedding "
                         f"({count})")
    self.embeddings = embeddings.astype(np.float32, copy=False)
    self.kind, self.dim, self.full_dim, self.count = kind, dim, full_dim, count
    self.rescore, self.ids, self.int8_scale_mode = int(rescore), ids, int8_scale_mode

    searched = self._searched_rows(self.embeddings)
    if kind == "int8":
      self.scales = (quantization.int8_scales(searched, int8_scale_mode) if _scales is None
                     else np.asarray(_scales, np.float32))
      codes = quantization.quantize_int8(searched, self.scales) if _codes is None else _codes
    else:
      self.scales = None
      codes = quantization.binarize(searched) if kind == "binary" and _codes is None else (
          searched if _codes is None else _codes)
    self.codes = np.asarray(codes)  # [M, d] float32 / int8, or [M, ceil(d / 8)] uint8

    devices = jax.devices() if shard else [jax.devices()[0]]
    self.mesh = Mesh(np.asarray(devices), (CORPUS_AXIS,)) if shard else None
    rows_per_device = math.ceil(count / len(devices))
    self.chunk_size = max(1, min(int(chunk_size), rows_per_device))
    padded = len(devices) * math.ceil(rows_per_device / self.chunk_size) * self.chunk_size
    stored = np.zeros((padded, *self.codes.shape[1:]), self.codes.dtype)
    stored[:count] = self.codes
    placement = NamedSharding(self.mesh, P(CORPUS_AXIS)) if shard else devices[0]
    self._device_codes = jax.device_put(stored, placement)

  def _searched_rows(self, rows: np.ndarray) -> np.ndarray:
    """The first `dim` coordinates, re-normalised when dim < D (full width: as given)."""
    rows = np.asarray(rows, np.float32)
    return rows if self.dim == self.full_dim else mrl_prefix(rows, self.dim)

  @property
  def exact(self) -> bool:
    return self.kind == "float" and self.dim == self.full_dim

  def search(self, queries: np.ndarray, k: int = 10, rescore: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The k best corpus rows for each query.

    Args:
      queries: [Q, D] float query embeddings (full width; truncated here when dim < D).
      k: neighbours per query (capped at the corpus size).
      rescore: overrides the index's rescore factor for this call.
    Returns:
      scores [Q, k] float32 and corpus row indices [Q, k] int64, best first (ties: lower index
      first). Scores are exact inner products when rescored or exact, else the compressed
      search's scores (int8: q . dequantised c; binary: d - 2 * Hamming).
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.full_dim:
      raise ValueError(f"queries must be [Q, {self.full_dim}], got {list(queries.shape)}")
    k = min(int(k), self.count)
    if k < 1:
      raise ValueError(f"k={k} must be >= 1")
    rescore = self.rescore if rescore is None else int(rescore)
    rescoring = not self.exact and rescore > 0
    candidates = min(self.count, k * rescore) if rescoring else k
    prepared = topk.prepare_queries(self._searched_rows(queries), self.kind, self.scales,
                                    self.codes.shape[1])
    scores, indices = jax.device_get(topk.top_k(
        prepared, self._device_codes, k=candidates, kind=self.kind, chunk_size=self.chunk_size,
        num_valid=self.count, mesh=self.mesh))
    if not rescoring:
      return np.asarray(scores, np.float32), np.asarray(indices, np.int64)
    return search_lib.rescore(queries, self.embeddings, np.asarray(indices, np.int64), k)

  def search_ids(self, queries: np.ndarray, k: int = 10, rescore: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Like `search`, with the corpus ids given at construction instead of row indices."""
    if self.ids is None:
      raise ValueError("this index has no ids; pass ids=... when building it")
    scores, indices = self.search(queries, k, rescore)
    return scores, self.ids[indices]

  def nbytes(self) -> int:
    """Bytes of the searched (device) form of the corpus, padding excluded."""
    return int(self.codes.nbytes)

  def save(self, path: str) -> None:
    """Writes index.json and .npy arrays (embeddings, codes, scales, ids) into folder `path`."""
    os.makedirs(path, exist_ok=True)
    np.save(os.path.join(path, "embeddings.npy"), self.embeddings)
    if self.kind != "float":
      np.save(os.path.join(path, "codes.npy"), self.codes)
    if self.scales is not None:
      np.save(os.path.join(path, "scales.npy"), self.scales)
    if self.ids is not None:
      np.save(os.path.join(path, "ids.npy"), self.ids, allow_pickle=False)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
            "dim": self.dim, "full_dim": self.full_dim, "count": self.count,
            "rescore": self.rescore, "chunk_size": self.chunk_size,
            "int8_scale_mode": self.int8_scale_mode, "has_ids": self.ids is not None}
    with open(os.path.join(path, "index.json"), "w") as f:
      json.dump(meta, f, indent=2)

  @classmethod
  def load(cls, path: str, *, shard: bool = False, mmap: bool = True) -> "Index":
    """Reads an index written by `save`; the float embeddings are memory-mapped if `mmap`."""
    meta_path = os.path.join(path, "index.json")
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f"{path} is not a gemb index folder (no index.json)")
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"{meta_path}: format {meta.get('format')!r} version "
                       f"{meta.get('format_version')!r}; this gemb reads {FORMAT!r} version "
                       f"{FORMAT_VERSION}")

    def array(name, mmap_mode=None):
      file = os.path.join(path, name)
      return np.load(file, mmap_mode=mmap_mode, allow_pickle=False) if os.path.exists(
          file) else None
    return cls(array("embeddings.npy", "r" if mmap else None), kind=meta["kind"],
               dim=meta["dim"], rescore=meta["rescore"],
               ids=array("ids.npy") if meta["has_ids"] else None, chunk_size=meta["chunk_size"],
               shard=shard, int8_scale_mode=meta["int8_scale_mode"], _codes=array("codes.npy"),
               _scales=array("scales.npy"))


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
  """Mean over queries of |found ∩ exact| / k, for [Q, k] neighbour indices."""
  found, exact = np.asarray(found), np.asarray(exact)
  hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact)]
  return float(np.mean(hits) / exact.shape[1])
