"""One training step: embed every side of a batch, the loss over the global batch, AdamW.

The loss is the config's contrastive loss, or, in a distillation stage, the student's
distillation objective against teacher embeddings that the batch carries
(`teacher_query`, `teacher_positive` [B, D_T], joined by example id; gemb/train/teachers.py).

The train state is a plain dict pytree:
  params     {"encoder": nnx.State of the encoder's Params, "log_temperature": [], "bias": []}
  rest       nnx.State of the encoder's other variables (none today; kept for e.g. batch stats)
  opt_state  the optax state
  step       [] int32, optimizer steps taken
  rng        uint32[2] PRNG key; step s, side k draws dropout with fold_in(fold_in(rng, s), k)
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import ConfigDict

from gemb import losses
from gemb.model.encoder import mrl_prefixes


def temperature(params: dict, loss_cfg: ConfigDict) -> jax.Array:
  """The softmax/sigmoid temperature: learned (log-parameterised, clipped) or fixed."""
  if loss_cfg.learn_temperature:
    return losses.temperature_from_log(params["log_temperature"],
                                       min_temperature=loss_cfg.temperature_min,
                                       max_temperature=loss_cfg.temperature_max)
  return jnp.asarray(loss_cfg.temperature, jnp.float32)


def make_loss(loss_cfg: ConfigDict, mrl_dims, mesh: jax.sharding.Mesh,
              distill: ConfigDict | None = None) -> Callable:
  """The config's loss at every MRL prefix, over global arrays sharded on `mesh`; with a
  distillation stage's `distill` block, the distillation objective (`make_distill_loss`).

  Returns f(params, query, positive, negative, batch, settings) -> (loss [] float32, terms):
  `batch` supplies the labels (query_id, positive_id [B]) and `settings` is `loss_settings`'s.
  """
  if distill is not None:
    return make_distill_loss(loss_cfg, mrl_dims, mesh)
  block_size = loss_cfg.block_size or None
  if loss_cfg.type == "nce":
    core = functools.partial(losses.masked_nce_loss, symmetric=loss_cfg.symmetric,
                             block_size=block_size)
  else:
    core = functools.partial(losses.sigmoid_loss, block_size=block_size)
  weights = loss_cfg.mrl_weights or [1.0 / len(mrl_dims)] * len(mrl_dims)
  global_loss = losses.sharded_loss(
      functools.partial(losses.mrl_loss, core, mrl_dims=tuple(mrl_dims),
                        mrl_weights=tuple(weights)), mesh)

  def loss(params, query, positive, negative, batch, settings):
    del settings  # none: the contrastive losses' settings are constants of the step
    extra = {"bias": params["bias"]} if loss_cfg.type == "siglip" else {}
    return global_loss(query, positive, negative, temperature=temperature(params, loss_cfg),
                       query_ids=batch["query_id"], positive_ids=batch["positive_id"],
                       **extra), {}

  return loss


def make_distill_loss(loss_cfg: ConfigDict, mrl_dims, mesh: jax.sharding.Mesh) -> Callable:
  """The distillation objective sum_term weights[term] * term (gemb.losses.distillation_terms)
  over the batch's teacher embeddings; f as `make_loss`'s, its terms {"kl", "l2", "contrastive"}.
  """
  weights = tuple(loss_cfg.mrl_weights or [1.0 / len(mrl_dims)] * len(mrl_dims))

  def local_terms(query, positive, *rest, axis_name):
    return losses.distillation_terms(
        mrl_prefixes(query, mrl_dims), mrl_prefixes(positive, mrl_dims), *rest,
        mrl_weights=weights, symmetric=loss_cfg.symmetric, axis_name=axis_name)

  terms_fn = losses.sharded_loss(local_terms, mesh)

  def loss(params, query, positive, negative, batch, settings):
    del params, negative  # a student has no loss parameters and sees no hard negatives
    terms = terms_fn(query, positive, batch["teacher_query"], batch["teacher_positive"],
                     batch["query_id"], batch["positive_id"], settings["teacher_temperature"],
                     settings["student_temperature"], settings["contrastive_temperature"])
    total = sum(settings["weights"][name] * terms[name] for name in losses.DISTILLATION_TERMS)
    return total, terms

  return loss


def loss_settings(loss_cfg: ConfigDict, distill: ConfigDict | None = None) -> dict:
  """The loss's settings passed to the jitted step as float32 arrays, not baked into it, so that
  distillation stages that differ only in them (a KL and an L2 student) share one compiled step.
  {} for the contrastive losses."""
  if distill is None:
    return {}
  as_array = lambda x: jnp.asarray(float(x), jnp.float32)
  return {"weights": {name: as_array(distill.weights.get(name, 0.0))
                      for name in losses.DISTILLATION_TERMS},
          "teacher_temperature": as_array(distill.teacher_temperature),
          "student_temperature": as_array(distill.student_temperature),
          "contrastive_temperature": as_array(loss_cfg.temperature)}


SIDES = ("query", "positive", "negative")


def dropout_key(state: dict, side: str) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state["rng"], state["step"]), SIDES.index(side))


def embed_side(graphdef, encoder_params, rest, side: dict, deterministic: bool,
               key: jax.Array | None = None) -> jax.Array:
  """One packed side -> [B, E] embeddings."""
  model = nnx.merge(graphdef, encoder_params, rest)
  return model(side, deterministic=deterministic, dropout_key=key)


def embed_sides(graphdef, encoder_params, rest, batch: dict, deterministic: bool,
                keys: dict | None = None) -> tuple:
  """Embeds the query, positive and (if present) negative sides: [B, E] x 3 (or None)."""
  keys = keys or {}
  return tuple(embed_side(graphdef, encoder_params, rest, batch[name], deterministic,
                          keys.get(name)) if name in batch else None for name in SIDES)


def _finish(state, grads, loss, terms, tx, schedule, loss_cfg, accumulate_steps):
  """The optimizer update and the step's metrics (the loss's terms among them)."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {
      "loss": loss,
      "temperature": temperature(state["params"], loss_cfg),
      "lr": schedule(state["step"] // accumulate_steps),
      "grad_norm": optax.global_norm(grads),
      **terms,
  }
  new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
  return new_state, metrics


def train_step(state: dict, batch: dict, settings: dict, *, graphdef, loss_fn: Callable,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               loss_cfg: ConfigDict, accumulate_steps: int = 1,
               grad_cache_chunks: int = 1) -> tuple[dict, dict]:
  """One optimizer (micro-)step on a batch dict of sides + query_id / positive_id (+ teacher
  embeddings), fused into one program (jit it with the state donated): the fastest step on
  accelerators. `settings`: the loss's (`loss_settings`). With `grad_cache_chunks` K > 1 it is
  `grad_cache_step`'s: the same loss and gradients with the activations of one chunk of B/K
  rows held at a time."""
  if grad_cache_chunks > 1:
    return grad_cache_step(state, batch, settings, graphdef=graphdef, loss_fn=loss_fn, tx=tx,
                           schedule=schedule, loss_cfg=loss_cfg,
                           accumulate_steps=accumulate_steps, chunks=grad_cache_chunks)

  keys = {name: dropout_key(state, name) for name in SIDES}

  def objective(params):
    query, positive, negative = embed_sides(graphdef, params["encoder"], state["rest"], batch,
                                            deterministic=False, keys=keys)
    return loss_fn(params, query, positive, negative, batch, settings)

  (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
  return _finish(state, grads, loss, terms, tx, schedule, loss_cfg, accumulate_steps)


def targets(batch: dict) -> dict:
  """What the loss reads of a batch besides the sides' embeddings: ids (and teacher embeddings)."""
  return {key: value for key, value in batch.items() if key not in SIDES}


def loss_and_embedding_grads(loss_fn: Callable, params: dict, embeddings: dict, targets: dict,
                             settings: dict):
  """((loss, terms), the gradient for the loss's own parameters, {side: the gradient for its
  [B, E] embeddings}): the whole batch's loss, whose embedding gradients the per-side and
  GradCache steps pull back through the encoder."""
  def objective(loss_params, embeddings):
    return loss_fn({**loss_params, "encoder": None}, embeddings["query"], embeddings["positive"],
                   embeddings.get("negative"), targets, settings)
  loss_params = {key: value for key, value in params.items() if key != "encoder"}
  (loss, terms), (loss_param_grads, cotangents) = jax.value_and_grad(
      objective, argnums=(0, 1), has_aux=True)(loss_params, embeddings)
  return (loss, terms), loss_param_grads, cotangents


def chunk(tree, chunks: int, k) -> dict:
  """Chunk `k` of `chunks` of [B, ...] leaves: rows k, K + k, 2K + k, ... ([B/K, ...]), so that
  each device's rows of a batch sharded over its leading axis split evenly into every chunk (no
  data moves between devices, and the [B/K, K, ...] view is a reshape, not a copy)."""
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(
      x.reshape(x.shape[0] // chunks, chunks, *x.shape[1:]), k, axis=1, keepdims=False), tree)


def grad_cache_step(state: dict, batch: dict, settings: dict, *, graphdef, loss_fn: Callable,
                    tx: optax.GradientTransformation, schedule: optax.Schedule,
                    loss_cfg: ConfigDict, accumulate_steps: int = 1,
                    chunks: int = 2) -> tuple[dict, dict]:
  """`train_step` by GradCache (Gao et al., 2021): a contrastive batch too big for the encoder's
  activations, with the loss still over the whole (gathered) batch.

  Each side is embedded in `chunks` chunks of B/K rows (`chunk`) keeping no activations; the
  loss, its gradient with respect to the [B, E] embeddings and to the loss's own parameters are
  computed on the whole batch; then each chunk's forward pass is run again under jax.vjp and
  pulls back its rows' cotangent, the encoder's gradient summed over chunks and sides. Chunk k of
  a side draws dropout with fold_in(dropout_key(state, side), k) in both passes, so the
  recomputation is exact. Peak activation memory is one chunk of one side's; the price is a
  second forward pass.
  """
  rows = batch["query_id"].shape[0]
  if rows % chunks:
    raise ValueError(f"optim.grad_cache_chunks={chunks} must divide the global batch size {rows}")
  params, rest = state["params"], state["rest"]
  names = [name for name in SIDES if name in batch]
  ks = jnp.arange(chunks)

  def embed_chunk(encoder_params, name, k):
    key = jax.random.fold_in(dropout_key(state, name), k)
    return embed_side(graphdef, encoder_params, rest, chunk(batch[name], chunks, k),
                      deterministic=False, key=key)

  # Pass 1: the embeddings [B, E]; nothing differentiates it, so no activations are kept.
  # lax.map gives [K, B/K, E]; row i of the batch is chunk i % K's row i // K.
  embeddings = {}
  for name in names:
    chunked = jax.lax.map(functools.partial(embed_chunk, params["encoder"], name), ks)
    embeddings[name] = chunked.swapaxes(0, 1).reshape(rows, -1)

  (loss, terms), loss_param_grads, cotangents = loss_and_embedding_grads(
      loss_fn, params, embeddings, targets(batch), settings)

  # Pass 2: each chunk's forward again, its activations held only while its cotangent pulls back.
  encoder_grads = jax.tree.map(jnp.zeros_like, params["encoder"])
  for name in names:
    def accumulate(encoder_grads, k, name=name):
      _, vjp = jax.vjp(lambda p: embed_chunk(p, name, k), params["encoder"])
      grads = vjp(chunk(cotangents[name], chunks, k))[0]
      return jax.tree.map(jnp.add, encoder_grads, grads), None
    encoder_grads, _ = jax.lax.scan(accumulate, encoder_grads, ks)
  grads = {"encoder": encoder_grads, **loss_param_grads}
  return _finish(state, grads, loss, terms, tx, schedule, loss_cfg, accumulate_steps)


def make_per_side_step(*, graphdef, loss_fn: Callable, tx: optax.GradientTransformation,
                       schedule: optax.Schedule, loss_cfg: ConfigDict, accumulate_steps: int,
                       state_shardings, settings: dict) -> Callable:
  """The same step as `train_step`, as a few small programs compiled per *side* layout.

  A fused step compiles once per task (its query, positive and negative layouts together); a
  mixture of T tasks over S distinct side layouts compiles T big programs. Here each side's
  forward pass is a program compiled per side layout that returns the embeddings and their
  vector-Jacobian product (`jax.vjp`'s VJP is a pytree of residuals, so it crosses program
  boundaries), the loss is one program per batch shape, each side's backward pass another per
  side layout, and the encoder's gradient is the sum over sides. On a CPU, where compiling
  dominates short runs, this is several times faster to start; on accelerators prefer the fused
  step (`config.fused_step=True`). Both give the same losses and updates
  (tests/test_train_step.py).
  """

  @jax.jit
  def forward(encoder_params, rest, side, key):
    """(embeddings [B, E], the VJP from their cotangent to the encoder params' gradient)."""
    return jax.vjp(lambda p: embed_side(graphdef, p, rest, side, False, key), encoder_params)

  @jax.jit
  def backward(vjp, cotangent):
    return vjp(cotangent)[0]

  loss_and_grads = jax.jit(functools.partial(loss_and_embedding_grads, loss_fn))

  @functools.partial(jax.jit, donate_argnums=0, out_shardings=(state_shardings, None))
  def update(state, side_encoder_grads, loss_param_grads, loss, terms):
    encoder_grads = jax.tree.map(lambda *g: sum(g), *side_encoder_grads)
    grads = {"encoder": encoder_grads, **loss_param_grads}
    return _finish(state, grads, loss, terms, tx, schedule, loss_cfg, accumulate_steps)

  side_keys = jax.jit(lambda state: {name: dropout_key(state, name) for name in SIDES})

  def step(state: dict, batch: dict) -> tuple[dict, dict]:
    params, rest, keys = state["params"], state["rest"], side_keys(state)
    names = [name for name in SIDES if name in batch]
    embeddings, vjps = {}, {}
    for name in names:
      embeddings[name], vjps[name] = forward(params["encoder"], rest, batch[name], keys[name])
    (loss, terms), loss_param_grads, cotangents = loss_and_grads(params, embeddings,
                                                                 targets(batch), settings)
    encoder_grads = [backward(vjps[name], cotangents[name]) for name in names]
    return update(state, encoder_grads, loss_param_grads, loss, terms)

  return step
