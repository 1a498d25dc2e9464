"""Vector index over embeddings: exact, MRL-truncated and int8/binary-quantised top-k search in
jax (gemb/index/index.py, kernels in gemb/index/topk.py), and an HNSW graph from faiss for large
corpora on CPUs (gemb/index/ann.py, optional faiss-cpu).
"""
import json
import os

from gemb.index.ann import HnswIndex  # noqa: F401
from gemb.index.index import Index, recall_at_k  # noqa: F401


def load(path: str, **kwargs):
  """Loads a saved index of any kind (an `Index`, or an `HnswIndex` for kind 'hnsw')."""
  with open(os.path.join(path, "index.json")) as f:
    kind = json.load(f).get("kind")
  return (HnswIndex if kind == "hnsw" else Index).load(path, **kwargs)
