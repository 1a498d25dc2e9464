"""The distillation objective and train step of the universal (student) model.

For a batch of one domain, the student embeds the query and positive sides; the domain's
specialist (the teacher) has embedded the same examples (`gemb/proj/distill/teachers.py`). Over the
global batch, row i of the in-batch similarities S[i, j] = cos(query_i, positive_j) is compared
between teacher and student:

  kl           mean_i KL(softmax(S_T[i] / t_T) || softmax(S_S[i] / t_S))   (teacher stopped)
  l2           mean_ij (S_S[i, j] - S_T[i, j])^2                          (the absolute baseline)
  contrastive  the masked in-batch softmax loss on the labels (gemb.losses.masked_nce_loss)

at each Matryoshka prefix of the student (weighted like the trainer's loss). The step minimises
  weights["kl"] * kl + weights["l2"] * l2 + weights["contrastive"] * contrastive.
The weights and the temperatures are arrays passed to the jitted step, not constants in it, so
students that differ only in them (the KL and the L2 student) share one compiled step per batch
layout.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from gemb import losses
from gemb.model.encoder import mrl_prefixes
from gemb.train import step as train_step_lib

TERMS = ("kl", "l2", "contrastive")


def distillation_terms(query: jax.Array, positive: jax.Array, teacher_query: jax.Array,
                       teacher_positive: jax.Array, query_ids: jax.Array,
                       positive_ids: jax.Array, teacher_temperature: jax.Array,
                       student_temperature: jax.Array, contrastive_temperature: jax.Array, *,
                       mrl_dims: Sequence[int], mrl_weights: Sequence[float],
                       symmetric: bool, axis_name=None) -> dict[str, jax.Array]:
  """Every loss term of one batch, each summed over the student's MRL prefixes.

  Args:
    query, positive: [B, D] student embeddings, L2-normalised.
    teacher_query, teacher_positive: [B, D_T] the teacher's embeddings of the same examples
      (D_T may differ from D), L2-normalised.
    query_ids, positive_ids: [B] int, equal ids = identical content (contrastive masking).
    teacher_temperature, student_temperature: [] > 0, the KL's softmax temperatures.
    contrastive_temperature: [] > 0, the contrastive loss's temperature.
    mrl_dims, mrl_weights: the student's prefix widths (ending at D) and their weights.
    symmetric: the contrastive loss also ranks queries for each positive.
    axis_name: the batch's mesh axes inside shard_map (see gemb.losses.sharded_loss), or None.

  Returns:
    {"kl", "l2", "contrastive"}: [] float32 each, means over the global batch.
  """
  teacher = losses.in_batch_similarities(teacher_query, teacher_positive,
                                         axis_name=axis_name)  # [B, B_global]
  terms = {name: jnp.zeros((), jnp.float32) for name in TERMS}
  for weight, student_query, student_positive in zip(
      mrl_weights, mrl_prefixes(query, mrl_dims), mrl_prefixes(positive, mrl_dims)):
    student = losses.in_batch_similarities(student_query, student_positive,
                                           axis_name=axis_name)  # [B, B_global]
    terms["kl"] += weight * losses.distillation_kl_loss(
        teacher, student, teacher_temperature=teacher_temperature,
        student_temperature=student_temperature, axis_name=axis_name)
    terms["l2"] += weight * losses.distillation_l2_loss(teacher, student, axis_name=axis_name)
    terms["contrastive"] += weight * losses.masked_nce_loss(
        student_query, student_positive, temperature=contrastive_temperature,
        query_ids=query_ids, positive_ids=positive_ids, symmetric=symmetric,
        axis_name=axis_name)
  return terms


def make_terms_fn(mrl_dims: Sequence[int], mrl_weights: Sequence[float] | None, symmetric: bool,
                  mesh: jax.sharding.Mesh) -> Callable[..., dict[str, jax.Array]]:
  """`distillation_terms` over global arrays whose batch is sharded on `mesh` (call under jit).

  The returned f(query, positive, teacher_query, teacher_positive, query_ids, positive_ids,
  teacher_temperature, student_temperature, contrastive_temperature) -> {term: []}.
  """
  mrl_weights = mrl_weights or [1.0 / len(mrl_dims)] * len(mrl_dims)
  if len(mrl_weights) != len(mrl_dims):
    raise ValueError(f"student mrl_weights {list(mrl_weights)} must give one weight per "
                     f"config.model.mrl_dims entry {list(mrl_dims)}")
  return losses.sharded_loss(
      functools.partial(distillation_terms, mrl_dims=tuple(mrl_dims),
                        mrl_weights=tuple(mrl_weights), symmetric=symmetric), mesh)


def distill_step(state: dict, batch: dict, teacher_query: jax.Array, teacher_positive: jax.Array,
                 hyper: dict, *, graphdef, terms_fn: Callable, tx: optax.GradientTransformation,
                 schedule: optax.Schedule) -> tuple[dict, dict]:
  """One AdamW step of the student on one single-domain batch.

  Args:
    state: {"params": {"encoder": ...}, "rest", "opt_state", "step", "rng"} (the trainer's
      layout, so gemb.train.checkpoints saves and restores it; rng draws dropout).
    batch: {"query": side, "positive": side, "query_id": [B], "positive_id": [B]}.
    teacher_query, teacher_positive: [B, D_T] the domain's teacher embeddings of the batch.
    hyper: {"weights": {term: []}, "teacher_temperature": [], "student_temperature": [],
      "contrastive_temperature": []} float32 arrays.
  Returns:
    (new state, metrics: loss, every term, lr, grad_norm).
  """
  sides = {"query": batch["query"], "positive": batch["positive"]}
  keys = {name: train_step_lib.dropout_key(state, name) for name in sides}

  def objective(params):
    query, positive, _ = train_step_lib.embed_sides(
        graphdef, params["encoder"], state["rest"], sides, deterministic=False, keys=keys)
    terms = terms_fn(query, positive, teacher_query, teacher_positive, batch["query_id"],
                     batch["positive_id"], hyper["teacher_temperature"],
                     hyper["student_temperature"], hyper["contrastive_temperature"])
    total = sum(hyper["weights"][name] * terms[name] for name in TERMS)
    return total, terms

  (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": loss, **terms, "lr": schedule(state["step"]),
             "grad_norm": optax.global_norm(grads)}
  new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
  return new_state, metrics


def hyperparameters(student_cfg) -> dict:
  """The traced settings of a student (config.students.<name>) as float32 arrays."""
  unknown = set(student_cfg.weights) - set(TERMS)
  if unknown:
    raise ValueError(f"student weights name unknown terms {sorted(unknown)}; known: {TERMS}")
  if not any(float(w) for w in student_cfg.weights.values()):
    raise ValueError("every student loss weight is 0; give kl, l2 or contrastive a weight")
  as_array = lambda x: jnp.asarray(float(x), jnp.float32)
  for key in ("teacher_temperature", "student_temperature", "contrastive_temperature"):
    if not float(student_cfg[key]) > 0:
      raise ValueError(f"student {key}={student_cfg[key]} must be > 0")
  return {"weights": {name: as_array(student_cfg.weights.get(name, 0.0)) for name in TERMS},
          "teacher_temperature": as_array(student_cfg.teacher_temperature),
          "student_temperature": as_array(student_cfg.student_temperature),
          "contrastive_temperature": as_array(student_cfg.contrastive_temperature)}
