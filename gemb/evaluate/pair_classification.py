"""Pair classification: is pair i a match (paraphrase, duplicate, same object)? Scored by cosine.

Task data:
  inputs_a, inputs_b: two equally long lists of inputs; pair i is (inputs_a[i], inputs_b[i]).
  labels: [P] 1 for a matching pair, 0 otherwise (at least one 1).
Metrics: `ap` (average precision of cosine as the match score) and `f1` (best F1 over cosine
thresholds, MTEB's max F1; it picks the threshold on the test pairs, so it is optimistic).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gemb.evaluate import metrics
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_pairs, embed_in_chunks,
                                      over_mrl_dims)


class Evaluator:
  """Average precision (and best F1) of cos(a_i, b_i) for binary pair labels."""

  def __init__(self, inputs_a: Sequence[Input], inputs_b: Sequence[Input], labels, *,
               batch_size: int = 256, mrl_dims: Sequence[int] = ()):
    self.inputs_a, self.inputs_b, labels = check_pairs(inputs_a, inputs_b, labels,
                                                       "pair_classification")
    if not np.isin(labels, (0, 1)).all() or not labels.any():
      raise ValueError("pair_classification labels must be 0/1 with at least one 1 "
                       "(a matching pair).")
    self.labels = labels.astype(bool)
    self.batch_size, self.mrl_dims = batch_size, tuple(mrl_dims)

  def run(self, embed_fn: EmbedFn) -> Metrics:
    a = embed_in_chunks(embed_fn, self.inputs_a, self.batch_size)  # [P, D]
    b = embed_in_chunks(embed_fn, self.inputs_b, self.batch_size)  # [P, D]
    yield from over_mrl_dims((a, b), self.mrl_dims, self._metrics)

  def _metrics(self, a: np.ndarray, b: np.ndarray) -> Metrics:
    cosine = (a * b).sum(axis=1)
    yield "ap", metrics.average_precision(cosine, self.labels)
    yield "f1", metrics.best_f1(cosine, self.labels)
