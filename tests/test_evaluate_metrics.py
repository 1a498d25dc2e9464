"""gemb.evaluate.metrics against hand-computed cases and scipy / scikit-learn."""
import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm

from gemb.evaluate import metrics


# ----------------------------------------------------------------------------- ranking
GAINS = np.array([[0, 1, 0], [0, 0, 0], [2, 0, 1]], float)  # 3 queries, ranks 1..3
NUM_RELEVANT = np.array([1, 1, 2])


def test_recall_hit_by_hand():
  assert metrics.recall_at_k(GAINS, NUM_RELEVANT, 1) == pytest.approx(1 / 3)
  assert metrics.recall_at_k(GAINS, NUM_RELEVANT, 2) == pytest.approx(2 / 3)


def test_recall_fraction_by_hand():
  # q0: 1 of 1 relevant in top 3; q1: 0 of 1; q2: 2 of 2 -> 2/3. At k=1 q2 has 1 of 2.
  assert metrics.recall_at_k(GAINS, NUM_RELEVANT, 3, "fraction") == pytest.approx(2 / 3)
  assert metrics.recall_at_k(GAINS, NUM_RELEVANT, 1, "fraction") == pytest.approx(0.5 / 3)


def test_mrr_by_hand():
  assert metrics.mrr_at_k(GAINS, 3) == pytest.approx((1 / 2 + 0 + 1) / 3)
  assert metrics.mrr_at_k(GAINS, 1) == pytest.approx(1 / 3)


def test_ndcg_by_hand():
  gains, ideal = np.array([[0.0, 1, 1]]), np.array([[1.0, 1, 0]])
  dcg, idcg = 1 / np.log2(3) + 1 / np.log2(4), 1 + 1 / np.log2(3)
  assert metrics.ndcg_at_k(gains, ideal, 10) == pytest.approx(dcg / idcg)


def test_ndcg_matches_sklearn_graded():
  rng = np.random.default_rng(0)
  relevance = rng.integers(0, 4, (20, 30)) * (rng.random((20, 30)) < 0.3)
  relevance[:, 0] = np.maximum(relevance[:, 0], 1)  # every query has a relevant item
  scores = rng.normal(size=(20, 30))
  order = np.argsort(-scores, axis=1)
  gains = np.take_along_axis(relevance, order, 1).astype(float)
  ideal = -np.sort(-relevance, axis=1).astype(float)
  assert metrics.ndcg_at_k(gains, ideal, 10) == pytest.approx(
      skm.ndcg_score(relevance, scores, k=10))


# ----------------------------------------------------------------------------- precision
def test_average_precision_by_hand():
  # positives at ranks 1 and 3: (1/1 + 2/3) / 2
  assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)


@pytest.mark.parametrize("seed", [0, 1])
def test_average_precision_matches_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels, scores = rng.integers(0, 2, 200), rng.integers(0, 8, 200).astype(float)  # many ties
  assert metrics.average_precision(scores, labels) == pytest.approx(
      skm.average_precision_score(labels, scores))


def test_best_f1_matches_sklearn_precision_recall_curve():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, 150)
  scores = labels * 0.5 + rng.normal(size=150)
  precision, recall, _ = skm.precision_recall_curve(labels, scores)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  assert metrics.best_f1(scores, labels) == pytest.approx(f1.max())


def test_mean_average_precision_by_hand():
  scores = [np.array([0.9, 0.1, 0.5]), np.array([0.2, 0.3])]
  labels = [np.array([0, 1, 1]), np.array([1, 0])]
  # q0 ranks: 0.9(0) 0.5(1) 0.1(1) -> (1/2 + 2/3) / 2; q1: 0.3(0) 0.2(1) -> 1/2
  assert metrics.mean_average_precision(scores, labels) == pytest.approx(
      ((1 / 2 + 2 / 3) / 2 + 1 / 2) / 2)


# ----------------------------------------------------------------------------- correlation
def test_spearman_by_hand():
  # ranks of b are [1, 2, 4, 3]: rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 12 / 60
  assert metrics.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


def test_spearman_matches_scipy_with_ties():
  rng = np.random.default_rng(4)
  a, b = rng.integers(0, 5, 80), rng.normal(size=80)
  assert metrics.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)


def test_spearman_of_constant_is_nan():
  assert np.isnan(metrics.spearman([1.0, 1.0, 1.0], [1, 2, 3]))


# ----------------------------------------------------------------------------- classification
def test_accuracy_single_and_multilabel():
  assert metrics.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
  assert metrics.accuracy([[1, 0], [1, 1]], [[1, 0], [1, 0]]) == 0.5  # whole row must match


def test_macro_f1_by_hand_and_sklearn():
  # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 2 fp 1 fn 0 -> 4/5
  assert metrics.macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((2 / 3 + 4 / 5) / 2)
  rng = np.random.default_rng(5)
  y, p = rng.integers(0, 5, 100), rng.integers(1, 7, 100)  # label sets differ on purpose
  assert metrics.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"))


def test_multilabel_macro_f1_matches_sklearn():
  rng = np.random.default_rng(6)
  y, p = rng.integers(0, 2, (50, 7)), rng.integers(0, 2, (50, 7))
  assert metrics.multilabel_macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"))


# ----------------------------------------------------------------------------- clustering
def test_v_measure_by_hand():
  assert metrics.v_measure([0, 0, 1, 1], [5, 5, 9, 9]) == pytest.approx(1.0)  # renamed clusters
  assert metrics.v_measure([0, 0, 1, 1], [0, 0, 0, 0]) == pytest.approx(0.0)  # one cluster


def test_v_measure_matches_sklearn():
  rng = np.random.default_rng(7)
  y, c = rng.integers(0, 4, 120), rng.integers(0, 6, 120)
  c[:60] = y[:60]  # partly informative
  assert metrics.v_measure(y, c) == pytest.approx(skm.v_measure_score(y, c))
  assert metrics.v_measure(y, c, beta=2.0) == pytest.approx(skm.v_measure_score(y, c, beta=2.0))
