"""gemb.evaluate.mteb and launch/mteb.py: MTEB, run offline on tasks this file defines, scores
the same as gemb's own evaluators on the same data and embedding function."""
import os
import sys
import zlib

import mteb
import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType
from sklearn.linear_model import LogisticRegression

from gemb.data import features
from gemb.evaluate import classification, retrieval, sts
from gemb.evaluate.embeddings import l2_normalize
from gemb.evaluate.mteb import DEFAULT_TASK_STRINGS, GembEncoder, task_string
from launch import mteb as launch_mteb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_helpers import random_encoder  # noqa: E402  pylint: disable=g-import-not-at-top

# ------------------------------------------------------------------------------ data and model
TOPICS = [[f"{t}{w}" for w in ("alpha", "bravo", "delta", "gamma", "kilo", "lima", "omega")]
          for t in ("sun", "sea", "rock", "tree", "wind", "fire", "snow", "sand")]
FILLER = ["the", "a", "of", "and", "with", "near", "over", "under", "very", "quite"]


def sentence(rng, topic: int, n: int = 6, noise: float = 0.5) -> str:
  """`n` words, each from `topic`'s vocabulary or (with probability `noise`) filler/other topics."""
  words = []
  for _ in range(n):
    if rng.random() < noise:
      pool = FILLER if rng.random() < 0.5 else TOPICS[rng.integers(len(TOPICS))]
    else:
      pool = TOPICS[topic]
    words.append(pool[rng.integers(len(pool))])
  return " ".join(words)


def retrieval_data(seed=0):
  """24 queries over 48 documents (6 per topic); each query has 2 relevant documents of its topic,
  graded 2 and 1; other documents of the topic are distractors."""
  rng = np.random.default_rng(seed)
  corpus = [sentence(rng, d % len(TOPICS), n=10) for d in range(48)]
  queries, relevance = [], []
  for q in range(24):
    topic = q % len(TOPICS)
    same_topic = [d for d in range(48) if d % len(TOPICS) == topic]
    best, good = rng.choice(same_topic, 2, replace=False)
    queries.append(" ".join(corpus[best].split()[:4]) + " " + sentence(rng, topic, n=3, noise=0.8))
    relevance.append({int(best): 2.0, int(good): 1.0})
  return queries, corpus, relevance


def sts_data(seed=1):
  """60 pairs whose gold score is the number of words of b's topic put in a's sentence."""
  rng = np.random.default_rng(seed)
  a, b, scores = [], [], []
  for i in range(60):
    topic, other = rng.choice(len(TOPICS), 2, replace=False)
    shared = int(rng.integers(0, 6))
    words = sentence(rng, other, n=6, noise=0.3).split()
    words[:shared] = sentence(rng, topic, n=shared, noise=0.0).split() if shared else []
    a.append(" ".join(words))
    b.append(sentence(rng, topic, n=6, noise=0.3))
    scores.append(float(shared) + 0.01 * i)  # distinct gold scores: no ties in the ranking
  return a, b, scores


def classification_data(seed=2, num_classes=4):
  """Topic labels: 12 train and 10 test sentences per class, half their words noise."""
  rng = np.random.default_rng(seed)
  make = lambda per_class: [(sentence(rng, c, n=5, noise=0.7), c) for c in range(num_classes)
                            for _ in range(per_class)]
  return make(12), make(10)


class TrigramEmbedder:
  """A fixed random projection of hashed character-trigram counts: deterministic and quick, with
  scores far from 0 and 1 on the data above. Records every input it is given."""

  def __init__(self, dim=32, buckets=2048, seed=0):
    self.projection = np.random.default_rng(seed).normal(size=(buckets, dim))
    self.buckets, self.received = buckets, []

  def __call__(self, inputs):
    rows = []
    for parts in inputs:
      self.received.append(parts)
      text = " ".join(p["text"] for p in parts if "text" in p)
      counts = np.zeros(self.buckets)
      for i in range(len(text) - 2):
        counts[zlib.crc32(text[i:i + 3].encode()) % self.buckets] += 1
      rows.append(counts @ self.projection)
    return l2_normalize(np.asarray(rows, np.float32))


# ------------------------------------------------------------------------------ MTEB tasks
COMMON = dict(description="made in tests/test_mteb.py",
              dataset={"path": "gemb/none", "revision": "0"}, eval_splits=["test"],
              eval_langs=["eng-Latn"], modalities=["text"], category="t2t")


class GembTinyRetrieval(AbsTaskRetrieval):
  metadata = TaskMetadata(name="GembTinyRetrieval", type="Retrieval", main_score="ndcg_at_10",
                          **COMMON)

  def load_data(self, num_proc=None, **kwargs):
    queries, corpus, relevance = retrieval_data()
    self.dataset = {"default": {"test": RetrievalSplitData(
        queries=Dataset.from_list([{"id": f"q{i}", "text": t} for i, t in enumerate(queries)]),
        corpus=Dataset.from_list([{"id": f"d{i}", "text": t, "title": ""}
                                  for i, t in enumerate(corpus)]),
        relevant_docs={f"q{q}": {f"d{d}": int(g) for d, g in r.items()}
                       for q, r in enumerate(relevance)},
        top_ranked=None)}}
    self.data_loaded = True


class GembTinySTS(AbsTaskSTS):
  metadata = TaskMetadata(name="GembTinySTS", type="STS", main_score="cosine_spearman", **COMMON)
  min_score, max_score = 0, 6

  def load_data(self, num_proc=None, **kwargs):
    a, b, scores = sts_data()
    self.dataset = DatasetDict({"test": Dataset.from_dict(
        {"sentence1": a, "sentence2": b, "score": scores})})
    self.data_loaded = True


class GembTinyClassification(AbsTaskClassification):
  metadata = TaskMetadata(name="GembTinyClassification", type="Classification",
                          main_score="accuracy", **COMMON)
  samples_per_label = 1000  # every training example, in one experiment: gemb's probe sees the same
  n_experiments = 1

  def load_data(self, num_proc=None, **kwargs):
    train, test = classification_data()
    split = lambda rows: Dataset.from_dict({"text": [t for t, _ in rows],
                                            "label": [c for _, c in rows]})
    self.dataset = DatasetDict({"train": split(train), "test": split(test)})
    self.data_loaded = True


class GembUnreachableTask(GembTinySTS):
  metadata = TaskMetadata(name="GembUnreachableTask", type="STS", main_score="cosine_spearman",
                          **COMMON)

  def load_data(self, num_proc=None, **kwargs):
    raise ConnectionError("Couldn't reach 'mteb/none' on the Hub (LocalEntryNotFoundError)")


@pytest.fixture(scope="module")
def mteb_run():
  """The three tasks evaluated once by mteb through GembEncoder: ({task: main score}, embedder)."""
  embed_fn = TrigramEmbedder()
  encoder = GembEncoder(embed_fn, name="trigrams", embed_dim=32)
  result = mteb.evaluate(encoder, [GembTinyRetrieval(), GembTinySTS(), GembTinyClassification()],
                         cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 16})
  assert not result.exceptions, result.exceptions
  return {r.task_name: r.get_score() for r in result.task_results}, embed_fn


def with_task_strings(texts, key):
  return [features.with_task_string([{"text": t}], DEFAULT_TASK_STRINGS[key]) for t in texts]


# ------------------------------------------------------------------------------ scores
def test_retrieval_ndcg_at_10_equals_gembs(mteb_run):
  scores, _ = mteb_run
  queries, corpus, relevance = retrieval_data()
  evaluator = retrieval.Evaluator(with_task_strings(queries, "Retrieval-query"),
                                  [[{"text": t}] for t in corpus], relevance)  # graded, as MTEB's
  ours = dict(evaluator.run(TrigramEmbedder()))
  assert 0.2 < ours["NDCG@10"] < 0.9  # a score that can tell a wrong ranking from a right one
  # MTEB rounds retrieval metrics to 5 decimal places.
  assert scores["GembTinyRetrieval"] == pytest.approx(ours["NDCG@10"], abs=1e-5)


def test_sts_spearman_equals_gembs(mteb_run):
  scores, _ = mteb_run
  a, b, gold = sts_data()
  ours = dict(sts.Evaluator(with_task_strings(a, "STS"), with_task_strings(b, "STS"),
                            gold).run(TrigramEmbedder()))
  assert 0.2 < ours["spearman"] < 0.95
  assert scores["GembTinySTS"] == pytest.approx(ours["spearman"], abs=1e-9)


def test_classification_accuracy_equals_gembs_probe_at_the_same_regularisation(mteb_run):
  # MTEB fits sklearn's LogisticRegression(C=1) on every training example here (samples_per_label
  # above the class size, one experiment); gemb's probe with l2 = 1 / (C * N) is that same model.
  scores, _ = mteb_run
  train, test = classification_data()
  inputs = lambda rows: with_task_strings([t for t, _ in rows], "Classification")
  embed_fn = TrigramEmbedder()
  ours = dict(classification.Evaluator(inputs(train), [c for _, c in train], inputs(test),
                                       [c for _, c in test], l2=1.0 / len(train)).run(embed_fn))
  assert 0.3 < ours["accuracy"] < 1.0
  # Independent of both: sklearn with MTEB's settings on the same embeddings.
  probe = LogisticRegression(max_iter=100, random_state=42).fit(
      embed_fn(inputs(train)), [c for _, c in train])
  sklearn_accuracy = float(np.mean(probe.predict(embed_fn(inputs(test))) == [c for _, c in test]))
  assert scores["GembTinyClassification"] == pytest.approx(sklearn_accuracy, abs=1e-9)
  # The two solvers stop at slightly different points (sklearn: 100 L-BFGS steps, tol 1e-4);
  # a test example within that distance of a class boundary may flip: allow one.
  assert abs(scores["GembTinyClassification"] - ours["accuracy"]) <= 1 / len(test) + 1e-9


# ------------------------------------------------------------------------------ task strings
def test_queries_get_the_task_string_and_documents_do_not(mteb_run):
  _, embed_fn = mteb_run
  texts = [p["text"] for parts in embed_fn.received for p in parts]
  queries, corpus, _ = retrieval_data()
  assert f"task: search result | query: {queries[0]}" in texts
  assert corpus[0] in texts and not any(t.endswith(f"| query: {corpus[0]}") for t in texts)
  a, _, _ = sts_data()
  assert f"task: sentence similarity | query: {a[0]}" in texts  # symmetric: both sides
  assert a[0] not in texts


def test_task_strings_follow_mtebs_priority_order():
  metadata = GembTinyRetrieval.metadata
  table = {"query": "q", "Retrieval": "type", "Retrieval-query": "type-q",
           "GembTinyRetrieval": "task", "GembTinyRetrieval-query": "task-q"}
  assert task_string(table, metadata, PromptType.query) == "task-q"
  assert task_string(table, metadata, PromptType.document) == "task"
  del table["GembTinyRetrieval-query"], table["GembTinyRetrieval"]
  assert task_string(table, metadata, PromptType.query) == "type-q"
  assert task_string(table, metadata, PromptType.document) == "type"
  assert task_string({"query": "q"}, metadata, PromptType.query) == "q"
  assert task_string({"Retrieval": "x", "Retrieval-document": None}, metadata,
                     PromptType.document) is None  # a narrower key switches a broader one off


def test_an_overriding_table_changes_what_the_embed_fn_receives():
  embed_fn = TrigramEmbedder()
  encoder = GembEncoder(embed_fn, name="trigrams", embed_dim=32,
                        task_strings={"GembTinyRetrieval-document": "find the passage"})
  batches = [{"id": ["d0", "d1"], "text": ["red cube", "blue ball"]}]
  encoder.encode(batches, task_metadata=GembTinyRetrieval.metadata, hf_split="test",
                 hf_subset="default", prompt_type=PromptType.document)
  encoder.encode([{"text": ["where is the cube"]}], task_metadata=GembTinyRetrieval.metadata,
                 hf_split="test", hf_subset="default", prompt_type=PromptType.query)
  assert embed_fn.received == [[{"text": "task: find the passage | query: red cube"}],
                               [{"text": "task: find the passage | query: blue ball"}],
                               [{"text": "where is the cube"}]]  # the table has no query entry


def test_images_and_audio_become_gemb_parts():
  from PIL import Image
  received = []
  encoder = GembEncoder(lambda inputs: received.extend(inputs) or np.ones((len(inputs), 4)),
                        name="recorder", embed_dim=4, modalities=["text", "image", "audio"])
  image = Image.fromarray(np.full((6, 5), 200, np.uint8))  # greyscale: becomes RGB
  audio = {"array": np.zeros((2, 8000), np.float32), "sampling_rate": 8000}  # stereo, 8 kHz
  encoder.encode([{"text": ["a grey square"], "image": [image], "audio": [audio]}],
                 task_metadata=GembTinySTS.metadata, hf_split="test", hf_subset="default")
  (parts,) = received
  assert [list(p) for p in parts] == [["text"], ["image"], ["audio"]]
  assert parts[0]["text"] == "task: sentence similarity | query: a grey square"
  assert parts[1]["image"].shape == (6, 5, 3) and parts[1]["image"].dtype == np.uint8
  assert parts[2]["audio"].shape == (16000,)  # mono, resampled to gemb's 16 kHz


def test_mrl_dim_gives_renormalised_prefixes_and_names_the_experiment():
  encoder = GembEncoder(TrigramEmbedder(), name="trigrams", embed_dim=32, mrl_dim=8)
  out = encoder.encode([{"text": ["a", "red cube"]}], task_metadata=GembTinySTS.metadata,
                       hf_split="test", hf_subset="default")
  assert out.shape == (2, 8) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
  meta = encoder.mteb_model_meta
  assert (meta.name, meta.embed_dim, meta.framework, meta.similarity_fn_name.value) == (
      "gemb/trigrams", 8, ["JAX"], "cosine")
  assert meta.experiment_kwargs == {"mrl_dim": 8}  # results of each width kept apart
  with pytest.raises(ValueError, match="mrl_dim=64"):
    GembEncoder(TrigramEmbedder(), name="t", embed_dim=32, mrl_dim=64)


# ------------------------------------------------------------------------------ launch/mteb.py
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny random encoder saved as a training checkpoint, and exported from it as a text-only
  bundle (a few seconds): (config, workdir, bundle path)."""
  import ml_collections
  from flax import nnx
  from configs import common
  from gemb.export import bundle as export_bundle
  from gemb.train import checkpoints
  workdir = tmp_path_factory.mktemp("run")
  config = ml_collections.ConfigDict()
  config.model, config.mesh = common.model("tiny"), common.run().mesh
  config.stage_order = ("train",)
  config.export = common.export(modality_sets=(("text",),), platforms=("cpu",), max_batch=16)
  _, params, _ = nnx.split(random_encoder(config.model, seed=0), nnx.Param, ...)
  manager = checkpoints.make_manager(checkpoints.stage_dir(str(workdir), "train"), every=1, keep=1,
                                     async_save=False)
  checkpoints.save(manager, 5, {"params": {"encoder": params}}, {}, force=True)
  manager.close()
  return config, str(workdir), export_bundle.export(config, str(workdir), None,
                                                    str(workdir / "bundle"))


def test_a_checkpoint_and_its_bundle_give_mteb_the_same_embeddings(tiny_run):
  config, workdir, bundle = tiny_run
  from_checkpoint = GembEncoder.from_checkpoint(config, workdir)
  from_bundle = GembEncoder.from_bundle(bundle)
  assert from_checkpoint.mteb_model_meta.name == f"gemb/{os.path.basename(workdir)}-train-5"
  assert from_bundle.mteb_model_meta.name == "gemb/bundle"
  batches = [{"text": ["a red cube", "two blue spheres near a wall"]}]
  encode = lambda encoder: encoder.encode(batches, task_metadata=GembTinySTS.metadata,
                                          hf_split="test", hf_subset="default")
  np.testing.assert_allclose(encode(from_checkpoint), encode(from_bundle), atol=1e-5)
  assert from_checkpoint.mteb_model_meta.n_parameters == from_bundle.mteb_model_meta.n_parameters


def test_launch_runs_a_bundle_and_writes_the_table_and_mtebs_json(tiny_run, tmp_path):
  encoder = GembEncoder.from_bundle(tiny_run[2], name="tiny", mrl_dim=32)
  meta = encoder.mteb_model_meta
  assert (meta.embed_dim, meta.n_parameters, meta.max_tokens) == (32, 173440, 64)
  rows, failures = launch_mteb.run(encoder, [GembTinySTS(), GembUnreachableTask()], str(tmp_path))
  assert [r["task"] for r in rows] == ["GembTinySTS"] and -1 <= rows[0]["score"] <= 1
  (failure,) = failures
  assert failure.startswith("GembUnreachableTask: its data could not be downloaded")
  table = (tmp_path / "results.md").read_text()
  assert f"| GembTinySTS | STS | cosine_spearman | {100 * rows[0]['score']:.2f} |" in table
  assert "| Mean (Task) | 1 |" in table and "- GembUnreachableTask: its data" in table
  (json_file,) = tmp_path.glob("results/gemb__tiny/*/experiments/*/GembTinySTS.json")
  assert mteb.TaskResult.from_disk(json_file).get_score() == pytest.approx(rows[0]["score"])


def test_launch_names_unknown_tasks_and_wants_one_source():
  with pytest.raises(launch_mteb.app.UsageError, match="NoSuchTask"):
    launch_mteb.select_tasks(["NoSuchTask"], None, [])
  with pytest.raises(launch_mteb.app.UsageError, match="exactly one"):
    launch_mteb.select_tasks(["STS12"], "MTEB(eng, v2)", [])
  assert [t.metadata.name for t in launch_mteb.select_tasks(["STS12"], None, [])] == ["STS12"]
  assert len(launch_mteb.select_tasks([], "MTEB(eng, v2)", [])) == 41  # names only: no download


def test_launch_task_strings_file_lays_over_the_default_table(tmp_path):
  path = tmp_path / "strings.json"
  path.write_text('{"Retrieval-query": "find the answer", "STS": null}')
  table = launch_mteb.read_task_strings(str(path))
  assert table["Retrieval-query"] == "find the answer" and table["STS"] is None
  assert table["Classification"] == DEFAULT_TASK_STRINGS["Classification"]
  path.write_text('["not", "a", "table"]')
  with pytest.raises(launch_mteb.app.UsageError, match="JSON object"):
    launch_mteb.read_task_strings(str(path))
