"""gemb.index: every search equals a brute-force numpy reference; quantised recall is reported."""
import numpy as np
import pytest

from gemb.index import HnswIndex, Index, load, recall_at_k


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference_top_k(scores, k):
  """Brute force: every score, sorted by score descending then index ascending."""
  order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)
  order = order[:, :k]
  return np.take_along_axis(scores, order, 1), order


@pytest.fixture(scope="module")
def gaussian():
  rng = np.random.default_rng(0)
  return _unit(rng.normal(size=(3001, 32))), _unit(rng.normal(size=(24, 32)))


@pytest.fixture(scope="module")
def integer_valued():
  """Small integer coordinates: inner products are exact in float32 and many scores tie."""
  rng = np.random.default_rng(1)
  return (rng.integers(-2, 3, (2500, 16)).astype(np.float32),
          rng.integers(-2, 3, (16, 16)).astype(np.float32))


@pytest.mark.parametrize("shard", [False, True])
def test_exact_search_equals_numpy_with_ties_in_index_order(integer_valued, shard):
  corpus, queries = integer_valued
  index = Index(corpus, chunk_size=300, shard=shard)  # 8 devices when sharded
  scores, indices = index.search(queries, k=25)
  ref_scores, ref_indices = _reference_top_k(queries @ corpus.T, 25)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_array_equal(scores, ref_scores)


def test_mrl_truncated_search_equals_numpy_on_renormalised_prefixes(gaussian):
  corpus, queries = gaussian
  index = Index(corpus, dim=16, rescore=0, chunk_size=512)
  scores, indices = index.search(queries, k=10)
  ref_scores, ref_indices = _reference_top_k(_unit(queries[:, :16]) @ _unit(corpus[:, :16]).T, 10)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("shard", [False, True])
def test_binary_search_equals_numpy_hamming(integer_valued, gaussian, shard):
  corpus, queries = gaussian
  index = Index(corpus, kind="binary", rescore=0, chunk_size=256, shard=shard)
  scores, indices = index.search(queries, k=10)
  query_bits = np.unpackbits(np.packbits(queries > 0, axis=1), axis=1)[:, :32].astype(int)
  corpus_bits = np.unpackbits(np.packbits(corpus > 0, axis=1), axis=1)[:, :32].astype(int)
  hamming = (query_bits[:, None, :] != corpus_bits[None, :, :]).sum(-1)  # [Q, M]
  ref_scores, ref_indices = _reference_top_k((32 - 2 * hamming).astype(np.float32), 10)
  np.testing.assert_array_equal(indices, ref_indices)  # integer scores: ties in index order
  np.testing.assert_array_equal(scores, ref_scores)


def test_int8_search_equals_numpy_dequantised_scores(gaussian):
  corpus, queries = gaussian
  index = Index(corpus, kind="int8", rescore=0, chunk_size=1000)
  scales = np.abs(corpus).max(axis=0) / 127.0  # per-dimension symmetric scales, by hand
  codes = np.clip(np.rint(corpus / scales), -127, 127)
  np.testing.assert_array_equal(index.codes, codes.astype(np.int8))
  scores, indices = index.search(queries, k=10)
  ref_scores, ref_indices = _reference_top_k(queries @ (codes * scales).T, 10)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_rescoring_reranks_the_quantised_candidates_with_float_scores(gaussian, kind):
  corpus, queries = gaussian
  k, factor = 10, 4
  candidates = Index(corpus, kind=kind, rescore=0).search(queries, k=k * factor)[1]
  scores, indices = Index(corpus, kind=kind, rescore=factor).search(queries, k=k)
  for q in range(len(queries)):  # numpy: exact scores of the candidates, best k of them
    exact = corpus[candidates[q]] @ queries[q]
    order = np.lexsort((candidates[q], -exact))[:k]
    np.testing.assert_array_equal(indices[q], candidates[q][order])
    np.testing.assert_allclose(scores[q], exact[order], atol=1e-6)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_rescoring_the_whole_corpus_is_exact_search(gaussian, kind):
  corpus, queries = gaussian[0][:40], gaussian[1]
  scores, indices = Index(corpus, kind=kind, rescore=4, shard=True).search(queries, k=10)
  ref_scores, ref_indices = _reference_top_k(queries @ corpus.T, 10)  # 4 x 10 candidates = all
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


def test_save_and_load_give_the_same_results(tmp_path, gaussian):
  corpus, queries = gaussian
  ids = np.array([f"doc{i}" for i in range(len(corpus))])
  index = Index(corpus, kind="binary", dim=16, rescore=3, ids=ids, chunk_size=700)
  index.save(str(tmp_path / "index"))
  loaded = Index.load(str(tmp_path / "index"))
  assert isinstance(loaded.embeddings, np.memmap)
  np.testing.assert_array_equal(loaded.codes, index.codes)
  for got, want in zip(loaded.search_ids(queries, k=7), index.search_ids(queries, k=7)):
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def clustered():
  """Clustered unit vectors, like real embeddings, and the exact top 10 of each query."""
  rng = np.random.default_rng(2)
  centres = rng.normal(size=(50, 64))
  corpus = _unit(centres[rng.integers(0, 50, 20000)] + 0.6 * rng.normal(size=(20000, 64)))
  queries = _unit(centres[rng.integers(0, 50, 100)] + 0.6 * rng.normal(size=(100, 64)))
  return corpus, queries, _reference_top_k(queries @ corpus.T, 10)[1]


def test_quantised_recall_at_10_against_exact_search(clustered):
  corpus, queries, exact = clustered
  recall = {}
  for kind, dim in (("int8", None), ("binary", None), ("float", 32), ("binary", 32)):
    for factor in (0, 4):
      index = Index(corpus, kind=kind, dim=dim, rescore=factor)
      recall[f"{kind}@{dim or 64} rescore={factor}"] = recall_at_k(
          index.search(queries, k=10)[1], exact)
  print("recall@10 vs exact:", {name: round(r, 3) for name, r in recall.items()})
  assert recall["int8@64 rescore=0"] >= 0.9
  assert recall["int8@64 rescore=4"] >= recall["int8@64 rescore=0"]
  assert recall["binary@64 rescore=4"] > recall["binary@64 rescore=0"]
  assert recall["float@32 rescore=4"] > recall["float@32 rescore=0"]


def test_hnsw_recall_at_10_and_save_load(clustered, tmp_path):
  pytest.importorskip("faiss")
  corpus, queries, _ = clustered
  corpus = corpus[:5000]  # graph building is the slow part
  exact = _reference_top_k(queries @ corpus.T, 10)[1]
  index = HnswIndex(corpus, ef_construction=80, ef_search=64)
  scores, found = index.search(queries, k=10)
  np.testing.assert_allclose(  # the scores are the inner products of the rows found
      scores, np.einsum("qd,qkd->qk", queries, corpus[found]), atol=1e-5)
  prefix = HnswIndex(corpus, dim=32, rescore=4, ef_construction=80, ef_search=64)
  recall = {"hnsw@64": recall_at_k(found, exact),
            "hnsw@32 rescore=4": recall_at_k(prefix.search(queries, k=10)[1], exact),
            "hnsw@32 rescore=0": recall_at_k(prefix.search(queries, k=10, rescore=0)[1], exact)}
  print("recall@10 vs exact:", {name: round(r, 3) for name, r in recall.items()})
  assert recall["hnsw@64"] >= 0.9
  assert recall["hnsw@32 rescore=4"] > recall["hnsw@32 rescore=0"]
  prefix.save(str(tmp_path / "hnsw"))
  loaded = load(str(tmp_path / "hnsw"))
  assert isinstance(loaded, HnswIndex)
  for got, want in zip(loaded.search(queries, k=10), prefix.search(queries, k=10)):
    np.testing.assert_array_equal(got, want)


def test_bad_arguments_name_what_is_wrong(gaussian):
  corpus, queries = gaussian
  with pytest.raises(ValueError, match="kind"):
    Index(corpus, kind="pq")
  with pytest.raises(ValueError, match="dim=64"):
    Index(corpus, dim=64)
  with pytest.raises(ValueError, match=r"queries must be \[Q, 32\]"):
    Index(corpus).search(queries[:, :16])
