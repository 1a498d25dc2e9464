"""Multilabel classification: each input has a set of labels (e.g. every attribute of a ToyWorld
scene); a cosine kNN predicts a label when more than half of the k nearest training inputs have it.

Task data:
  train_inputs, test_inputs: lists of inputs.
  train_labels, test_labels: per input a set/list of label ids in [0, num_labels), or a 0/1
  matrix [N, num_labels].
Metrics: `accuracy` (exact match of the whole label set) and `f1` (macro F1 over labels).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gemb.evaluate import metrics, probes
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_inputs, embed_in_chunks,
                                      over_mrl_dims)


def as_label_matrix(labels, num_inputs: int, num_labels: int, what: str) -> np.ndarray:
  """Label sets or a 0/1 matrix -> bool [N, num_labels]."""
  if isinstance(labels, np.ndarray) and labels.ndim == 2:
    if labels.shape != (num_inputs, num_labels) or not np.isin(labels, (0, 1)).all():
      raise ValueError(f"{what} label matrix has shape {labels.shape}; expected 0/1 "
                       f"[{num_inputs}, {num_labels}].")
    return labels.astype(bool)
  if len(labels) != num_inputs:
    raise ValueError(f"{what}: {num_inputs} inputs but {len(labels)} label sets.")
  matrix = np.zeros((num_inputs, num_labels), bool)
  for i, label_set in enumerate(labels):
    ids = np.asarray(sorted(label_set), np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
      raise ValueError(f"{what}[{i}] has label ids {ids.tolist()} outside 0..{num_labels - 1}; "
                       "set `num_labels`.")
    matrix[i, ids] = True
  return matrix


def count_labels(*label_lists) -> int:
  """Number of label columns implied by label sets or 0/1 matrices."""
  widths = [l.shape[1] if isinstance(l, np.ndarray) and l.ndim == 2
            else 1 + max((max(s) for s in l if len(s)), default=-1) for l in label_lists]
  return max(widths)


class Evaluator:
  """kNN multilabel classification of embeddings: exact-match accuracy and macro F1."""

  def __init__(self, train_inputs: Sequence[Input], train_labels, test_inputs: Sequence[Input],
               test_labels, *, num_labels: int | None = None, batch_size: int = 256,
               mrl_dims: Sequence[int] = (), knn_k: int = 5):
    self.train_inputs = check_inputs(train_inputs, "multilabel train_inputs")
    self.test_inputs = check_inputs(test_inputs, "multilabel test_inputs")
    num_labels = num_labels or count_labels(train_labels, test_labels)
    self.train_labels = as_label_matrix(train_labels, len(self.train_inputs), num_labels,
                                        "multilabel train_labels")  # [N_train, L] bool
    self.test_labels = as_label_matrix(test_labels, len(self.test_inputs), num_labels,
                                       "multilabel test_labels")    # [N_test, L] bool
    self.batch_size, self.mrl_dims, self.knn_k = batch_size, tuple(mrl_dims), knn_k

  def run(self, embed_fn: EmbedFn) -> Metrics:
    train = embed_in_chunks(embed_fn, self.train_inputs, self.batch_size)  # [N_train, D]
    test = embed_in_chunks(embed_fn, self.test_inputs, self.batch_size)    # [N_test, D]
    yield from over_mrl_dims((train, test), self.mrl_dims, self._metrics)

  def _metrics(self, train: np.ndarray, test: np.ndarray) -> Metrics:
    predictions = probes.knn_multilabel(train, self.train_labels, test, self.knn_k)  # [N_test, L]
    yield "accuracy", metrics.accuracy(self.test_labels, predictions)
    yield "f1", metrics.multilabel_macro_f1(self.test_labels, predictions)
