"""The evaluators end to end on synthetic task data and plain-numpy embedding functions.

Each test input is one part carrying what the fake embedding functions need:
  "vector": the ideal embedding (e.g. one-hot of the true class / target id) -> `perfect_embed`,
  "key": a unique id -> `random_embed` draws an independent Gaussian vector per input.
The evaluators never look inside parts, so these stand in for any model.
"""
import zlib

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import ndcg_score
from sklearn.neighbors import KNeighborsClassifier

from gemb.evaluate import (bitext, classification, clustering, embeddings, multilabel,
                           pair_classification, registry, reranking, retrieval, sts, suite)


def item(vector, key):
  return [{"text": f"input {key}", "vector": np.asarray(vector, np.float32), "key": key}]


def one_hot(index, dim):
  return np.eye(dim, dtype=np.float32)[index]


def perfect_embed(inputs):
  return np.stack([parts[0]["vector"] for parts in inputs])


def random_embed(dim, salt=0):
  def embed_fn(inputs):
    seeds = [zlib.crc32(repr(parts[0]["key"]).encode()) for parts in inputs]  # stable across runs
    return np.stack([np.random.default_rng([salt, s]).normal(size=dim)
                     for s in seeds]).astype(np.float32)
  return embed_fn


def run(evaluator, embed_fn):
  return dict(evaluator.run(embed_fn))


# ----------------------------------------------------------------------------- task builders
def retrieval_task(n=200, **options):
  """n queries, each with one relevant corpus item (its own id), one-hot ideal vectors."""
  queries = [item(one_hot(i, n), ("q", i)) for i in range(n)]
  corpus = [item(one_hot(i, n), ("c", i)) for i in range(n)]
  return retrieval.Evaluator(queries, corpus, [{i} for i in range(n)], **options)


def sts_task(n=300, **options):
  rng = np.random.default_rng(0)
  scores = rng.uniform(0, 5, n)
  cosine = scores / 5  # a perfect model's cosine is any increasing function of the score
  a = [item([1.0, 0.0], ("a", i)) for i in range(n)]
  b = [item([c, np.sqrt(1 - c * c)], ("b", i)) for i, c in enumerate(cosine)]
  return sts.Evaluator(a, b, scores, **options)


def classification_task(n_train=200, n_test=400, num_classes=4, **options):
  rng = np.random.default_rng(1)
  train_labels, test_labels = (rng.integers(0, num_classes, n_train),
                               rng.integers(0, num_classes, n_test))
  train = [item(one_hot(y, num_classes), ("train", i)) for i, y in enumerate(train_labels)]
  test = [item(one_hot(y, num_classes), ("test", i)) for i, y in enumerate(test_labels)]
  return classification.Evaluator(train, train_labels, test, test_labels, **options)


def clustering_task(n=400, num_classes=4, **options):
  labels = np.random.default_rng(2).integers(0, num_classes, n)
  return clustering.Evaluator(
      [item(one_hot(y, num_classes), ("x", i)) for i, y in enumerate(labels)], labels, **options)


def pair_task(n=400, **options):
  labels = np.random.default_rng(3).integers(0, 2, n)
  a = [item([1.0, 0.0], ("a", i)) for i in range(n)]
  b = [item([1.0, 0.0] if y else [0.0, 1.0], ("b", i)) for i, y in enumerate(labels)]
  return pair_classification.Evaluator(a, b, labels, **options)


def reranking_task(n=100, list_size=10, **options):
  rng = np.random.default_rng(4)
  queries, candidates, labels = [], [], []
  for q in range(n):
    positive = rng.integers(list_size)
    queries.append(item([1.0, 0.0], ("q", q)))
    labels.append([int(j == positive) for j in range(list_size)])
    candidates.append([item([1.0, 0.0] if j == positive else [0.0, 1.0], ("c", q, j))
                       for j in range(list_size)])
  return reranking.Evaluator(queries, candidates, labels, **options)


def bitext_task(n=200, **options):
  return bitext.Evaluator([item(one_hot(i, n), ("src", i)) for i in range(n)],
                          [item(one_hot(i, n), ("tgt", i)) for i in range(n)], **options)


def multilabel_label_sets(rng, n, num_labels):
  return [set(np.flatnonzero(rng.random(num_labels) < 0.4).tolist()) for _ in range(n)]


def multilabel_task(n_train=200, n_test=200, num_labels=5, **options):
  rng = np.random.default_rng(5)
  train_sets = multilabel_label_sets(rng, n_train, num_labels)
  test_sets = multilabel_label_sets(rng, n_test, num_labels)
  # one-hot of the whole label set
  code = lambda s: one_hot(sum(1 << l for l in s), 2 ** num_labels)
  train = [item(code(s), ("train", i)) for i, s in enumerate(train_sets)]
  test = [item(code(s), ("test", i)) for i, s in enumerate(test_sets)]
  return multilabel.Evaluator(train, train_sets, test, test_sets, num_labels=num_labels, knn_k=1,
                               **options)


TASKS = {
    "retrieval": (retrieval_task, {"R@1", "R@5", "R@10", "NDCG@10", "MRR@10"}),
    "sts": (sts_task, {"spearman"}),
    "classification": (classification_task, {"accuracy", "f1", "knn_accuracy"}),
    "clustering": (clustering_task, {"v_measure"}),
    "pair_classification": (pair_task, {"ap", "f1"}),
    "reranking": (reranking_task, {"map", "MRR@10"}),
    "bitext": (bitext_task, {"accuracy", "f1"}),
    "multilabel": (multilabel_task, {"accuracy", "f1"}),
}


# ----------------------------------------------------------------------------- perfect and random
@pytest.mark.parametrize("name", TASKS)
def test_perfect_embedding_scores_one(name):
  build, expected_metrics = TASKS[name]
  results = run(build(), perfect_embed)
  assert set(results) == expected_metrics
  for metric, value in results.items():
    assert value == pytest.approx(1.0), metric


def test_random_retrieval_is_at_chance():
  results = run(retrieval_task(200), random_embed(32))
  # One relevant among 200: R@k ~ Binomial(200, k/200) / 200; 4 standard deviations allowed.
  for k in (1, 5, 10):
    p = k / 200
    assert abs(results[f"R@{k}"] - p) <= 4 * np.sqrt(p * (1 - p) / 200) + 1 / 200, k
  # E[MRR@10] = (1/200) sum_{r<=10} 1/r = 0.0146; per-query values are <= 1, so std <= 0.05.
  assert results["MRR@10"] < 0.0146 + 0.05


def test_random_sts_is_uncorrelated():
  # Under independence spearman ~ N(0, 1/sqrt(n-1)) = 0.058 for n=300; allow 4 std.
  assert abs(run(sts_task(300), random_embed(16))["spearman"]) < 4 / np.sqrt(299)


def test_random_classification_is_at_chance():
  results = run(classification_task(n_test=400, num_classes=4), random_embed(16))
  # 400 test labels, chance 1/4: std sqrt(.25 * .75 / 400) = 0.022; allow 4.5 std = 0.1.
  assert abs(results["accuracy"] - 0.25) < 0.1
  assert abs(results["knn_accuracy"] - 0.25) < 0.1


def test_random_clustering_has_near_zero_v_measure():
  # Independent labelings of 400 points into 4 x 4 groups: E[MI] ~ (4-1)^2 / (2 * 400) = 0.011 nats
  # against entropies of ~1.39 nats, so V ~ 0.01; 0.05 leaves several standard deviations.
  assert run(clustering_task(400), random_embed(16))["v_measure"] < 0.05


def test_random_pair_classification_ap_is_positive_rate():
  task = pair_task(400)
  # AP of a random ranking ~ positive rate (~0.5) with std ~ 0.03 at n=400; allow 0.12.
  assert abs(run(task, random_embed(16))["ap"] - task.labels.mean()) < 0.12


def test_random_reranking_map_is_expected_reciprocal_rank():
  # One positive in 10 shuffled candidates: E[AP] = E[1/rank] = H_10 / 10 = 0.293; per-query std
  # is 0.3, so the mean over 100 queries has std 0.03; allow 4 std.
  harmonic = sum(1 / r for r in range(1, 11)) / 10
  assert abs(run(reranking_task(100), random_embed(16))["map"] - harmonic) < 0.12


def test_random_bitext_is_at_chance():
  # Chance 1/200 per sentence: correct count ~ Binomial(200, 0.005), mean 1; P(count >= 8) < 1e-5.
  assert run(bitext_task(200), random_embed(16))["accuracy"] < 8 / 200


def test_random_multilabel_matches_random_neighbour_baseline():
  """With random embeddings the 1-NN is a uniformly random training input: compare to that."""
  task = multilabel_task()
  results = run(task, random_embed(16))
  rng = np.random.default_rng(0)
  baseline = [task.train_labels[rng.integers(0, len(task.train_labels), len(task.test_labels))]
              for _ in range(200)]
  exact = np.array([(b == task.test_labels).all(1).mean() for b in baseline])
  # exact-match of independent label sets: mean over 200 test inputs; 4 std of the baseline + slack.
  assert abs(results["accuracy"] - exact.mean()) < 4 * exact.std() + 0.01


# ----------------------------------------------------------------------------- retrieval specifics
def test_chunked_retrieval_equals_unchunked():
  rng = np.random.default_rng(6)
  targets = rng.integers(0, 50, 60)
  centres = rng.normal(size=(50, 8))
  queries = [item(centres[t] + rng.normal(size=8), ("q", i)) for i, t in enumerate(targets)]
  corpus = [item(c + 0.5 * rng.normal(size=8), ("c", i)) for i, c in enumerate(centres)]
  relevant = [{int(t)} for t in targets]
  options = dict(ks=(1, 5, 10), bidirectional=True, quantization=("int8", "binary"), rescore_k=20)
  calls = []
  def recording_embed(inputs):
    calls.append(len(inputs))
    return perfect_embed(inputs)
  chunked = run(retrieval.Evaluator(queries, corpus, relevant, batch_size=7, query_block=5,
                                    corpus_block=6, **options), recording_embed)
  whole = run(retrieval.Evaluator(queries, corpus, relevant, batch_size=1000, **options),
              perfect_embed)
  assert max(calls) == 7 and sum(calls) == 110
  assert chunked == whole


def test_retrieval_graded_ndcg_matches_sklearn_and_fraction_recall_by_hand():
  rng = np.random.default_rng(7)
  num_queries, num_corpus = 30, 40
  grades = rng.integers(0, 4, (num_queries, num_corpus)) * (
      rng.random((num_queries, num_corpus)) < 0.2)
  grades[np.arange(num_queries), rng.integers(0, num_corpus, num_queries)] = 3
  qrels = np.array([(q, c, grades[q, c]) for q, c in zip(*np.nonzero(grades))])  # [P, 3]
  vectors = rng.normal(size=(num_queries + num_corpus, 12))
  evaluator = retrieval.Evaluator([item(v, ("q", i)) for i, v in enumerate(vectors[:num_queries])],
                                  [item(v, ("c", i)) for i, v in enumerate(vectors[num_queries:])],
                                  qrels, recall="fraction")
  results = run(evaluator, perfect_embed)
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  cosine = unit[:num_queries] @ unit[num_queries:].T
  assert results["NDCG@10"] == pytest.approx(ndcg_score(grades, cosine, k=10))
  top5 = np.argsort(-cosine, axis=1)[:, :5]
  fraction = [(grades[q, top5[q]] > 0).sum() / (grades[q] > 0).sum() for q in range(num_queries)]
  assert results["R@5"] == pytest.approx(np.mean(fraction))


def test_bidirectional_retrieval_with_two_captions_per_image():
  # 10 images, 2 captions each (captions 2i, 2i+1 -> image i); 3 distractor images nobody describes.
  captions = [item(one_hot(i // 2, 13), ("t", i)) for i in range(20)]
  images = [item(one_hot(i, 13), ("i", i)) for i in range(13)]
  relevant = [{i // 2} for i in range(20)]
  hit = run(retrieval.Evaluator(captions, images, relevant, bidirectional=True), perfect_embed)
  fraction = run(retrieval.Evaluator(captions, images, relevant, bidirectional=True,
                                     recall="fraction"), perfect_embed)
  assert hit["R@1"] == hit["R@1@reverse"] == 1.0
  assert fraction["R@1@reverse"] == pytest.approx(0.5)  # top 1 holds one of the 2 captions
  assert fraction["R@5@reverse"] == pytest.approx(1.0)
  assert hit["NDCG@10@reverse"] == pytest.approx(1.0)


def test_quantized_retrieval_against_float_and_an_independent_binary_search():
  rng = np.random.default_rng(8)
  corpus_vectors = rng.normal(size=(400, 64)).astype(np.float32)
  query_vectors = corpus_vectors + 0.9 * rng.normal(size=(400, 64)).astype(np.float32)
  evaluator = retrieval.Evaluator([item(v, ("q", i)) for i, v in enumerate(query_vectors)],
                                  [item(v, ("c", i)) for i, v in enumerate(corpus_vectors)],
                                  [{i} for i in range(400)], quantization=("int8", "binary"),
                                  rescore_k=50)
  results = run(evaluator, perfect_embed)
  # int8 keeps ~7 bits per dim: ranking nearly unchanged.
  assert abs(results["R@1@int8"] - results["R@1"]) <= 0.02
  # binary alone loses recall; re-scoring its top 50 with floats recovers the float ranking.
  assert results["R@1@binary"] < results["R@1"] - 0.05
  assert abs(results["R@1@binary_rescore"] - results["R@1"]) <= 0.01
  assert results["R@10@binary_rescore"] >= results["R@10@binary"]
  # Independent binary search: Hamming distance of packed sign bits by popcount.
  q_bits, c_bits = np.packbits(query_vectors > 0, axis=1), np.packbits(corpus_vectors > 0, axis=1)
  hamming = np.bitwise_count(q_bits[:, None, :] ^ c_bits[None, :, :]).sum(-1, dtype=np.int64)
  nearest = np.argsort(hamming, axis=1, kind="stable")[:, 0]
  assert results["R@1@binary"] == pytest.approx(np.mean(nearest == np.arange(400)))
  sizes = [results[f"bytes_per_vector{kind}"] for kind in ("", "@int8", "@binary")]
  assert sizes == [256, 64, 8]  # 64 dims: float32, int8, one bit each
  assert (results["compression@int8"], results["compression@binary"]) == (4, 32)


# ----------------------------------------------------------------------------- MRL
@pytest.mark.parametrize("name", TASKS)
def test_mrl_keys_for_every_prefix_dim(name):
  build, expected_metrics = TASKS[name]
  results = run(build(mrl_dims=(2, 4, 8)), random_embed(8))  # 8 = full width: reported unsuffixed
  assert set(results) == expected_metrics | {f"{m}@dim={d}" for m in expected_metrics
                                             for d in (2, 4)}


def test_mrl_scores_use_renormalised_prefixes():
  rng = np.random.default_rng(9)
  # Prefix norms vary 100x between corpus rows, so an un-normalised prefix ranks differently.
  corpus_vectors = rng.normal(size=(50, 16)) * np.r_[np.geomspace(0.1, 10, 50)][:, None]
  query_vectors = corpus_vectors + 3 * rng.normal(size=(50, 16))
  evaluator = retrieval.Evaluator([item(v, ("q", i)) for i, v in enumerate(query_vectors)],
                                  [item(v, ("c", i)) for i, v in enumerate(corpus_vectors)],
                                  [{i} for i in range(50)], mrl_dims=(4, 8))
  results = run(evaluator, perfect_embed)
  for dim in (4, 8):
    unit = lambda x: x[:, :dim] / np.linalg.norm(x[:, :dim], axis=1, keepdims=True)
    renormalised = np.argmax(unit(query_vectors) @ unit(corpus_vectors).T, axis=1)
    raw = np.argmax(query_vectors[:, :dim] @ corpus_vectors[:, :dim].T, axis=1)
    assert results[f"R@1@dim={dim}"] == pytest.approx(np.mean(renormalised == np.arange(50)))
    assert results[f"R@1@dim={dim}"] != pytest.approx(np.mean(raw == np.arange(50)))


def test_mrl_dim_wider_than_embedding_is_an_error():
  with pytest.raises(ValueError, match="mrl_dims"):
    run(sts_task(10, mrl_dims=(4,)), perfect_embed)  # sts_task embeddings are 2-dim


# ------------------------------------------------------------------------ classification vs sklearn
def test_classification_probe_and_knn_match_sklearn():
  rng = np.random.default_rng(10)
  centres = rng.normal(size=(3, 12))
  labels = rng.integers(0, 3, 300)
  vectors = centres[labels] + 1.2 * rng.normal(size=(300, 12))
  inputs = [item(v, i) for i, v in enumerate(vectors)]
  class_names = np.array(["red", "green", "blue"])[labels]  # string labels are fine
  evaluator = classification.Evaluator(inputs[:200], class_names[:200], inputs[200:],
                                       class_names[200:], l2=1e-3, knn_k=7)
  results = run(evaluator, perfect_embed)
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  probe = LogisticRegression(C=1 / (1e-3 * 200), max_iter=10_000).fit(unit[:200], labels[:200])
  assert abs(results["accuracy"] - probe.score(unit[200:], labels[200:])) <= 0.02  # 2 of 100
  knn = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(unit[:200], labels[:200])
  assert results["knn_accuracy"] == pytest.approx(knn.score(unit[200:], labels[200:]))


# ----------------------------------------------------------------------------- plumbing
def test_embed_in_chunks_batches_and_checks_output():
  calls = []
  def embed_fn(inputs):
    calls.append(len(inputs))
    return np.ones((len(inputs), 3))
  out = embeddings.embed_in_chunks(embed_fn, [item([0], i) for i in range(10)], 4)
  assert calls == [4, 4, 2] and out.shape == (10, 3) and out.dtype == np.float32
  with pytest.raises(ValueError, match="one row per input"):
    embeddings.embed_in_chunks(lambda x: np.ones(3), [item([0], 0)], 4)
  with pytest.raises(ValueError, match="non-finite"):
    embeddings.embed_in_chunks(lambda x: np.full((len(x), 2), np.nan), [item([0], 0)], 4)


def test_plain_strings_are_rejected_with_the_input_format():
  with pytest.raises(TypeError, match="list of parts"):
    retrieval.Evaluator(["a red cube"], [item([1.0], 0)], [{0}])


def test_query_without_relevant_item_is_an_error():
  with pytest.raises(ValueError, match="no relevant corpus item"):
    retrieval.Evaluator([item([1.0], 0), item([1.0], 1)], [item([1.0], 2)], [{0}, set()])


def test_run_suite_keys_and_registry():
  tasks = {"t2i": registry.create("retrieval", queries=[item(one_hot(i, 4), i) for i in range(4)],
                                  corpus=[item(one_hot(i, 4), i) for i in range(4)],
                                  relevant=[{i} for i in range(4)], mrl_dims=(2,)),
           "sts": registry.get("gemb.evaluate.sts")(  # a full module path works too
               [item([1.0, 0.0], 0)] * 3,
               [item([1.0, 0.0], 1), item([0.6, 0.8], 2), item([0.0, 1.0], 3)],
               [3.0, 2.0, 1.0])}
  results = suite.run_suite("toy", tasks, perfect_embed)
  assert results["toy/t2i/R@1"] == 1.0 and results["toy/sts/spearman"] == 1.0
  assert "toy/t2i/R@1@dim=2" in results and "toy/t2i/NDCG@10@dim=2" in results
  assert all(key.count("/") == 2 for key in results)
  with pytest.raises(ValueError, match="unknown evaluator type"):
    registry.get("retreival")
  with pytest.raises(ValueError, match="contain no '/'"):
    suite.run_suite("toy", {"a/b": tasks["sts"]}, perfect_embed)
