"""Retrieval: rank a corpus for each query by cosine; R@k, NDCG@10, MRR@10.

Task data:
  queries: list of inputs (an input is a list of parts, e.g. [{"text": "a red cube"}]).
  corpus: list of inputs.
  relevant: which corpus items answer each query, one of
    - a list (one entry per query) of sets/lists of corpus indices (binary relevance),
    - a list of dicts {corpus index: grade > 0} (graded relevance, used by NDCG),
    - a numpy qrels array [P, 2] of (query index, corpus index) or [P, 3] with a grade column.
  Every query needs at least one relevant corpus item.

Options: `bidirectional=True` also ranks queries for each corpus item (e.g. text->image and
image->text from one task), reported with the suffix `@reverse`; corpus items no query points at
are skipped as reverse queries. `quantization=("int8", "binary")` adds the same metrics with the
embeddings compressed (`@int8`, `@binary`) and with the compressed top-`rescore_k` re-ranked by
float cosine (`@int8_rescore`, `@binary_rescore`), plus `bytes_per_vector[@kind]` and
`compression@kind` (float32 bytes / compressed bytes).
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from gemb.evaluate import metrics, search
from gemb.evaluate import quantization as quant
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_inputs, embed_in_chunks,
                                      over_mrl_dims)

Relevance = list[dict[int, float]]  # per query: {corpus index: grade > 0}
NDCG_AND_MRR_CUTOFF = 10  # the field's standard cut-off for NDCG@10 and MRR@10 (names are fixed)


def as_relevance(relevant, num_queries: int, num_corpus: int) -> Relevance:
  """Normalises any accepted `relevant` format to one {corpus index: grade} dict per query."""
  if isinstance(relevant, np.ndarray):
    if relevant.ndim != 2 or relevant.shape[1] not in (2, 3):
      raise ValueError(f"qrels array has shape {relevant.shape}; expected [P, 2] (query, corpus) "
                       "or [P, 3] (query, corpus, grade).")
    relevance = [{} for _ in range(num_queries)]
    for row in relevant:
      query, item = int(row[0]), int(row[1])
      if not 0 <= query < num_queries:
        raise ValueError(f"qrels query index {query} is outside 0..{num_queries - 1}.")
      relevance[query][item] = float(row[2]) if len(row) == 3 else 1.0
  else:
    relevant = list(relevant)
    if len(relevant) != num_queries:
      raise ValueError(f"`relevant` has {len(relevant)} entries for {num_queries} queries; give "
                       "one set (or {index: grade} dict) per query, or a numpy qrels array.")
    relevance = [{int(i): float(g) for i, g in r.items()} if isinstance(r, dict)
                 else {int(i): 1.0 for i in r} for r in relevant]
  for query, grades in enumerate(relevance):
    for item in grades:
      if not 0 <= item < num_corpus:
        raise ValueError(f"query {query} points at corpus index {item}, outside "
                         f"0..{num_corpus - 1}.")
  return [{i: g for i, g in grades.items() if g > 0} for grades in relevance]


def reverse_relevance(relevance: Relevance, num_corpus: int) -> tuple[np.ndarray, Relevance]:
  """Corpus items that some query points at, and for each of them {query index: grade}."""
  reverse = [{} for _ in range(num_corpus)]
  for query, grades in enumerate(relevance):
    for item, grade in grades.items():
      reverse[item][query] = grade
  rows = np.array([i for i, r in enumerate(reverse) if r], np.int64)
  return rows, [reverse[i] for i in rows]


def ranking_metrics(ranked: np.ndarray, relevance: Relevance, ks: Sequence[int], recall_mode: str,
                    suffix: str = "") -> Metrics:
  """R@k for each k, NDCG@10 and MRR@10 of ranked corpus indices [Q, K] against `relevance`."""
  gains = np.array([[grades.get(int(i), 0.0) for i in row]
                    for row, grades in zip(ranked, relevance)],
                   np.float64).reshape(len(ranked), -1)
  num_relevant = np.array([len(grades) for grades in relevance])
  ideal = np.zeros((len(relevance), NDCG_AND_MRR_CUTOFF))
  for q, grades in enumerate(relevance):
    top = sorted(grades.values(), reverse=True)[:NDCG_AND_MRR_CUTOFF]
    ideal[q, :len(top)] = top
  for k in ks:
    yield f"R@{k}{suffix}", metrics.recall_at_k(gains, num_relevant, k, recall_mode)
  yield f"NDCG@{NDCG_AND_MRR_CUTOFF}{suffix}", metrics.ndcg_at_k(gains, ideal, NDCG_AND_MRR_CUTOFF)
  yield f"MRR@{NDCG_AND_MRR_CUTOFF}{suffix}", metrics.mrr_at_k(gains, NDCG_AND_MRR_CUTOFF)


class Evaluator:
  """Cosine retrieval of `corpus` items for `queries` (see the module docstring for the data)."""

  def __init__(self, queries: Sequence[Input], corpus: Sequence[Input], relevant, *,
               batch_size: int = 256, mrl_dims: Sequence[int] = (), ks: Sequence[int] = (1, 5, 10),
               recall: str = "hit", bidirectional: bool = False, quantization: Sequence[str] = (),
               int8_scale: str = "per_dim", rescore_k: int = 100, query_block: int = 1024,
               corpus_block: int = 8192):
    self.queries = check_inputs(queries, "retrieval queries")
    self.corpus = check_inputs(corpus, "retrieval corpus")
    self.relevance = as_relevance(relevant, len(self.queries), len(self.corpus))
    missing = [q for q, grades in enumerate(self.relevance) if not grades]
    if missing:
      raise ValueError(f"queries {missing[:10]} have no relevant corpus item; drop them from the "
                       "task or fix `relevant`.")
    self.reverse_rows, self.reverse = reverse_relevance(self.relevance, len(self.corpus))
    unknown = set(quantization) - set(quant.KINDS)
    if unknown:
      raise ValueError(f"quantization {sorted(unknown)} unknown; choose from {quant.KINDS}.")
    if int8_scale not in ("per_dim", "global"):
      raise ValueError(f"int8_scale={int8_scale!r}; choose 'per_dim' or 'global'.")
    if not ks or min(ks) < 1:
      raise ValueError(f"ks={ks}; give positive cut-offs, e.g. (1, 5, 10).")
    if recall not in ("hit", "fraction"):
      raise ValueError(f"recall={recall!r}; choose 'hit' (any relevant in top k) or 'fraction'.")
    self.depth = max(max(ks), NDCG_AND_MRR_CUTOFF)
    if quantization and rescore_k < self.depth:
      raise ValueError(f"rescore_k={rescore_k} must be >= {self.depth} (the deepest cut-off).")
    self.batch_size, self.mrl_dims, self.ks, self.recall = (batch_size, tuple(mrl_dims), tuple(ks),
                                                            recall)
    self.bidirectional, self.quantization = bidirectional, tuple(quantization)
    self.int8_scale, self.rescore_k = int8_scale, rescore_k
    self.search = functools.partial(search.top_k, query_block=query_block,
                                    corpus_block=corpus_block)

  def run(self, embed_fn: EmbedFn) -> Metrics:
    query_embeddings = embed_in_chunks(embed_fn, self.queries, self.batch_size)   # [Q, D]
    corpus_embeddings = embed_in_chunks(embed_fn, self.corpus, self.batch_size)   # [M, D]
    yield from over_mrl_dims((query_embeddings, corpus_embeddings), self.mrl_dims, self._metrics)

  def _metrics(self, queries: np.ndarray, corpus: np.ndarray) -> Metrics:
    yield from self._direction(queries, corpus, self.relevance, "")
    if self.bidirectional:
      yield from self._direction(corpus[self.reverse_rows], queries, self.reverse, "@reverse")
    dim = queries.shape[1]
    if self.quantization:
      yield "bytes_per_vector", float(quant.bytes_per_vector(dim))
    for kind in self.quantization:
      compressed = quant.bytes_per_vector(dim, kind)
      yield f"bytes_per_vector@{kind}", float(compressed)
      yield f"compression@{kind}", quant.bytes_per_vector(dim) / compressed

  def _direction(self, queries: np.ndarray, corpus: np.ndarray, relevance: Relevance,
                 suffix: str) -> Metrics:
    _, ranked = self.search(queries, corpus, self.depth)
    yield from ranking_metrics(ranked, relevance, self.ks, self.recall, suffix)
    for kind in self.quantization:
      # One search over the compressed codes; its first `depth` are the compressed ranking (the
      # order is deterministic, so a deeper search starts with the shallower one).
      _, candidates = self.search(*self._decode(kind, queries, corpus), self.rescore_k)
      yield from ranking_metrics(candidates[:, :self.depth], relevance, self.ks, self.recall,
                                 f"{suffix}@{kind}")
      _, ranked = search.rescore(queries, corpus, candidates, self.depth)
      yield from ranking_metrics(ranked, relevance, self.ks, self.recall,
                                 f"{suffix}@{kind}_rescore")

  def _decode(self, kind: str, queries: np.ndarray,
              corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Queries and corpus as their compressed codes read back to float32, whose inner products
    are the compressed scores: int8 codes times scales, or the +-1 signs of the packed bits
    (inner product = D - 2 * Hamming). Decoding once keeps the blockwise search on BLAS."""
    if kind == "int8":
      scales = quant.int8_scales(corpus, self.int8_scale)
      return tuple(quant.dequantize_int8(quant.quantize_int8(x, scales), scales)
                   for x in (queries, corpus))
    dim = queries.shape[1]
    return tuple(quant.unpack_signs(quant.binarize(x), dim) for x in (queries, corpus))
