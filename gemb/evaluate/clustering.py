"""Clustering: k-means on embeddings, scored by V-measure against the true groups.

Task data:
  inputs: list of inputs.
  labels: one group label (int or string) per input.
Metric: `v_measure`. k defaults to the number of distinct labels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gemb.evaluate import metrics, probes
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_inputs, embed_in_chunks,
                                      over_mrl_dims)


class Evaluator:
  """V-measure of seeded k-means (k-means++ init) clusters of unit-normalised embeddings."""

  def __init__(self, inputs: Sequence[Input], labels, *, batch_size: int = 256,
               mrl_dims: Sequence[int] = (), num_clusters: int | None = None, num_init: int = 3,
               max_steps: int = 100, seed: int = 0):
    self.inputs = check_inputs(inputs, "clustering inputs")
    self.labels = np.asarray(labels)
    if self.labels.shape != (len(self.inputs),):
      raise ValueError(f"clustering: {len(self.inputs)} inputs but labels of shape "
                       f"{self.labels.shape}; give one label per input.")
    self.num_clusters = num_clusters or len(np.unique(self.labels))
    self.batch_size, self.mrl_dims = batch_size, tuple(mrl_dims)
    self.num_init, self.max_steps, self.seed = num_init, max_steps, seed

  def run(self, embed_fn: EmbedFn) -> Metrics:
    embeddings = embed_in_chunks(embed_fn, self.inputs, self.batch_size)  # [N, D]
    yield from over_mrl_dims((embeddings,), self.mrl_dims, self._metrics)

  def _metrics(self, embeddings: np.ndarray) -> Metrics:
    clusters, _, _ = probes.kmeans(embeddings, self.num_clusters, seed=self.seed,
                                   num_init=self.num_init, max_steps=self.max_steps)
    yield "v_measure", metrics.v_measure(self.labels, clusters)
