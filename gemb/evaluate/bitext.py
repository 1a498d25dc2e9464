"""Bitext mining: the nearest neighbour (cosine) of each source input among all targets should be
its aligned translation.

Task data:
  source, target: equally long lists of inputs; source[i] and target[i] say the same thing
  (e.g. ToyWorld captions in two languages).
Metrics: `accuracy` (nearest target is the aligned one) and `f1` (macro F1 over target ids with
the nearest target as the prediction, as MTEB). `bidirectional=True` adds target -> source as
`accuracy@reverse` and `f1@reverse`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from gemb.evaluate import metrics, search
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_inputs, embed_in_chunks,
                                      over_mrl_dims)


class Evaluator:
  """Nearest-neighbour translation matching between two aligned input lists."""

  def __init__(self, source: Sequence[Input], target: Sequence[Input], *, batch_size: int = 256,
               mrl_dims: Sequence[int] = (), bidirectional: bool = False, query_block: int = 1024,
               corpus_block: int = 8192):
    self.source = check_inputs(source, "bitext source")
    self.target = check_inputs(target, "bitext target")
    if len(self.source) != len(self.target):
      raise ValueError(f"bitext: {len(self.source)} source but {len(self.target)} target inputs; "
                       "they must be aligned one to one.")
    self.batch_size, self.mrl_dims, self.bidirectional = batch_size, tuple(mrl_dims), bidirectional
    self.search = functools.partial(search.top_k, query_block=query_block,
                                    corpus_block=corpus_block)

  def run(self, embed_fn: EmbedFn) -> Metrics:
    source = embed_in_chunks(embed_fn, self.source, self.batch_size)  # [N, D]
    target = embed_in_chunks(embed_fn, self.target, self.batch_size)  # [N, D]
    yield from over_mrl_dims((source, target), self.mrl_dims, self._metrics)

  def _metrics(self, source: np.ndarray, target: np.ndarray) -> Metrics:
    directions = [("", source, target)] + (
        [("@reverse", target, source)] if self.bidirectional else [])
    gold = np.arange(len(source))
    for suffix, queries, corpus in directions:
      _, nearest = self.search(queries, corpus, 1)
      yield f"accuracy{suffix}", metrics.accuracy(gold, nearest[:, 0])
      yield f"f1{suffix}", metrics.macro_f1(gold, nearest[:, 0])
