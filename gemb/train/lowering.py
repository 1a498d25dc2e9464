"""Lowers the train step of every training stage of a config at its real shapes, without
running or allocating anything: a config that cannot run fails in a test, not on a pod after
the stage before it has trained.

  lowered = lowering.lower_stages(config, mesh)   # {(stage, task): jax.stages.Lowered}

One task per stage and set of sides, the largest (`representative_tasks`).

Each mixture task's batch is a tree of ShapeDtypeStructs with the global batch size and the
task's side layouts (what gemb.data.pipeline would pack), sharded over the data axes; the
state is abstract (the encoder's params with their shardings, the optimizer's state by
jax.eval_shape). The fused step is lowered whatever `config.fused_step` says: the per-side step
runs the same computations in smaller programs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from gemb import sharding
from gemb.data import packing, pipeline
from gemb.train import checkpoints, optim, step, trainer


def abstract_batch(task: pipeline.TaskSpec, mesh, teacher_dim: int | None = None) -> dict:
  """A global batch of `task` as ShapeDtypeStructs sharded over the data axes."""
  rows = task.global_batch_size
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((rows, *shape), dtype,
                                                   sharding=sharding.batch_sharding(mesh))
  batch = {side: {key: spec(value.shape[1:], value.dtype) for key, value in
                  packing.minimal_side(layout).items()}
           for side, layout in task.layouts.items()}
  batch["query_id"] = batch["positive_id"] = spec((), np.int32)
  if teacher_dim:
    batch["teacher_query"] = batch["teacher_positive"] = spec((teacher_dim,), np.float32)
  return batch


def abstract_state(config: ConfigDict, name: str, mesh) -> tuple:
  """(graphdef, abstract train state, optimizer, schedule) of training stage `name`."""
  stage = config.stages[name]
  optim_cfg, loss_cfg = trainer.stage_config(config, name)
  tx, schedule = optim.make_optimizer(optim_cfg, int(stage.steps) // optim_cfg.accumulate_steps)
  graphdef, encoder, rest = checkpoints.abstract_encoder(config.model, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  params = {"encoder": encoder}
  if loss_cfg.learn_temperature:
    params["log_temperature"] = scalar
  if loss_cfg.type == "siglip":
    params["bias"] = scalar
  state = {"params": params, "rest": rest, "opt_state": jax.eval_shape(tx.init, params),
           "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
           "rng": jax.eval_shape(lambda: jax.random.PRNGKey(0))}
  return graphdef, state, tx, schedule


def representative_tasks(tasks: dict) -> list[str]:
  """Per set of sides (with a hard negative or not), the task with the largest batch in
  elements: a mixture's programs differ by their layouts, and the largest one is the one that
  runs out of memory or sequence first (each task's layout is checked against the model when
  the pipeline builds it)."""
  best = {}  # side set -> (elements, task)
  for name, task in tasks.items():
    size = task.global_batch_size * sum(
        int(np.prod(value.shape)) for layout in task.layouts.values()
        for value in packing.minimal_side(layout).values())
    sides = tuple(sorted(task.layouts))
    if sides not in best or size > best[sides][0]:
      best[sides] = (size, name)
  return sorted(name for _, name in best.values())


def lower_stages(config: ConfigDict, mesh, teacher_dim: int | None = None) -> dict:
  """{(stage, task): Lowered} for every task of every training stage; `teacher_dim` is the
  width of a distillation stage's teacher embeddings (default: config.model.embed_dim)."""
  lowered = {}
  for name in config.stage_order:
    stage = config.stages[name]
    if stage.get("type", "train") not in ("train", "distill"):
      continue
    graphdef, state, tx, schedule = abstract_state(config, name, mesh)
    optim_cfg, loss_cfg = trainer.stage_config(config, name)
    distill = stage.get("distill")
    fused = jax.jit(functools.partial(
        step.train_step, graphdef=graphdef, tx=tx, schedule=schedule, loss_cfg=loss_cfg,
        loss_fn=step.make_loss(loss_cfg, config.model.mrl_dims, mesh, distill),
        accumulate_steps=optim_cfg.accumulate_steps,
        grad_cache_chunks=optim_cfg.grad_cache_chunks))
    settings = step.loss_settings(loss_cfg, distill)
    tasks = pipeline.make_tasks(config.data, config.model, stage.mixture,
                                hard_negatives=stage.get("hard_negatives", True),
                                where=f"config.stages.{name}.mixture")
    for task_name in representative_tasks(tasks):
      batch = abstract_batch(tasks[task_name], mesh, (teacher_dim or config.model.embed_dim)
                             if distill is not None else None)
      with jax.set_mesh(mesh):
        lowered[(name, task_name)] = fused.lower(state, batch, settings)
  return lowered
