"""Classification by probes on frozen embeddings: a logistic-regression probe and kNN.

Task data:
  train_inputs, train_labels: inputs and their class labels (ints or strings) to fit the probes.
  test_inputs, test_labels: inputs and labels to score them on.
Metrics: `accuracy` and `f1` (macro) of the logistic probe, `knn_accuracy` of a cosine kNN vote.
The probe minimises mean cross-entropy + l2/2 ||W||^2 on unit-normalised embeddings.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gemb.evaluate import metrics, probes
from gemb.evaluate.embeddings import (EmbedFn, Input, Metrics, check_inputs, embed_in_chunks,
                                      over_mrl_dims)


def encode_labels(train_labels, test_labels, what: str) -> tuple[np.ndarray, np.ndarray, int]:
  """Class labels of any hashable kind -> int ids shared by train and test, and the class count."""
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  if train_labels.ndim != 1 or test_labels.ndim != 1:
    raise ValueError(f"{what} labels must be one label per input (1-D); got shapes "
                     f"{train_labels.shape} and {test_labels.shape}.")
  classes, ids = np.unique(np.concatenate([train_labels, test_labels]), return_inverse=True)
  return ids[:len(train_labels)], ids[len(train_labels):], len(classes)


class Evaluator:
  """Logistic-regression probe and kNN accuracy of embeddings for class labels."""

  def __init__(self, train_inputs: Sequence[Input], train_labels, test_inputs: Sequence[Input],
               test_labels, *, batch_size: int = 256, mrl_dims: Sequence[int] = (),
               l2: float = 1e-3, max_steps: int = 500, tolerance: float = 1e-5, knn_k: int = 10):
    self.train_inputs = check_inputs(train_inputs, "classification train_inputs")
    self.test_inputs = check_inputs(test_inputs, "classification test_inputs")
    if len(train_labels) != len(self.train_inputs) or len(test_labels) != len(self.test_inputs):
      raise ValueError(f"classification: {len(self.train_inputs)} train / "
                       f"{len(self.test_inputs)} test inputs but {len(train_labels)} / "
                       f"{len(test_labels)} labels; give one label each.")
    self.train_labels, self.test_labels, self.num_classes = encode_labels(
        train_labels, test_labels, "classification")
    self.batch_size, self.mrl_dims = batch_size, tuple(mrl_dims)
    self.l2, self.max_steps, self.tolerance, self.knn_k = l2, max_steps, tolerance, knn_k

  def run(self, embed_fn: EmbedFn) -> Metrics:
    train = embed_in_chunks(embed_fn, self.train_inputs, self.batch_size)  # [N_train, D]
    test = embed_in_chunks(embed_fn, self.test_inputs, self.batch_size)    # [N_test, D]
    yield from over_mrl_dims((train, test), self.mrl_dims, self._metrics)

  def _metrics(self, train: np.ndarray, test: np.ndarray) -> Metrics:
    weights, bias = probes.fit_logistic_regression(
        train, self.train_labels, self.num_classes, l2=self.l2, max_steps=self.max_steps,
        tolerance=self.tolerance)
    predictions = probes.predict_logistic_regression(test, weights, bias)
    yield "accuracy", metrics.accuracy(self.test_labels, predictions)
    yield "f1", metrics.macro_f1(self.test_labels, predictions)
    knn_predictions = probes.knn_classify(train, self.train_labels, test, self.knn_k,
                                          self.num_classes)
    yield "knn_accuracy", metrics.accuracy(self.test_labels, knn_predictions)
