"""Semantic textual similarity: Spearman correlation between pair cosine and graded human scores.

Task data:
  inputs_a, inputs_b: two equally long lists of inputs; pair i is (inputs_a[i], inputs_b[i]).
  scores: [P] graded similarity of each pair (any scale; only the ranking matters).
Metric: `spearman`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gemb.evaluate import metrics
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_pairs, embed_in_chunks,
                                      over_mrl_dims)


class Evaluator:
  """Spearman of cos(a_i, b_i) against scores_i."""

  def __init__(self, inputs_a: Sequence[Input], inputs_b: Sequence[Input], scores, *,
               batch_size: int = 256, mrl_dims: Sequence[int] = ()):
    self.inputs_a, self.inputs_b, self.scores = check_pairs(inputs_a, inputs_b, scores, "sts")
    self.scores = self.scores.astype(np.float64)
    self.batch_size, self.mrl_dims = batch_size, tuple(mrl_dims)

  def run(self, embed_fn: EmbedFn) -> Metrics:
    a = embed_in_chunks(embed_fn, self.inputs_a, self.batch_size)  # [P, D]
    b = embed_in_chunks(embed_fn, self.inputs_b, self.batch_size)  # [P, D]
    yield from over_mrl_dims((a, b), self.mrl_dims, self._metrics)

  def _metrics(self, a: np.ndarray, b: np.ndarray) -> Metrics:
    yield "spearman", metrics.spearman((a * b).sum(axis=1), self.scores)
