"""gemb.evaluate.probes (logistic regression, kNN, k-means) and gemb.evaluate.search / quantization
against scikit-learn and brute-force numpy references."""
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from gemb.evaluate import metrics, probes, quantization, search


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _noisy_classes(rng, n, dim, num_classes, noise):
  centres = rng.normal(size=(num_classes, dim))
  labels = rng.integers(0, num_classes, n)
  return _unit(centres[labels] + noise * rng.normal(size=(n, dim))), labels


# ----------------------------------------------------------------------------- logistic regression
def test_logistic_regression_matches_sklearn_optimum():
  """Same strongly convex objective (C = 1 / (l2 N)) -> same weights and predictions as sklearn."""
  rng = np.random.default_rng(0)
  x, y = _noisy_classes(rng, 300, 16, 3, noise=1.0)
  l2 = 1e-3
  weights, bias = probes.fit_logistic_regression(x, y, 3, l2=l2, max_steps=3000, tolerance=1e-8)
  reference = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10_000).fit(x, y)
  # both have zero-mean class columns
  np.testing.assert_allclose(weights.T, reference.coef_, atol=1e-4)
  np.testing.assert_allclose(bias, reference.intercept_, atol=1e-4)
  x_test, _ = _noisy_classes(np.random.default_rng(1), 200, 16, 3, noise=1.0)
  np.testing.assert_array_equal(probes.predict_logistic_regression(x_test, weights, bias),
                                reference.predict(x_test))


def test_logistic_regression_accuracy_close_to_sklearn_with_evaluator_defaults():
  """The classification evaluator's defaults (500 steps, tolerance 1e-5) land within 1% of
  sklearn."""
  rng = np.random.default_rng(2)
  x, y = _noisy_classes(rng, 600, 32, 5, noise=2.0)
  train, test = slice(0, 400), slice(400, None)
  weights, bias = probes.fit_logistic_regression(x[train], y[train], 5, l2=1e-3, max_steps=500,
                                                 tolerance=1e-5)
  ours = metrics.accuracy(y[test], probes.predict_logistic_regression(x[test], weights, bias))
  reference = LogisticRegression(C=1 / (1e-3 * 400), max_iter=10_000).fit(x[train], y[train])
  reference = reference.score(x[test], y[test])
  assert abs(ours - reference) <= 0.01  # 2 of 200 test points


def test_logistic_regression_rejects_zero_l2():
  with pytest.raises(ValueError, match="l2 > 0"):
    probes.fit_logistic_regression(np.ones((4, 2)), np.array([0, 1, 0, 1]), 2, l2=0.0, max_steps=1,
                                   tolerance=0)


# ----------------------------------------------------------------------------- kNN
def test_knn_classify_matches_sklearn_cosine():
  rng = np.random.default_rng(3)
  x, y = _noisy_classes(rng, 300, 8, 4, noise=1.5)
  ours = probes.knn_classify(x[:200], y[:200], x[200:], 7, 4)
  reference = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(x[:200], y[:200]).predict(
      x[200:])
  np.testing.assert_array_equal(ours, reference)


def test_knn_multilabel_matches_sklearn_multioutput():
  rng = np.random.default_rng(4)
  x = _unit(rng.normal(size=(250, 8)))
  targets = (x[:, :5] + 0.5 * rng.normal(size=(250, 5)) > 0).astype(int)  # [N, 5] labels
  ours = probes.knn_multilabel(x[:150], targets[:150], x[150:], 5)
  reference = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(x[:150], targets[:150])
  reference = reference.predict(x[150:])
  np.testing.assert_array_equal(ours, reference.astype(bool))


# ----------------------------------------------------------------------------- k-means
def test_kmeans_recovers_separated_blobs_like_sklearn():
  rng = np.random.default_rng(5)
  centres = 10 * rng.normal(size=(4, 6))
  labels = np.repeat(np.arange(4), 50)
  x = centres[labels] + rng.normal(size=(200, 6))
  clusters, _, inertia = probes.kmeans(x, 4, seed=0, num_init=3, max_steps=100)
  assert metrics.v_measure(labels, clusters) == pytest.approx(1.0)
  reference = KMeans(4, n_init=3, random_state=0).fit(x)
  assert inertia == pytest.approx(reference.inertia_, rel=1e-6)


def test_kmeans_inertia_not_worse_than_sklearn_on_overlapping_data():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(300, 5))
  _, _, inertia = probes.kmeans(x, 6, seed=0, num_init=5, max_steps=300)
  reference = KMeans(6, n_init=5, random_state=0).fit(x).inertia_
  assert inertia <= reference * 1.03  # both find local optima; ours must be as good within 3%


def test_kmeans_is_seeded():
  x = np.random.default_rng(7).normal(size=(100, 4))
  a, _, _ = probes.kmeans(x, 5, seed=3, num_init=1, max_steps=50)
  b, _, _ = probes.kmeans(x, 5, seed=3, num_init=1, max_steps=50)
  np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- search
@pytest.mark.parametrize("query_block,corpus_block", [(5, 7), (1, 3), (100, 1000), (16, 10)])
def test_blockwise_top_k_equals_full_stable_sort_with_ties(query_block, corpus_block):
  rng = np.random.default_rng(8)
  queries = rng.integers(-2, 3, (37, 4)).astype(np.float32)  # small integers: many tied scores
  corpus = rng.integers(-2, 3, (101, 4)).astype(np.float32)
  full = queries @ corpus.T
  reference = np.argsort(-full, axis=1, kind="stable")[:, :9]
  scores, indices = search.top_k(queries, corpus, 9, query_block=query_block,
                                 corpus_block=corpus_block)
  np.testing.assert_array_equal(indices, reference)
  np.testing.assert_array_equal(scores, np.take_along_axis(full, reference, 1))


def test_top_k_when_every_new_block_beats_the_kept_ones():
  """Scores rising with the index: each block replaces the whole top k (the wide-survivor path)."""
  corpus = np.linspace(0, 1, 1000, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  queries = np.ones((3, 2), np.float32)
  scores, indices = search.top_k(queries, corpus, 5, corpus_block=200)
  np.testing.assert_array_equal(indices, np.tile(np.arange(999, 994, -1), (3, 1)))
  np.testing.assert_allclose(scores, (corpus[999:994:-1] @ queries.T).T)


def test_top_k_caps_k_at_corpus_size():
  _, indices = search.top_k(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 10)
  assert indices.shape == (3, 3)
  np.testing.assert_array_equal(indices[:, 0], [0, 1, 2])


def test_rescore_orders_candidates_by_float_score():
  rng = np.random.default_rng(9)
  queries, corpus = rng.normal(size=(6, 8)), rng.normal(size=(30, 8))
  candidates = np.stack([rng.permutation(30)[:12] for _ in range(6)])
  _, ranked = search.rescore(queries, corpus, candidates, 4)
  for q in range(6):
    scores = corpus[candidates[q]] @ queries[q]
    np.testing.assert_array_equal(ranked[q], candidates[q][np.argsort(-scores)[:4]])


# ----------------------------------------------------------------------------- quantization
def test_sign_codes_inner_product_is_dim_minus_twice_hamming():
  rng = np.random.default_rng(10)
  a, b = rng.normal(size=(9, 21)), rng.normal(size=(13, 21))  # 21 dims: last byte half used
  bits_a, bits_b = quantization.binarize(a), quantization.binarize(b)
  assert bits_a.shape == (9, 3) and bits_a.dtype == np.uint8
  hamming = np.bitwise_count(bits_a[:, None, :] ^ bits_b[None, :, :]).sum(-1, dtype=np.int64)
  signs_a, signs_b = quantization.unpack_signs(bits_a, 21), quantization.unpack_signs(bits_b, 21)
  np.testing.assert_array_equal(signs_a @ signs_b.T, 21 - 2 * hamming)
  np.testing.assert_array_equal(signs_a, np.where(a > 0, 1.0, -1.0))


@pytest.mark.parametrize("mode", ["per_dim", "global"])
def test_int8_round_trip_error_is_at_most_half_a_step(mode):
  x = np.random.default_rng(11).normal(size=(50, 16)).astype(np.float32)
  scales = quantization.int8_scales(x, mode)
  codes = quantization.quantize_int8(x, scales)
  assert codes.dtype == np.int8 and np.abs(codes).max() == 127
  error = np.abs(quantization.dequantize_int8(codes, scales) - x)
  assert np.all(error <= scales / 2 + 1e-6)


def test_bytes_per_vector():
  assert ([quantization.bytes_per_vector(100, k) for k in ("float32", "int8", "binary")]
          == [400, 100, 13])
