"""Reranking: order each query's own candidate list by cosine; MAP and MRR@10.

Task data:
  queries: list of inputs.
  candidates: per query, a list of candidate inputs (lists may differ in length).
  labels: per query, one 0/1 per candidate (1 = relevant); every query needs a relevant candidate.
Metrics: `map` (mean over queries of average precision) and `MRR@10`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gemb.evaluate import metrics
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_inputs, embed_in_chunks,
                                      over_mrl_dims)

MRR_CUTOFF = 10


class Evaluator:
  """Mean average precision of cosine-ranked candidate lists."""

  def __init__(self, queries: Sequence[Input], candidates: Sequence[Sequence[Input]], labels, *,
               batch_size: int = 256, mrl_dims: Sequence[int] = ()):
    self.queries = check_inputs(queries, "reranking queries")
    if len(candidates) != len(self.queries) or len(labels) != len(self.queries):
      raise ValueError(f"reranking: {len(self.queries)} queries but {len(candidates)} candidate "
                       f"lists and {len(labels)} label lists; give one of each per query.")
    self.labels = []
    for q, (items, marks) in enumerate(zip(candidates, labels)):
      marks = np.asarray(marks)
      if len(marks) != len(items) or not np.isin(marks, (0, 1)).all() or not marks.any():
        raise ValueError(f"reranking query {q}: labels {marks.tolist()} must be 0/1, one per "
                         f"candidate ({len(items)}), with at least one 1.")
      self.labels.append(marks.astype(bool))
    self.candidates = check_inputs([item for items in candidates for item in items],
                                   "reranking candidates")
    # query q owns [o_q, o_{q+1})
    self.offsets = np.cumsum([0] + [len(items) for items in candidates])
    self.batch_size, self.mrl_dims = batch_size, tuple(mrl_dims)

  def run(self, embed_fn: EmbedFn) -> Metrics:
    queries = embed_in_chunks(embed_fn, self.queries, self.batch_size)        # [Q, D]
    # [sum of list lengths, D]
    candidates = embed_in_chunks(embed_fn, self.candidates, self.batch_size)
    yield from over_mrl_dims((queries, candidates), self.mrl_dims, self._metrics)

  def _metrics(self, queries: np.ndarray, candidates: np.ndarray) -> Metrics:
    scores = [candidates[start:end] @ query
              for query, start, end in zip(queries, self.offsets[:-1], self.offsets[1:])]
    yield "map", metrics.mean_average_precision(scores, self.labels)
    gains = np.zeros((len(scores), MRR_CUTOFF))
    for q, (s, marks) in enumerate(zip(scores, self.labels)):
      ranked = marks[np.argsort(-s, kind="stable")][:MRR_CUTOFF]
      gains[q, :len(ranked)] = ranked
    yield f"MRR@{MRR_CUTOFF}", metrics.mrr_at_k(gains, MRR_CUTOFF)
