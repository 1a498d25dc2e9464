"""Tests for the distillation experiment (gemb.proj.distill) and the trainer's distillation
stage, each against an independent reference.

References: the distillation objective written plainly in float64 numpy; the ids of every
ToyWorld example of a domain, recomputed from the raw examples; a teacher run on the fly versus
the same teacher precomputed into a table; an uninterrupted run for a resumed one;
gemb.evaluate's retrieval evaluator. Runs on the 8 CPU devices of conftest.py. Compilations are
few (one train step, one forward per layout): they dominate the time on a CPU.
"""
import json
import os

import jax
import numpy as np
import ml_collections
import pytest
from scipy.special import log_softmax

from configs import common
from configs.proj import distill as distill_config
from gemb import losses, sharding
from gemb.data import features, pipeline, tokenizer
from gemb.datasets import toyworld
from gemb.evaluate import registry
from gemb.proj.distill import evaluation, run as distill_run
from gemb.train import checkpoints, config_check, step as step_lib, teachers as teachers_lib
from gemb.train import trainer


@pytest.fixture(scope="module")
def config():
  """Two domains of one batch layout (one compiled step); each domain's 8 examples fill one
  batch, so every batch of a domain is the same set of examples (in a new order)."""
  c = distill_config.get_config("tiny")
  c.domains = {"text_to_image": {"rate": 1.0}, "code_to_image": {"rate": 1.0}}
  c.data.toyworld_size = 8
  c.batch_size = 8
  c.steps = 8
  c.eval.num_candidates = 8
  for student in c.students.values():  # the students' budget follows; their settings
    student.data.toyworld_size = 8
    student.stages.train.steps = c.steps
    student.stages.train.mixture = distill_run.domain_mixture(c)
    student.optim.lr, student.optim.warmup_steps, student.optim.schedule = 3e-3, 0, "constant"
    student.checkpoint.every = 4
    student.log_every = 1
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


def _distill_loss(mesh, mrl_dims, mrl_weights, temperatures, weights):
  """The trainer's distillation loss f(query, positive, batch) -> (loss, terms), as a stage
  with these settings builds it (gemb.train.step)."""
  teacher_temperature, student_temperature, contrastive_temperature = temperatures
  loss_cfg = common.loss(temperature=contrastive_temperature, learn_temperature=False,
                         symmetric=True, mrl_weights=mrl_weights)  # the reference's form
  distill = ml_collections.ConfigDict(dict(
      weights=weights, teacher_temperature=teacher_temperature,
      student_temperature=student_temperature))
  loss_fn = step_lib.make_loss(loss_cfg, mrl_dims, mesh, distill)
  settings = step_lib.loss_settings(loss_cfg, distill)
  return lambda query, positive, batch: loss_fn({}, query, positive, None, batch, settings)


def _labels(batch, teacher_query, teacher_positive):
  return {"query_id": batch["query_ids"], "positive_id": batch["positive_ids"],
          "teacher_query": teacher_query, "teacher_positive": teacher_positive}


def test_objective_matches_numpy_over_the_sharded_global_batch(mesh):
  batch = _random_batch(0)
  temperatures = (0.1, 0.05, 0.07)
  mrl_dims, mrl_weights = (8, 32), (0.25, 0.75)
  weights = {"kl": 1.0, "l2": 2.0, "contrastive": 0.5}
  loss_fn = _distill_loss(mesh, mrl_dims, mrl_weights, temperatures, weights)
  loss, got = jax.jit(loss_fn)(batch["query"], batch["positive"], _labels(
      batch, batch["teacher_query"], batch["teacher_positive"]))
  want = _numpy_terms(*batch.values(), *temperatures, mrl_dims, mrl_weights)
  for name in losses.DISTILLATION_TERMS:
    np.testing.assert_allclose(float(got[name]), want[name], rtol=2e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(float(loss), sum(w * want[k] for k, w in weights.items()),
                             rtol=2e-5, atol=1e-6)


def test_identical_teacher_and_student_give_zero_loss_and_gradient(mesh):
  batch = _random_batch(1, teacher_dim=32)
  loss_fn = _distill_loss(mesh, (32,), None, (0.05, 0.05, 0.05),
                          {"kl": 1.0, "l2": 1.0, "contrastive": 0.0})

  def distillation(query, positive):
    return loss_fn(query, positive, _labels(batch, batch["query"], batch["positive"]))

  (_, terms), grads = jax.jit(jax.value_and_grad(distillation, argnums=(0, 1), has_aux=True))(
      batch["query"], batch["positive"])
  assert abs(float(terms["kl"])) < 1e-6 and abs(float(terms["l2"])) < 1e-9
  assert float(terms["contrastive"]) > 0.1  # the labels' loss is not zero: the test can fail
  for grad in grads:
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-5)


def test_student_settings_are_checked(config):
  student = config.students.kl.copy_and_resolve_references()
  student.stages.train.distill.weights = {"kl": 0.0, "l2": 0.0, "contrastive": 0.0}
  with pytest.raises(ValueError, match="every weight of .*distill.weights is 0"):
    config_check.distill_stage(student, "train")
  student = config.students.kl.copy_and_resolve_references()
  student.stages.train.distill.teacher_temperature = 0.0
  with pytest.raises(ValueError, match="teacher_temperature"):
    config_check.distill_stage(student, "train")
  student = config.students.kl.copy_and_resolve_references()  # teachers are set by run.py
  with pytest.raises(ValueError, match="no teacher for task"):
    config_check.distill_stage(student, "train")


# ----------------------------------------------------------------------------------
# Data and teachers.


def _domain_ids(config, domain):
  """Every (query id, positive id) of a domain's training examples, from the raw examples."""
  examples, _ = distill_run._training_examples(config, domain)
  return {features.example_ids(raw) for raw in examples}


def test_batches_hold_one_domain(config):
  config = config.copy_and_resolve_references()
  config.domains = {"text_to_image": {"rate": 1.0}, "text_to_audio": {"rate": 1.0}}
  config.data.toyworld_size = 32
  ids = {domain: _domain_ids(config, domain) for domain in config.domains}
  query_ids = {domain: {q for q, _ in pairs} for domain, pairs in ids.items()}
  assert not query_ids["text_to_image"] & query_ids["text_to_audio"]  # the check can tell
  data = pipeline.make_iterator(config.data, config.model, distill_run.domain_mixture(config),
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
    teachers[domain] = teachers_lib.EncoderTeacher(
        config.model, *checkpoints.load_encoder(config.model, mesh, seed=100 + seed), mesh)
  return teachers


@pytest.fixture(scope="module")
def table_paths(config, encoder_teachers, tmp_path_factory):
  """The same teachers precomputed over every training example of their own domain only, as
  table files: domain -> path."""
  folder, paths = tmp_path_factory.mktemp("tables"), {}
  for domain, teacher in encoder_teachers.items():
    examples, task_string = distill_run._training_examples(config, domain)
    ids, embeddings = teachers_lib.precompute_table(lambda x, t=teacher: t.embed(x, None),
                                                    examples, task_string)
    paths[domain] = str(folder / f"{domain}.npz")
    teachers_lib.save_table(paths[domain], ids, embeddings)
  return paths


@pytest.fixture(scope="module")
def table_teachers(mesh, table_paths):
  return {domain: teachers_lib.TableTeacher.from_file(path, mesh)
          for domain, path in table_paths.items()}


def _first_batches(config, mesh):
  """The first batch of each domain, as the student's stage reads and shards them."""
  data = pipeline.make_iterator(config.data, config.model, distill_run.domain_mixture(config),
                                hard_negatives=False)
  batches, order = {}, []
  while len(batches) < len(config.domains):
    domain, host_batch = next(data)
    order.append(domain)
    batches.setdefault(domain, (host_batch, sharding.shard_batch(host_batch, mesh)))
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


def _student(config, name, table_paths):
  """Student `name`'s trainer config with the table teachers, as run.py sets the specialists."""
  student = config.students[name].copy_and_resolve_references()
  student.stages.train.distill.teachers = {
      domain: {"type": "table", "path": path} for domain, path in table_paths.items()}
  return student


def _logged(workdir) -> dict:
  """step -> metrics record of metrics.jsonl; a step logged twice keeps its last record."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {record["step"]: record for record in map(json.loads, f) if "loss" in record}


@pytest.fixture(scope="module")
def trained_student(config, table_paths, tmp_path_factory):
  """The KL student trained uninterrupted by the trainer: (its config, its workdir)."""
  # Each table holds its own domain's examples alone: a batch mixing domains, or a batch given
  # to another domain's teacher, would fail its lookup with a KeyError.
  student, workdir = _student(config, "kl", table_paths), str(tmp_path_factory.mktemp("kl"))
  trainer.train_and_evaluate(student, workdir)
  return student, workdir


def test_student_training_reduces_the_kl_on_single_domain_batches(config, mesh, table_teachers,
                                                                 trained_student):
  student, workdir = trained_student
  path = checkpoints.resolve("train", workdir)
  assert os.path.basename(path) == str(config.steps)

  distill = student.stages.train.distill
  temperatures = (distill.teacher_temperature, distill.student_temperature,
                  student.loss.temperature)
  mrl = (tuple(config.model.mrl_dims), (0.5, 0.5))
  initial = teachers_lib.EncoderTeacher(  # the stage's start: a random init of its seed
      config.model, *checkpoints.load_encoder(student.model, mesh, seed=student.seed), mesh)
  final = teachers_lib.EncoderTeacher.from_checkpoint(config.model, path, mesh)
  batches, first_domain = _first_batches(config, mesh)

  def numpy_terms(model, domain):
    host_batch, batch = batches[domain]
    embeddings = [np.asarray(x) for x in model.batch_embeddings(host_batch, batch)]
    teacher = [np.asarray(x) for x in table_teachers[domain].batch_embeddings(host_batch, batch)]
    return _numpy_terms(*embeddings, *teacher, host_batch["query_id"], host_batch["positive_id"],
                        *temperatures, *mrl)

  first = _logged(workdir)[1]
  want = numpy_terms(initial, first_domain)
  for name in losses.DISTILLATION_TERMS:  # the step-1 loss is the objective of the 1st batch
    assert first[name] == pytest.approx(want[name], rel=1e-4), name
  assert first["loss"] == pytest.approx(want["kl"], rel=1e-4)  # the KL student's loss: kl alone
  for domain in config.domains:
    before, after = numpy_terms(initial, domain)["kl"], numpy_terms(final, domain)["kl"]
    assert after < 0.7 * before, (domain, before, after)


def test_a_finished_student_is_only_reloaded(trained_student):
  student, workdir = trained_student
  logged = _logged(workdir)
  path = checkpoints.resolve("train", workdir)
  trainer.train_and_evaluate(student, workdir)  # run again: nothing left to do
  assert checkpoints.resolve("train", workdir) == path
  assert _logged(workdir) == logged  # no step was taken again


def test_killed_student_resumes_on_exactly_the_next_batch(config, table_paths, trained_student,
                                                         tmp_path, monkeypatch):
  """Stopped after 5 of 8 steps (checkpoints every 4), then run again: every step's metrics are
  the uninterrupted run's."""
  student = _student(config, "kl", table_paths)
  student.checkpoint.async_save = False  # the step-4 checkpoint is on disk when it stops
  init_train_state = trainer.init_train_state

  class Killed(Exception):
    pass

  def killed_after_five_steps(*args):
    graphdef, state, train_step = init_train_state(*args)

    def step(state, batch):
      if int(state["step"]) == 5:
        raise Killed()
      return train_step(state, batch)
    return graphdef, state, step

  monkeypatch.setattr(trainer, "init_train_state", killed_after_five_steps)
  with pytest.raises(Killed):
    trainer.train_and_evaluate(student, str(tmp_path))
  assert max(_logged(tmp_path)) == 5
  monkeypatch.setattr(trainer, "init_train_state", init_train_state)
  trainer.train_and_evaluate(student, str(tmp_path))  # resumes at step 4

  expected, resumed = _logged(trained_student[1]), _logged(tmp_path)
  assert resumed.keys() == expected.keys() == set(range(1, config.steps + 1))
  for step in expected:
    for key in ("loss", *losses.DISTILLATION_TERMS, "grad_norm"):
      np.testing.assert_allclose(resumed[step][key], expected[step][key], rtol=0, atol=1e-6,
                                 err_msg=f"step {step} {key}")


def test_per_side_distillation_step_equals_the_fused_step(config, mesh, table_paths,
                                                         table_teachers):
  student = _student(config, "kl_contrastive", table_paths)
  states, steps = {}, {}
  for fused in (True, False):  # the same random init (same seed), two ways to step
    student.fused_step = fused
    _, states[fused], steps[fused] = trainer.init_train_state(student, "train", mesh)
  batches, _ = _first_batches(config, mesh)
  for domain, (host_batch, batch) in batches.items():
    batch = dict(batch)  # joined with the teacher's embeddings, as a distillation stage does
    batch["teacher_query"], batch["teacher_positive"] = table_teachers[domain].batch_embeddings(
        host_batch, batch)
    metrics = {}
    with jax.set_mesh(mesh):
      for fused in (True, False):
        states[fused], metrics[fused] = steps[fused](states[fused], batch)
    for key in ("loss", *losses.DISTILLATION_TERMS, "grad_norm"):
      np.testing.assert_allclose(metrics[False][key], metrics[True][key], rtol=1e-5,
                                 err_msg=f"{domain} {key}")
  fused = jax.tree_util.tree_leaves_with_path(states[True]["params"])
  for (path, a), b in zip(fused, jax.tree.leaves(states[False]["params"])):
    a, b = np.asarray(a), np.asarray(b)  # relative to each leaf's scale, as the trainer's test
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(np.abs(a).max(), 1e-6),
                               err_msg=jax.tree_util.keystr(path))


def test_domain_evaluation_equals_the_retrieval_evaluator(config, encoder_teachers):
  """R@k of a (random) encoder on a domain's held-out examples, against gemb.evaluate's
  retrieval evaluator on the ToyWorld examples with relevance by positive key."""
  domain, count = "text_to_image", int(config.eval.num_candidates)
  task = evaluation.build(config, {domain: {"rate": 1.0}})[domain]
  examples = [toyworld.example(domain, "eval", i, 0, dict(config.data.toyworld))
              for i in range(count)]
  assert [q[0]["text"] for q in task.queries] == [ex["query"][0]["text"] for ex in examples]
  teacher = encoder_teachers[domain]
  keys = [ex["positive_key"] for ex in examples]
  reference = registry.create(
      "retrieval", queries=[ex["query"] for ex in examples],
      corpus=[ex["positive"] for ex in examples],
      relevant=[{j for j, other in enumerate(keys) if other == key} for key in keys])
  want = dict(reference.run(lambda inputs: teacher.embed(inputs, None)))
  got = task.metrics(teacher.embed)
  for metric in ("R@1", "R@5", "NDCG@10", "MRR@10"):
    assert got[metric] == pytest.approx(want[metric]), metric


# ----------------------------------------------------------------------------------
# The experiment's checks and report.


def test_fused_baseline_must_have_the_students_budget():
  check = lambda c: config_check.distillation(c, baselines=("specialist", "fusion"))
  config = distill_config.get_config("tiny")
  check(config)  # the shipped config is consistent
  config.fusion.stages.train.steps = config.steps + 1
  with pytest.raises(ValueError, match="the students' budget"):
    check(config)
  config = distill_config.get_config("tiny")
  config.students.l2.stages.train.mixture.text_to_image.batch_size = 2 * config.batch_size
  with pytest.raises(ValueError, match="the students' budget"):
    check(config)
  config = distill_config.get_config("tiny")
  domain = next(iter(config.domains))
  config.specialists[domain].train.stages.train.mixture = config.fusion.stages.train.mixture
  with pytest.raises(ValueError, match="alone"):
    check(config)


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
  table = distill_run.domain_table(report)
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
