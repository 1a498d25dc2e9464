"""Evaluation metrics as pure numpy functions of arrays (no model, no embedding function).

Ranking metrics take `gains` [Q, K]: the relevance grade of each retrieved item in rank order
(0 = not relevant), so one retrieval run feeds all of them.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np


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
    ideal_gains: [Q, K'] each query's grades sorted descending (zero padded), K' >= min(k, #relevant).
  """
  def dcg(g):
    g = np.asarray(g, np.float64)[:, :k]
    return (g / np.log2(np.arange(2, g.shape[1] + 2))).sum(axis=1)
  ideal = dcg(ideal_gains)
  if np.any(ideal <= 0):
    raise ValueError("ndcg_at_k: a query has no relevant item (ideal DCG is 0).")
  return float(np.mean(dcg(gains) / ideal))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the precision-recall curve as a step sum, thresholds at each distinct score.

  Same definition as sklearn.metrics.average_precision_score: sum_n (R_n - R_{n-1}) P_n.
  scores: [N] higher = more likely positive; labels: [N] binary, with at least one positive.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  if not labels.any():
    raise ValueError("average_precision: there is no positive label.")
  precision, recall = _precision_recall_at_thresholds(scores, labels)
  return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def best_f1(scores: np.ndarray, labels: np.ndarray) -> float:
  """Highest F1 over all thresholds `score >= t` (MTEB pair-classification's max F1)."""
  precision, recall = _precision_recall_at_thresholds(np.asarray(scores, np.float64),
                                                      np.asarray(labels).astype(bool))
  f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
  return float(f1.max())


def _precision_recall_at_thresholds(scores: np.ndarray, labels: np.ndarray):
  """Precision and recall of `score >= t` for every distinct score t, highest t first."""
  order = np.argsort(-scores, kind="stable")
  scores, labels = scores[order], labels[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  true_positives = np.cumsum(labels)[last_of_tie]
  predicted = last_of_tie + 1
  return true_positives / predicted, true_positives / max(labels.sum(), 1)


def mean_average_precision(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
  """MAP: mean over queries of `average_precision` of each query's candidate list."""
  return float(np.mean([average_precision(s, l) for s, l in zip(scores, labels, strict=True)]))


# ----------------------------------------------------------------------------- correlation
def rankdata(x: np.ndarray) -> np.ndarray:
  """Ranks 1..N with ties given their average rank (scipy.stats.rankdata 'average')."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
  group = np.cumsum(starts) - 1                       # tie group of each sorted position
  first = np.flatnonzero(starts)                      # 0-based start of each group
  counts = np.diff(np.r_[first, len(x)])
  average = first + (counts + 1) / 2.0                # mean of ranks first+1 .. first+count
  ranks = np.empty(len(x), np.float64)
  ranks[order] = average[group]
  return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation (Pearson of average ranks); nan if either side is constant."""
  ra, rb = rankdata(a), rankdata(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
  return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


# ----------------------------------------------------------------------------- classification
def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Fraction of exact matches; for [N, L] multilabel rows, the whole row must match."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  equal = labels == predictions
  return float(np.mean(equal.reshape(len(equal), -1).all(axis=1)))


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Unweighted mean of per-class F1 over classes seen in labels or predictions (sklearn 'macro')."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  classes, inverse = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  y, p = inverse[:len(labels)], inverse[len(labels):]
  n = len(classes)
  tp = np.bincount(y[y == p], minlength=n)
  fp = np.bincount(p, minlength=n) - tp
  fn = np.bincount(y, minlength=n) - tp
  return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def multilabel_macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Mean over label columns of F1 for [N, L] binary matrices; a column never true nor predicted scores 0."""
  y, p = np.asarray(labels).astype(bool), np.asarray(predictions).astype(bool)
  tp = (y & p).sum(0)
  denominator = 2 * tp + (~y & p).sum(0) + (y & ~p).sum(0)
  return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))


# ----------------------------------------------------------------------------- clustering
def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def v_measure(labels: np.ndarray, clusters: np.ndarray, beta: float = 1.0) -> float:
  """V-measure: weighted harmonic mean of homogeneity and completeness (Rosenberg & Hirschberg 2007)."""
  _, y = np.unique(np.asarray(labels), return_inverse=True)
  _, c = np.unique(np.asarray(clusters), return_inverse=True)
  contingency = np.zeros((y.max() + 1, c.max() + 1), np.float64)  # [classes, clusters]
  np.add.at(contingency, (y, c), 1.0)
  n = contingency.sum()
  h_class, h_cluster = _entropy(contingency.sum(1)), _entropy(contingency.sum(0))
  nz = contingency > 0
  joint = contingency[nz] / n
  outer = np.outer(contingency.sum(1), contingency.sum(0))[nz] / n ** 2
  mutual_information = float((joint * np.log(joint / outer)).sum())
  homogeneity = 1.0 if h_class == 0 else mutual_information / h_class   # 1 - H(C|K)/H(C)
  completeness = 1.0 if h_cluster == 0 else mutual_information / h_cluster
  if homogeneity + completeness == 0:
    return 0.0
  return float((1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness))
