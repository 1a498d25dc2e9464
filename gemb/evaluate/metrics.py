"""Evaluation metrics as pure functions of arrays (no model, no embedding function).

Ranking metrics take `gains` [Q, K]: the relevance grade of each retrieved item in rank order
(0 = not relevant), so one retrieval run feeds all of them. Average precision, F1, Spearman,
accuracy and V-measure are scikit-learn's and scipy's, named for the evaluators that use them.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
import scipy.stats
from sklearn import metrics as sk_metrics


# ----------------------------------------------------------------------------- ranking
def relevant_by_key(keys: Sequence[Hashable]) -> list[set[int]]:
  """Query i's relevant corpus items: every j whose key equals keys[i] (the key of query i's own
  positive), so duplicates of a positive count as found."""
  by_key: dict[Hashable, set[int]] = {}
  for j, key in enumerate(keys):
    by_key.setdefault(key, set()).add(j)
  return [by_key[key] for key in keys]


def recall_at_k(gains: np.ndarray, num_relevant: np.ndarray, k: int, mode: str = "hit") -> float:
  """R@k over queries.

  Args:
    gains: [Q, K] relevance grade of the items ranked 1..K for each query.
    num_relevant: [Q] number of relevant items each query has in the whole corpus (> 0).
    k: cut-off.
    mode: "hit": a query scores 1 if any relevant item is in its top k (cross-modal retrieval
      convention, e.g. CLIP); "fraction": relevant items in the top k / all relevant (BEIR/MTEB).
  """
  found = (gains[:, :k] > 0).sum(axis=1)
  if mode == "hit":
    return float(np.mean(found > 0))
  if mode == "fraction":
    return float(np.mean(found / np.asarray(num_relevant, np.float64)))
  raise ValueError(f"recall mode {mode!r} is not one of 'hit', 'fraction'.")


def mrr_at_k(gains: np.ndarray, k: int) -> float:
  """Mean over queries of 1 / rank of the first relevant item within the top k (0 if none)."""
  relevant = gains[:, :k] > 0
  first = np.argmax(relevant, axis=1)
  return float(np.mean(np.where(relevant.any(axis=1), 1.0 / (first + 1), 0.0)))


def ndcg_at_k(gains: np.ndarray, ideal_gains: np.ndarray, k: int) -> float:
  """Mean NDCG@k with linear gains (as sklearn's ndcg_score and trec_eval).

  Args:
    gains: [Q, K] grade of each retrieved item in rank order.
    ideal_gains: [Q, K'] each query's grades sorted descending (zero padded),
      K' >= min(k, #relevant).
  """
  def dcg(g):
    g = np.asarray(g, np.float64)[:, :k]
    return (g / np.log2(np.arange(2, g.shape[1] + 2))).sum(axis=1)
  ideal = dcg(ideal_gains)
  if np.any(ideal <= 0):
    raise ValueError("ndcg_at_k: a query has no relevant item (ideal DCG is 0).")
  return float(np.mean(dcg(gains) / ideal))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the precision-recall curve as a step sum over the distinct scores,
  sum_n (R_n - R_{n-1}) P_n (sklearn's average_precision_score).
  scores: [N] higher = more likely positive; labels: [N] binary, with at least one positive.
  """
  labels = np.asarray(labels).astype(bool)
  if not labels.any():
    raise ValueError("average_precision: there is no positive label.")
  return float(sk_metrics.average_precision_score(labels, np.asarray(scores, np.float64)))


def best_f1(scores: np.ndarray, labels: np.ndarray) -> float:
  """Highest F1 over all thresholds `score >= t` (MTEB pair-classification's max F1)."""
  precision, recall, _ = sk_metrics.precision_recall_curve(
      np.asarray(labels).astype(bool), np.asarray(scores, np.float64))
  f1 = np.where(precision + recall > 0,
                2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
  return float(f1.max())


def mean_average_precision(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
  """MAP: mean over queries of `average_precision` of each query's candidate list."""
  return float(np.mean([average_precision(s, l) for s, l in zip(scores, labels, strict=True)]))


# ----------------------------------------------------------------------------- correlation
def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation (Pearson of average ranks); nan if either side is constant."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  return float(scipy.stats.spearmanr(a, b).statistic)


# ----------------------------------------------------------------------------- classification
def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Fraction of exact matches; for [N, L] multilabel rows, the whole row must match."""
  return float(sk_metrics.accuracy_score(np.asarray(labels), np.asarray(predictions)))


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Unweighted mean of per-class F1 over the classes seen in labels or predictions."""
  return float(sk_metrics.f1_score(np.asarray(labels), np.asarray(predictions), average="macro",
                                   zero_division=0))


def multilabel_macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Mean over label columns of F1 for [N, L] binary matrices; a column never true nor
  predicted scores 0."""
  return float(sk_metrics.f1_score(np.asarray(labels).astype(bool),
                                   np.asarray(predictions).astype(bool), average="macro",
                                   zero_division=0))


# ----------------------------------------------------------------------------- clustering
def v_measure(labels: np.ndarray, clusters: np.ndarray, beta: float = 1.0) -> float:
  """V-measure: weighted harmonic mean of homogeneity and completeness (Rosenberg & Hirschberg
  2007)."""
  return float(sk_metrics.v_measure_score(np.asarray(labels), np.asarray(clusters), beta=beta))
