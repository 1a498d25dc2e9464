"""Tests for gemb.proj.distill, each against an independent reference.

References: the distillation objective written plainly in float64 numpy; the ids of every
ToyWorld example of a domain, recomputed from the raw examples; a teacher run on the fly versus
the same teacher precomputed into a table; gemb.evaluate's retrieval evaluator. Runs on the 8
CPU devices of conftest.py. Compilations are few (one train step, one forward per layout):
they dominate the time on a CPU.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from configs.proj import distill as distill_config
from gemb import sharding
from gemb.data import pipeline, tokenizer
from gemb.datasets import toyworld
from gemb.proj.distill import evaluation, run as distill_run, step as distill_step
from gemb.proj.distill import teachers as teachers_lib, train as distill_train
from gemb.evaluate import registry, toyworld_suite
from gemb.train import metrics as metrics_lib


@pytest.fixture(scope="module")
def config():
  """Two domains of one batch layout (one compiled step); each domain's 8 examples fill one
  batch, so every batch of a domain is the same set of examples (in a new order)."""
  c = distill_config.get_config("tiny")
  c.domains = {"text_to_image": {"rate": 1.0}, "code_to_image": {"rate": 1.0}}
  c.data.toyworld_size = 8
  c.batch_size = 8
  c.steps = 8
  c.optim.lr, c.optim.warmup_steps, c.optim.schedule = 3e-3, 0, "constant"
  c.checkpoint.every = 4
  c.log_every = 1
  c.eval.num_candidates = 8
  return c


@pytest.fixture(scope="module")
def mesh(config):
  return sharding.make_mesh(config.mesh)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------
# The objective against numpy.


def _numpy_terms(query, positive, teacher_query, teacher_positive, query_ids, positive_ids,
                 t_teacher, t_student, t_contrastive, mrl_dims, mrl_weights):
  """The objective's formulas in float64, one MRL prefix and one row at a time."""
  teacher = np.float64(teacher_query) @ np.float64(teacher_positive).T
  teacher_log_p = log_softmax(teacher / t_teacher, axis=1)
  out = {"kl": 0.0, "l2": 0.0, "contrastive": 0.0}
  for dim, weight in zip(mrl_dims, mrl_weights):
    q, p = _unit(np.float64(query)[:, :dim]), _unit(np.float64(positive)[:, :dim])
    student = q @ p.T
    student_log_p = log_softmax(student / t_student, axis=1)
    kl = np.mean([np.sum(np.exp(teacher_log_p[i]) * (teacher_log_p[i] - student_log_p[i]))
                  for i in range(len(q))])
    l2 = np.mean((student - teacher) ** 2)

    def nce(anchors, targets):
      rows = []
      for i in range(len(anchors)):
        logits = anchors[i] @ targets.T / t_contrastive
        keep = [j == i or (query_ids[j] != query_ids[i] and positive_ids[j] != positive_ids[i])
                for j in range(len(targets))]
        rows.append(np.log(np.sum(np.exp(logits[keep]))) - logits[i])
      return np.mean(rows)

    out["kl"] += weight * kl
    out["l2"] += weight * l2
    out["contrastive"] += weight * 0.5 * (nce(q, p) + nce(p, q))
  return out


def _random_batch(seed, batch=16, dim=32, teacher_dim=12):
  rng = np.random.default_rng(seed)
  query = _unit(rng.normal(size=(batch, dim)))
  return dict(
      query=query.astype(np.float32),
      positive=_unit(query + rng.normal(size=(batch, dim))).astype(np.float32),
      teacher_query=_unit(rng.normal(size=(batch, teacher_dim))).astype(np.float32),
      teacher_positive=_unit(rng.normal(size=(batch, teacher_dim))).astype(np.float32),
      query_ids=rng.integers(0, 10, batch).astype(np.int32),
      positive_ids=rng.integers(0, 10, batch).astype(np.int32))


def test_objective_matches_numpy_over_the_sharded_global_batch(mesh):
  batch = _random_batch(0)
  temperatures = (0.1, 0.05, 0.07)
  mrl_dims, mrl_weights = (8, 32), (0.25, 0.75)
  terms_fn = distill_step.make_terms_fn(mrl_dims, mrl_weights, symmetric=True, mesh=mesh)
  got = jax.jit(terms_fn)(*batch.values(), *(jnp.float32(t) for t in temperatures))
  want = _numpy_terms(*batch.values(), *temperatures, mrl_dims, mrl_weights)
  for name in distill_step.TERMS:
    np.testing.assert_allclose(float(got[name]), want[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_identical_teacher_and_student_give_zero_loss_and_gradient(mesh):
  batch = _random_batch(1, teacher_dim=32)
  terms_fn = distill_step.make_terms_fn((32,), None, symmetric=True, mesh=mesh)

  def distillation(query, positive):
    terms = terms_fn(query, positive, batch["query"], batch["positive"], batch["query_ids"],
                     batch["positive_ids"], jnp.float32(0.05), jnp.float32(0.05),
                     jnp.float32(0.05))
    return terms["kl"] + terms["l2"], terms

  (_, terms), grads = jax.jit(jax.value_and_grad(distillation, argnums=(0, 1), has_aux=True))(
      batch["query"], batch["positive"])
  assert abs(float(terms["kl"])) < 1e-6 and abs(float(terms["l2"])) < 1e-9
  assert float(terms["contrastive"]) > 0.1  # the labels' loss is not zero: the test can fail
  for grad in grads:
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-5)


def test_student_settings_are_checked(config):
  student = config.students.kl.copy_and_resolve_references()
  student.weights = {"kl": 0.0, "l2": 0.0, "contrastive": 0.0}
  with pytest.raises(ValueError, match="every student loss weight is 0"):
    distill_step.hyperparameters(student)
  student = config.students.kl.copy_and_resolve_references()
  student.teacher_temperature = 0.0
  with pytest.raises(ValueError, match="teacher_temperature"):
    distill_step.hyperparameters(student)


# ----------------------------------------------------------------------------------
# Data and teachers.


def _domain_ids(config, domain):
  """Every (query id, positive id) of a domain's training examples, from the raw examples."""
  examples, _ = distill_run._training_examples(config, domain)
  return {teachers_lib.example_ids(raw) for raw in examples}


def test_batches_hold_one_domain(config):
  config = config.copy_and_resolve_references()
  config.domains = {"text_to_image": {"rate": 1.0}, "text_to_audio": {"rate": 1.0}}
  config.data.toyworld_size = 32
  ids = {domain: _domain_ids(config, domain) for domain in config.domains}
  query_ids = {domain: {q for q, _ in pairs} for domain, pairs in ids.items()}
  assert not query_ids["text_to_image"] & query_ids["text_to_audio"]  # the check can tell
  data = pipeline.make_iterator(config.data, config.model, distill_train.domain_mixture(config),
                                hard_negatives=False)
  seen = set()
  for _ in range(12):
    domain, batch = next(data)
    seen.add(domain)
    rows = set(zip(batch["query_id"].tolist(), batch["positive_id"].tolist()))
    assert rows <= ids[domain], f"a {domain} batch holds examples of another domain"
    assert ("image" if domain == "text_to_image" else "audio") in batch["positive"]
  data.close()
  assert seen == set(config.domains)


@pytest.fixture(scope="module")
def encoder_teachers(config, mesh):
  """A randomly initialised gemb encoder per domain, standing in for trained specialists."""
  teachers = {}
  for seed, domain in enumerate(config.domains):
    teacher_config = config.copy_and_resolve_references()
    teacher_config.seed = 100 + seed
    graphdef, params, rest = distill_train.init_student(teacher_config, mesh)
    teachers[domain] = teachers_lib.EncoderTeacher(config.model, graphdef, params["encoder"],
                                                   rest, mesh)
  return teachers


@pytest.fixture(scope="module")
def table_teachers(config, mesh, encoder_teachers):
  """The same teachers precomputed over every training example of their own domain only."""
  tables = {}
  for domain, teacher in encoder_teachers.items():
    examples, task_string = distill_run._training_examples(config, domain)
    ids, embeddings = teachers_lib.precompute_table(lambda x, t=teacher: t.embed(x, None),
                                                    examples, task_string)
    tables[domain] = teachers_lib.TableTeacher(ids, embeddings, mesh, name=domain)
  return tables


def _first_batches(config, mesh):
  """The first batch of each domain, as the student's iterator yields them."""
  data = pipeline.make_iterator(config.data, config.model, distill_train.domain_mixture(config),
                                hard_negatives=False)
  batches, order = {}, []
  while len(batches) < len(config.domains):
    domain, host_batch = next(data)
    order.append(domain)
    batches.setdefault(domain, (host_batch, distill_train._shard(host_batch, mesh)))
  data.close()
  return batches, order[0]


def test_precomputed_table_equals_on_the_fly_teacher(config, mesh, encoder_teachers,
                                                     table_teachers):
  batches, _ = _first_batches(config, mesh)
  for domain, (host_batch, batch) in batches.items():
    on_the_fly = encoder_teachers[domain].batch_embeddings(host_batch, batch)
    table = table_teachers[domain].batch_embeddings(host_batch, batch)
    for a, b in zip(on_the_fly, table):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_table_lookup_normalises_rows_and_names_missing_ids(mesh):
  table = teachers_lib.TableTeacher(np.array([5, 3]), np.array([[3.0, 4.0], [1.0, 0.0]]), mesh)
  np.testing.assert_allclose(table.lookup(np.array([3, 5])), [[1.0, 0.0], [0.6, 0.8]])
  with pytest.raises(KeyError, match="7"):
    table.lookup(np.array([3, 7]))


# ----------------------------------------------------------------------------------
# Training and evaluation.


def test_student_training_reduces_the_kl_on_single_domain_batches(config, mesh, table_teachers,
                                                                 tmp_path):
  # Each table holds its own domain's examples alone: a batch mixing domains, or a batch given
  # to another domain's teacher, would fail its lookup with a KeyError.
  writer = metrics_lib.MetricWriter(str(tmp_path))
  path = distill_train.train_student(config, str(tmp_path), "kl", table_teachers, mesh, writer)
  writer.close()
  assert os.path.basename(path) == str(config.steps)

  student_cfg = config.students.kl
  temperatures = (student_cfg.teacher_temperature, student_cfg.student_temperature,
                  student_cfg.contrastive_temperature)
  mrl = (tuple(config.model.mrl_dims), (0.5, 0.5))
  graphdef, params, rest = distill_train.init_student(config, mesh)  # train_student's start
  initial = teachers_lib.EncoderTeacher(config.model, graphdef, params["encoder"], rest, mesh)
  final = teachers_lib.EncoderTeacher.from_checkpoint(config.model, config.seed, path, mesh)
  batches, first_domain = _first_batches(config, mesh)

  def numpy_terms(student, domain):
    host_batch, batch = batches[domain]
    embeddings = [np.asarray(x) for x in student.batch_embeddings(host_batch, batch)]
    teacher = [np.asarray(x) for x in table_teachers[domain].batch_embeddings(host_batch, batch)]
    return _numpy_terms(*embeddings, *teacher, host_batch["query_id"], host_batch["positive_id"],
                        *temperatures, *mrl)

  with open(tmp_path / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  first = next(record for record in logged if record["step"] == 1)
  want = numpy_terms(initial, first_domain)
  for name in distill_step.TERMS:  # the loop's step-1 loss is the objective of the 1st batch
    assert first[name] == pytest.approx(want[name], rel=1e-4), name
  for domain in config.domains:
    before, after = numpy_terms(initial, domain)["kl"], numpy_terms(final, domain)["kl"]
    assert after < 0.7 * before, (domain, before, after)

  # Run again: it resumes from the last checkpoint and has nothing left to do.
  assert distill_train.train_student(config, str(tmp_path), "kl", table_teachers, mesh,
                                     metrics_lib.MetricWriter(str(tmp_path), enabled=False)) == path


def test_domain_evaluation_equals_the_retrieval_evaluator(config, encoder_teachers):
  """R@k of a (random) encoder on a domain's held-out examples, against gemb.evaluate's
  retrieval evaluator on the ToyWorld examples with relevance by positive key."""
  domain, count = "text_to_image", int(config.eval.num_candidates)
  task = evaluation.build(config, {domain: {"rate": 1.0}})[domain]
  examples = [toyworld.example(domain, "eval", i, 0, dict(config.data.toyworld))
              for i in range(count)]
  assert [q[0]["text"] for q in task.queries] == [ex["query"][0]["text"] for ex in examples]
  teacher = encoder_teachers[domain]
  reference = registry.create(
      "retrieval", queries=[ex["query"] for ex in examples],
      corpus=[ex["positive"] for ex in examples],
      relevant=toyworld_suite._relevant_by_key([ex["positive_key"] for ex in examples]))
  want = dict(reference.run(lambda inputs: teacher.embed(inputs, None)))
  got = task.metrics(teacher.embed)
  for metric in ("R@1", "R@5", "NDCG@10", "MRR@10"):
    assert got[metric] == pytest.approx(want[metric]), metric


# ----------------------------------------------------------------------------------
# The experiment's checks and report.


def test_fused_baseline_must_have_the_students_budget():
  config = distill_config.get_config("tiny")
  distill_run.check_config(config)  # the shipped config is consistent
  config.fusion.stages.train.steps = config.steps + 1
  with pytest.raises(ValueError, match="the students' budget"):
    distill_run.check_config(config)
  config = distill_config.get_config("tiny")
  domain = next(iter(config.domains))
  config.specialists[domain].train.stages.train.mixture = config.fusion.stages.train.mixture
  with pytest.raises(ValueError, match="alone"):
    distill_run.check_config(config)


def test_goal_compares_each_student_with_the_specialists_and_the_fused_model():
  r1 = {"specialist": {"a": 0.90, "b": 0.80}, "fusion": {"a": 0.50, "b": 0.90},
        "kl": {"a": 0.89, "b": 0.70}, "l2": {"a": 0.95, "b": 0.79}}
  report = {"R@1": r1, "average": {"R@1": distill_run._averages(r1)}}
  assert report["average"]["R@1"] == pytest.approx(
      {"specialist": 0.85, "fusion": 0.70, "kl": 0.795, "l2": 0.87})
  goal = distill_run._goal(report, ["kl", "l2"], margin=0.02)
  assert goal["kl"]["gap_to_specialist"] == pytest.approx({"a": 0.01, "b": 0.10})
  assert goal["kl"]["within_margin"] == {"a": True, "b": False}
  assert not goal["kl"]["within_margin_on_every_domain"]
  assert goal["kl"]["ahead_of_fusion_on_average"]
  assert goal["l2"]["within_margin_on_every_domain"] and goal["l2"]["ahead_of_fusion_on_average"]
  table = distill_run.markdown_table(report)
  assert "| a | 90.0 | 50.0 | 89.0 | 95.0 |" in table and "| **average** | 85.0" in table


def test_shipped_config_reads_every_toyworld_query_whole():
  """The full config's tokenizer and text limit hold each domain's queries whole (a truncated
  caption would lose attributes), against the tokenizer run directly on ToyWorld's raw texts."""
  config = distill_config.get_config()
  tok = tokenizer.make_tokenizer(config.model.tokenizer, config.model.vocab_size)
  longest = 0
  for domain in config.domains:
    for split in ("train", "eval"):
      for index in range(200):
        raw = toyworld.example(domain, split, index, config.data.seed, dict(config.data.toyworld))
        for part in raw["query"]:
          ids = tok.encode(part["text"])
          assert tok.decode(ids) == part["text"]
          longest = max(longest, len(ids))
  assert 0 < longest <= config.model.max_text_tokens
  # Each universal model sees every domain as often as that domain's specialist does.
  for domain in config.domains:
    assert (config.specialists[domain].train.stages.train.steps * len(config.domains)
            == config.steps)
