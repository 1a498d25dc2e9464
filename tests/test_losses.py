"""Tests for gemb.losses, each against a reference written plainly here.

References: per-row numpy loops in float64 (values), and dense jnp losses over the
whole batch on one device (values and gradients). The sharded tests run on the 8 CPU
devices that conftest.py asks for.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from scipy.special import logsumexp, log_expit, softmax

from gemb import losses

MESH_AXES = ("data", "fsdp", "tensor")
HIGHEST = jax.lax.Precision.HIGHEST


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _batch(seed, batch=16, dim=8, num_queries=10, num_positives=10):
  """A batch whose duplicate ids are duplicate embeddings, as from a real pipeline."""
  rng = np.random.default_rng(seed)
  query_ids = rng.integers(0, num_queries, batch)
  positive_ids = rng.integers(0, num_positives, batch)
  query_table = _unit(rng.normal(size=(num_queries, dim)))
  positive_table = _unit(rng.normal(size=(num_positives, dim)))
  query = query_table[query_ids]
  # Positives near their query so the loss is not trivially uniform.
  positive = _unit(positive_table[positive_ids] + 1.5 * query)
  hard_negative = _unit(rng.normal(size=(batch, dim)) + query)
  assert len(set(query_ids)) < batch and len(set(positive_ids)) < batch  # has duplicates
  as_f32 = lambda x: np.asarray(x, np.float32)
  return dict(
      query=as_f32(query),
      positive=as_f32(positive),
      hard_negative=as_f32(hard_negative),
      query_ids=query_ids.astype(np.int32),
      positive_ids=positive_ids.astype(np.int32),
  )


# ---------------------------------------------------------------------------------
# References.


def _numpy_nce(query, positive, hard_negative, query_ids, positive_ids, temperature,
               symmetric=False):
  """The formula, one term at a time, float64."""
  q, p = np.float64(query), np.float64(positive)
  n = None if hard_negative is None else np.float64(hard_negative)

  def direction(anchors, targets, negatives):
    row_losses = []
    for i in range(len(anchors)):
      positive_logit = anchors[i] @ targets[i] / temperature
      terms = [positive_logit]
      if negatives is not None:
        terms.append(anchors[i] @ negatives[i] / temperature)
      for j in range(len(anchors)):
        duplicate = (query_ids is not None and query_ids[j] == query_ids[i]) or (
            positive_ids is not None and positive_ids[j] == positive_ids[i])
        if j != i and not duplicate:
          terms.append(anchors[i] @ targets[j] / temperature)
      row_losses.append(logsumexp(terms) - positive_logit)
    return np.mean(row_losses)

  loss = direction(q, p, n)
  if symmetric:
    loss = 0.5 * (loss + direction(p, q, None))
  return loss


def _dense_nce(query, positive, hard_negative, query_ids, positive_ids, temperature,
               symmetric=False):
  """Whole-batch jnp version of the formula (differentiable), for gradients."""
  eye = jnp.eye(query.shape[0], dtype=bool)
  duplicate = (query_ids[:, None] == query_ids[None]) | (
      positive_ids[:, None] == positive_ids[None])
  keep = eye | ~duplicate

  def direction(anchors, targets, negatives):
    logits = jnp.dot(anchors, targets.T, precision=HIGHEST) / temperature
    masked = jnp.where(keep, logits, -jnp.inf)
    if negatives is not None:
      negative_logits = jnp.sum(anchors * negatives, axis=1, keepdims=True) / temperature
      masked = jnp.concatenate([masked, negative_logits], axis=1)
    return jnp.mean(jax.nn.logsumexp(masked, axis=1) - jnp.diagonal(logits))

  loss = direction(query, positive, hard_negative)
  if symmetric:
    loss = 0.5 * (loss + direction(positive, query, None))
  return loss


# Compiled once for the whole file (tests share shapes), so each test compiles only
# the code under test.
_dense_nce_value_and_grads_jit = jax.jit(
    jax.value_and_grad(_dense_nce, argnums=(0, 1, 2, 5)), static_argnums=6)


def _dense_nce_value_and_grads(query, positive, hard_negative, query_ids, positive_ids,
                               temperature, symmetric):
  """(loss, (d/d query, d/d positive, d/d hard_negative, d/d temperature))."""
  return _dense_nce_value_and_grads_jit(query, positive, hard_negative, query_ids,
                                        positive_ids, jnp.float32(temperature), symmetric)


def _numpy_sigmoid(query, positive, hard_negative, query_ids, positive_ids, temperature,
                   bias):
  q, p = np.float64(query), np.float64(positive)
  logits = q @ p.T / temperature + bias
  eye = np.eye(len(q), dtype=bool)
  labels = np.where(eye, 1.0, -1.0)
  duplicate = (query_ids[:, None] == query_ids[None]) | (
      positive_ids[:, None] == positive_ids[None])
  weights = (eye | ~duplicate).astype(np.float64)
  total = -np.sum(weights * log_expit(labels * logits))
  if hard_negative is not None:
    negative_logits = np.sum(q * np.float64(hard_negative), axis=1) / temperature + bias
    total -= np.sum(log_expit(-negative_logits))
  return total / len(q)


def _dense_sigmoid(query, positive, hard_negative, query_ids, positive_ids, temperature,
                   bias):
  logits = jnp.dot(query, positive.T, precision=HIGHEST) / temperature + bias
  eye = jnp.eye(query.shape[0], dtype=bool)
  duplicate = (query_ids[:, None] == query_ids[None]) | (
      positive_ids[:, None] == positive_ids[None])
  pair_loss = -jax.nn.log_sigmoid(jnp.where(eye, 1.0, -1.0) * logits)
  total = jnp.sum(jnp.where(eye | ~duplicate, pair_loss, 0.0))
  negative_logits = jnp.sum(query * hard_negative, axis=1) / temperature + bias
  total += -jnp.sum(jax.nn.log_sigmoid(-negative_logits))
  return total / query.shape[0]


def _mesh(shape, axis_type=AxisType.Explicit):
  return jax.make_mesh(shape, MESH_AXES, axis_types=(axis_type,) * len(MESH_AXES))


def _on_mesh(mesh, arrays):
  """Global arrays with their batch sharded over (data, fsdp), as the trainer has them."""
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  return {name: jax.device_put(x, sharding) for name, x in arrays.items()}


def _assert_close(actual, expected, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------
# Masked NCE on one device.


@pytest.mark.parametrize("with_hard_negative", [False, True])
def test_masked_nce_masks_duplicates_as_numpy(with_hard_negative):
  b = _batch(0)
  if not with_hard_negative:
    b["hard_negative"] = None
  loss = losses.masked_nce_loss(**b, temperature=0.1)
  _assert_close(loss, _numpy_nce(**b, temperature=0.1))


def test_hard_negative_adds_its_term_to_each_denominator():
  b = _batch(1)
  temperature = 0.07
  without = losses.masked_nce_loss(
      b["query"], b["positive"], query_ids=b["query_ids"],
      positive_ids=b["positive_ids"], temperature=temperature)
  with_negative = losses.masked_nce_loss(**b, temperature=temperature)
  # By hand: each row's denominator gains e^{s(q_i, n_i)}.
  q, p, n = (np.float64(b[k]) for k in ("query", "positive", "hard_negative"))
  positive_logits = np.sum(q * p, 1) / temperature
  negative_logits = np.sum(q * n, 1) / temperature
  row_denominators = []
  for i in range(len(q)):
    keep = [j for j in range(len(q)) if j == i or (
        b["query_ids"][j] != b["query_ids"][i] and b["positive_ids"][j] != b["positive_ids"][i])]
    row_denominators.append(np.sum(np.exp(q[i] @ p[keep].T / temperature)))
  row_denominators = np.array(row_denominators)
  expected_without = np.mean(np.log(row_denominators) - positive_logits)
  expected_with = np.mean(
      np.log(row_denominators + np.exp(negative_logits)) - positive_logits)
  _assert_close(without, expected_without)
  _assert_close(with_negative, expected_with)
  assert float(with_negative) > float(without)


def test_symmetric_averages_both_directions_as_numpy():
  b = _batch(2)
  loss = losses.masked_nce_loss(**b, temperature=0.05, symmetric=True)
  _assert_close(loss, _numpy_nce(**b, temperature=0.05, symmetric=True))


def test_without_ids_is_softmax_cross_entropy():
  b = _batch(3)
  logits = np.float64(b["query"]) @ np.float64(b["positive"]).T / 0.1
  expected = np.mean(-np.log(np.diagonal(softmax(logits, axis=1))))
  _assert_close(losses.masked_nce_loss(b["query"], b["positive"], temperature=0.1),
                expected)


@pytest.mark.parametrize("block_size", [1, 4])
def test_blockwise_equals_full_on_one_device(block_size):
  b = _batch(4)

  def loss(q, p, n, block):
    return losses.masked_nce_loss(
        q, p, n, query_ids=b["query_ids"], positive_ids=b["positive_ids"],
        temperature=0.1, symmetric=True, block_size=block)

  args = (b["query"], b["positive"], b["hard_negative"])
  value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  full = value_and_grads(*args, None)
  blockwise = value_and_grads(*args, block_size)
  jax.tree.map(_assert_close, blockwise, full)


def test_learned_temperature_gradient_matches_dense():
  b = _batch(5)
  log_temperature = jnp.log(jnp.float32(0.08))

  def loss(log_t):
    t = losses.temperature_from_log(log_t, min_temperature=0.01, max_temperature=1.0)
    return losses.masked_nce_loss(**b, temperature=t, block_size=4)

  def reference(log_t):
    return _dense_nce(**{k: jnp.asarray(v) for k, v in b.items()},
                      temperature=jnp.exp(log_t))

  jax.tree.map(_assert_close, jax.jit(jax.value_and_grad(loss))(log_temperature),
               jax.jit(jax.value_and_grad(reference))(log_temperature))


def test_temperature_from_log_clips():
  log_values = np.log(np.array([1e-4, 0.05, 30.0], np.float32))
  got = [float(losses.temperature_from_log(v, min_temperature=0.01, max_temperature=1.0))
         for v in log_values]
  _assert_close(got, np.clip(np.exp(np.float64(log_values)), 0.01, 1.0))


# ---------------------------------------------------------------------------------
# Across devices.


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (4, 2, 1), (4, 1, 2)])
@pytest.mark.parametrize("block_size", [None, 8])
def test_sharded_nce_equals_whole_batch_on_one_device(mesh_shape, block_size):
  b = _batch(6, batch=32)
  mesh = _mesh(mesh_shape)
  loss = losses.sharded_loss(
      functools.partial(losses.masked_nce_loss, symmetric=True, block_size=block_size),
      mesh)
  g = _on_mesh(mesh, b)

  def sharded(q, p, n):
    return loss(q, p, n, query_ids=g["query_ids"], positive_ids=g["positive_ids"],
                temperature=0.1)

  got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(
      g["query"], g["positive"], g["hard_negative"])
  value, grads = _dense_nce_value_and_grads(**b, temperature=0.1, symmetric=True)
  jax.tree.map(_assert_close, got, (value, grads[:3]))


def test_sharded_loss_on_auto_mesh_with_learned_temperature():
  b = _batch(7, batch=32)
  mesh = _mesh((4, 1, 2), AxisType.Auto)
  loss = losses.sharded_loss(functools.partial(losses.masked_nce_loss, block_size=16),
                             mesh)

  def sharded(q, p, n, t):
    return loss(q, p, n, query_ids=b["query_ids"], positive_ids=b["positive_ids"],
                temperature=t)

  args = (b["query"], b["positive"], b["hard_negative"], jnp.float32(0.05))
  (value, grads) = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(*args)
  expected_value, expected_grads = _dense_nce_value_and_grads(
      **b, temperature=jnp.float32(0.05), symmetric=False)
  jax.tree.map(_assert_close, (value, grads[:3]), (expected_value, expected_grads[:3]))
  # d loss / d temperature sums many cancelling terms: f32 round-off is ~1e-5 of it.
  _assert_close(grads[3], expected_grads[3], rtol=1e-4)


def test_sharded_loss_is_replicated_and_needs_divisible_batch():
  mesh = _mesh((4, 2, 1))
  loss = losses.sharded_loss(losses.masked_nce_loss, mesh)
  b = _batch(8, batch=16)
  value = jax.jit(lambda q, p: loss(q, p, temperature=0.1))(b["query"], b["positive"])
  assert value.sharding.is_fully_replicated
  with pytest.raises(ValueError, match="divisible by the 8 shards"):
    loss(b["query"][:12], b["positive"][:12], temperature=0.1)


# ---------------------------------------------------------------------------------
# SigLIP.


def test_sigmoid_loss_matches_numpy():
  b = _batch(9)
  loss = losses.sigmoid_loss(**b, temperature=0.1, bias=-3.0)
  _assert_close(loss, _numpy_sigmoid(**b, temperature=0.1, bias=-3.0))


@pytest.mark.parametrize("mesh_shape,block_size", [(None, 4), ((4, 2, 1), 8)])
def test_sigmoid_loss_chunked_equals_dense(mesh_shape, block_size):
  b = _batch(10, batch=32)
  if mesh_shape is None:
    loss_fn = functools.partial(losses.sigmoid_loss, block_size=block_size)
    ids = b
  else:
    mesh = _mesh(mesh_shape)
    loss_fn = losses.sharded_loss(
        functools.partial(losses.sigmoid_loss, block_size=block_size), mesh)
    ids = _on_mesh(mesh, b)

  def chunked(q, p, n, t, bias):
    return loss_fn(q, p, n, query_ids=ids["query_ids"], positive_ids=ids["positive_ids"],
                   temperature=t, bias=bias)

  def dense(q, p, n, t, bias):
    return _dense_sigmoid(q, p, n, b["query_ids"], b["positive_ids"], t, bias)

  args = (b["query"], b["positive"], b["hard_negative"], jnp.float32(0.1),
          jnp.float32(-2.0))
  got = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2, 3, 4)))(*args)
  expected = jax.jit(jax.value_and_grad(dense, argnums=(0, 1, 2, 3, 4)))(*args)
  jax.tree.map(_assert_close, got, expected)
  _assert_close(got[0], _numpy_sigmoid(**b, temperature=0.1, bias=-2.0))


# ---------------------------------------------------------------------------------
# MRL.


def test_mrl_is_weighted_sum_of_renormalised_prefix_losses():
  b = _batch(11, dim=16)
  dims, weights = (4, 8, 16), (0.5, 1.0, 2.0)
  loss = losses.mrl_loss(losses.masked_nce_loss, b["query"], b["positive"],
                         b["hard_negative"], mrl_dims=dims, mrl_weights=weights,
                         temperature=0.1, query_ids=b["query_ids"],
                         positive_ids=b["positive_ids"])
  expected = 0.0
  for dim, weight in zip(dims, weights):
    prefix = {k: _unit(np.float64(b[k][:, :dim]))
              for k in ("query", "positive", "hard_negative")}
    expected += weight * _numpy_nce(**prefix, query_ids=b["query_ids"],
                                    positive_ids=b["positive_ids"], temperature=0.1)
  _assert_close(loss, expected)


# ---------------------------------------------------------------------------------
# Distillation.


def _teacher_student(seed, batch=16):
  rng = np.random.default_rng(seed)
  teacher = {k: _unit(rng.normal(size=(batch, 24))).astype(np.float32)
             for k in ("query", "positive")}
  student = {k: _unit(rng.normal(size=(batch, 8))).astype(np.float32)
             for k in ("query", "positive")}
  return teacher, student


def _numpy_kl(teacher_sims, student_sims, teacher_temperature, student_temperature):
  target = softmax(np.float64(teacher_sims) / teacher_temperature, axis=1)
  log_student = np.float64(student_sims) / student_temperature
  log_student = log_student - logsumexp(log_student, axis=1, keepdims=True)
  return np.mean(np.sum(target * (np.log(target) - log_student), axis=1))


def test_distillation_kl_matches_numpy():
  teacher, student = _teacher_student(12)
  teacher_sims = losses.in_batch_similarities(teacher["query"], teacher["positive"])
  student_sims = losses.in_batch_similarities(student["query"], student["positive"])
  _assert_close(teacher_sims, teacher["query"] @ teacher["positive"].T)
  loss = losses.distillation_kl_loss(teacher_sims, student_sims, teacher_temperature=0.05,
                                     student_temperature=0.1)
  expected = _numpy_kl(np.float64(teacher["query"]) @ np.float64(teacher["positive"]).T,
                       np.float64(student["query"]) @ np.float64(student["positive"]).T,
                       0.05, 0.1)
  _assert_close(loss, expected)


def test_distillation_kl_is_zero_for_identical_teacher_and_student():
  teacher, _ = _teacher_student(13)
  sims = losses.in_batch_similarities(teacher["query"], teacher["positive"])

  def loss(teacher_sims, student_sims):
    return losses.distillation_kl_loss(teacher_sims, student_sims,
                                       teacher_temperature=0.05, student_temperature=0.05)

  value, (teacher_grad, student_grad) = jax.value_and_grad(loss, argnums=(0, 1))(sims, sims)
  _assert_close(value, 0.0)
  _assert_close(student_grad, np.zeros_like(sims))
  assert not np.any(np.asarray(teacher_grad))  # the teacher is a fixed target


def test_distillation_l2_matches_numpy():
  teacher, student = _teacher_student(14)
  teacher_sims = np.float64(teacher["query"]) @ np.float64(teacher["positive"]).T
  student_sims = np.float64(student["query"]) @ np.float64(student["positive"]).T
  loss = losses.distillation_l2_loss(
      losses.in_batch_similarities(teacher["query"], teacher["positive"]),
      losses.in_batch_similarities(student["query"], student["positive"]))
  _assert_close(loss, np.mean((student_sims - teacher_sims) ** 2))


def test_sharded_distillation_equals_one_device():
  teacher, student = _teacher_student(15, batch=32)
  mesh = _mesh((4, 2, 1))

  def distill(tq, tp, sq, sp, axis_name=None):
    t = losses.in_batch_similarities(tq, tp, axis_name=axis_name)
    s = losses.in_batch_similarities(sq, sp, axis_name=axis_name)
    return (losses.distillation_kl_loss(t, s, teacher_temperature=0.05,
                                        student_temperature=0.1, axis_name=axis_name)
            + losses.distillation_l2_loss(t, s, axis_name=axis_name))

  args = (teacher["query"], teacher["positive"], student["query"], student["positive"])
  sharded = jax.jit(jax.value_and_grad(losses.sharded_loss(distill, mesh), argnums=(2, 3)))
  expected = jax.jit(jax.value_and_grad(distill, argnums=(2, 3)))(*args)
  jax.tree.map(_assert_close, sharded(*args), expected)


# ---------------------------------------------------------------------------------
# Bad input fails at trace time, naming the argument.


def _nce_kwargs(b, **overrides):
  kwargs = dict(b, temperature=0.1)
  kwargs.update(overrides)
  return kwargs


@pytest.mark.parametrize(
    "overrides,match",
    [
        (lambda b: dict(positive=b["positive"][:, :4]), "positive has shape"),
        (lambda b: dict(hard_negative=b["hard_negative"][:8]), "hard_negative has shape"),
        (lambda b: dict(query=b["query"][0]), r"query must be \[batch, dim\]"),
        (lambda b: dict(query_ids=b["query_ids"][:5]), r"query_ids must be \[batch\]"),
        (lambda b: dict(positive_ids=np.float32(b["positive_ids"])),
         "positive_ids must be integers"),
        (lambda b: dict(temperature=0.0), "temperature must be > 0"),
        (lambda b: dict(temperature=-0.1), "temperature must be > 0"),
        (lambda b: dict(temperature=np.ones(2)), "temperature must be a scalar"),
        (lambda b: dict(block_size=5), "block_size=5 must divide the gathered"),
        (lambda b: dict(block_size=0), "block_size must be a positive int"),
    ],
)
def test_masked_nce_rejects_bad_input(overrides, match):
  b = _batch(16)
  with pytest.raises(ValueError, match=match):
    jax.jit(lambda: losses.masked_nce_loss(**_nce_kwargs(b, **overrides(b)))).trace()


def test_block_size_must_divide_the_gathered_batch():
  b = _batch(17, batch=16)
  loss = losses.sharded_loss(functools.partial(losses.masked_nce_loss, block_size=6),
                             _mesh((8, 1, 1)))
  # 6 divides no per-device batch of 2 either, but the error is about the global 16.
  with pytest.raises(ValueError, match="block_size=6 must divide the gathered .* 16"):
    jax.jit(lambda q, p: loss(q, p, temperature=0.1)).trace(b["query"], b["positive"])


def test_other_losses_reject_bad_input():
  b = _batch(18)
  sims = np.zeros((16, 16), np.float32)
  with pytest.raises(ValueError, match="bias must be a scalar"):
    losses.sigmoid_loss(b["query"], b["positive"], temperature=0.1, bias=np.zeros(3))
  with pytest.raises(ValueError, match="mrl_weights has 1 entries but mrl_dims has 2"):
    losses.mrl_loss(losses.masked_nce_loss, b["query"], b["positive"], mrl_dims=(4, 8),
                    mrl_weights=(1.0,), temperature=0.1)
  with pytest.raises(ValueError, match="mrl_dims entry 9"):
    losses.mrl_loss(losses.masked_nce_loss, b["query"], b["positive"], mrl_dims=(4, 9),
                    mrl_weights=(1.0, 1.0), temperature=0.1)
  with pytest.raises(ValueError, match="student_similarities has shape"):
    losses.distillation_kl_loss(sims, sims[:, :8], teacher_temperature=0.1,
                                student_temperature=0.1)
  with pytest.raises(ValueError, match="teacher_temperature must be > 0"):
    losses.distillation_kl_loss(sims, sims, teacher_temperature=0.0,
                                student_temperature=0.1)
  with pytest.raises(ValueError, match="max_temperature"):
    losses.temperature_from_log(0.0, min_temperature=0.5, max_temperature=0.1)


def _count(jaxpr, primitive: str) -> int:
  """How many `primitive` equations a jaxpr has, sub-jaxprs (shard_map, scan) included."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == primitive
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _count(inner, primitive)
  return total


@pytest.mark.parametrize("loss_fn, symmetric", [
    (losses.masked_nce_loss, True), (losses.masked_nce_loss, False),
    (functools.partial(losses.sigmoid_loss, bias=-1.0), None)])
def test_sharded_mrl_gathers_each_array_once_and_equals_one_device(loss_fn, symmetric):
  b = _batch(12, batch=32, dim=16)
  dims, weights = (4, 8, 16), (0.5, 1.0, 2.0)
  if symmetric is not None:
    loss_fn = functools.partial(loss_fn, symmetric=symmetric)
  core = functools.partial(losses.mrl_loss, loss_fn, mrl_dims=dims, mrl_weights=weights)
  mesh = _mesh((4, 2, 1))
  g = _on_mesh(mesh, b)
  sharded = losses.sharded_loss(core, mesh)
  fn = lambda q, p, n: sharded(q, p, n, query_ids=g["query_ids"], positive_ids=g["positive_ids"],
                               temperature=0.1)
  got = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(
      g["query"], g["positive"], g["hard_negative"])
  want = jax.value_and_grad(lambda q, p, n: core(
      q, p, n, query_ids=b["query_ids"], positive_ids=b["positive_ids"], temperature=0.1),
      argnums=(0, 1, 2))(b["query"], b["positive"], b["hard_negative"])
  jax.tree.map(_assert_close, got, want)
  # One all_gather per array (positives, the queries for the reverse direction, two id
  # arrays), whatever the number of prefix widths: 3 widths used to gather 3x.
  jaxpr = jax.make_jaxpr(fn)(g["query"], g["positive"], g["hard_negative"]).jaxpr
  assert _count(jaxpr, "all_gather") == (4 if symmetric else 3)
