"""Trains one universal (student) model by distilling the domain specialists, resumably.

Every batch holds one domain (gemb.data.pipeline draws a domain per step from config.domains'
rates); that domain's teacher embeds the same batch (on the fly or from its table), and the
student takes one step on `gemb.proj.distill.step.distill_step`. The student sees exactly the
batches the fused baseline sees: same mixture, batch size, steps and data seed.

Checkpoints (gemb.train.checkpoints, orbax) hold the train state and the data iterator's state
under WORKDIR/<student>/checkpoints/<step>, so a killed run resumes on the next batch.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from gemb import sharding
from gemb.data import pipeline
from gemb.proj.distill import step as distill_step_lib, teachers as teachers_lib
from gemb.train import checkpoints, metrics as metrics_lib, optim


def domain_mixture(config: ConfigDict) -> dict:
  """config.domains as a pipeline mixture with the universal models' batch size."""
  return {name: {"batch_size": int(config.batch_size), **dict(entry)}
          for name, entry in config.domains.items()}


def init_student(config: ConfigDict, mesh) -> tuple:
  """(graphdef, params {"encoder": ...}, rest) of a randomly initialised student on `mesh`."""
  graphdef, encoder, rest = teachers_lib.init_encoder(config.model, config.seed, mesh)
  return graphdef, {"encoder": encoder}, rest


def _shard(batch: dict, mesh) -> dict:
  return sharding.shard_batch(
      {key: batch[key] for key in ("query", "positive", "query_id", "positive_id")}, mesh)


def train_student(config: ConfigDict, workdir: str, name: str, teachers: Mapping, mesh,
                  writer: metrics_lib.MetricWriter) -> str:
  """Trains (or resumes) student `name` (config.students[name]); returns its last checkpoint.

  Args:
    teachers: domain -> teacher (gemb.proj.distill.teachers) for every domain of config.domains.
  """
  missing = sorted(set(config.domains) - set(teachers))
  if missing:
    raise ValueError(f"no teacher for domains {missing}; give each a config.specialists entry")
  student_cfg = config.students[name]
  total_steps = int(config.steps)
  tx, schedule = optim.make_optimizer(config.optim, total_steps)
  graphdef, params, rest = init_student(config, mesh)
  state = {"params": params, "rest": rest, "opt_state": tx.init(params),
           "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(config.seed)}
  state_shardings = jax.tree.map(lambda x: sharding.sharding_on(x, mesh), state)
  state = jax.device_put(state, state_shardings)
  directory = checkpoints.stage_dir(workdir, name)
  manager = checkpoints.make_manager(directory, every=config.checkpoint.every,
                                     keep=config.checkpoint.keep,
                                     async_save=config.checkpoint.async_save)
  data = pipeline.make_iterator(config.data, config.model, domain_mixture(config),
                                hard_negatives=False, where="config.domains")
  start = manager.latest_step()
  if start is not None:
    state, data_state = checkpoints.restore(manager, start, sharding.abstract_like(state))
    data.set_state(data_state)
    print(f"[{name}] resuming at step {start}", flush=True)
  start = start or 0

  terms_fn = distill_step_lib.make_terms_fn(config.model.mrl_dims, student_cfg.get("mrl_weights"),
                                            student_cfg.symmetric, mesh)
  step_fn = jax.jit(
      functools.partial(distill_step_lib.distill_step, graphdef=graphdef, terms_fn=terms_fn,
                        tx=tx, schedule=schedule),
      donate_argnums=0, out_shardings=(state_shardings, None))
  hyper = distill_step_lib.hyperparameters(student_cfg)

  window, window_start = metrics_lib.StepWindow("domain"), time.perf_counter()
  for current in range(start, total_steps):
    domain, host_batch = next(data)
    batch = _shard(host_batch, mesh)
    teacher_query, teacher_positive = teachers[domain].batch_embeddings(host_batch, batch)
    with jax.set_mesh(mesh):
      state, step_metrics = step_fn(state, batch, teacher_query, teacher_positive, hyper)
    done = current + 1
    window.add(done, domain, step_metrics)
    checkpoints.save(manager, done, state, data.get_state(), force=done == total_steps,
                     before_save=lambda: window.check(f"student {name}"))  # no bad step saved
    if done % config.log_every == 0 or done == total_steps:
      values = {"steps_per_s": len(window) / (time.perf_counter() - window_start)}
      values.update(window.flush(f"student {name}"))
      writer.write(done, values, stage=name)
      if jax.process_index() == 0:
        terms = " ".join(f"{k}={values[k]:.4g}" for k in distill_step_lib.TERMS)
        print(f"{metrics_lib.progress_line(name, done, total_steps, values)} {terms}",
              flush=True)
      window_start = time.perf_counter()
  manager.wait_until_finished()
  manager.close()
  data.close()
  return os.path.join(directory, str(total_steps))
