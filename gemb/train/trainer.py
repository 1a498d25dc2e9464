"""The staged trainer: every stage of the config in order, resumable, then the evaluation table.

Resume order for a training stage (big_vision's): its own latest checkpoint in the workdir (an
interrupted run continues on exactly the next batch), else its `init`: 'random', 'previous'
(the last checkpoint of the stage before), or a checkpoint reference ('stage', 'stage:step',
or a path, also from another run). A distillation stage (type 'distill') is a training stage
whose batches carry each task's teacher embeddings of the same examples (its `distill.teachers`,
gemb/train/teachers.py) and whose loss is the distillation objective of `distill`. A soup stage
averages the parameters of its ingredients.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
from absl import logging
from ml_collections import ConfigDict

from gemb import losses, sharding
from gemb.runtime import allocator
from gemb.model.flops import encoder_flops
from gemb.train import checkpoints, config_check, evaluation, metrics as metrics_lib, optim, step
from gemb.train import teachers as teachers_lib
from gemb.data import pipeline
from gemb.evaluate import report


def stage_config(config: ConfigDict, name: str) -> tuple[ConfigDict, ConfigDict]:
  """The stage's optim and loss configs: the global ones with the stage's overrides on top."""
  stage = config.stages[name]
  optim_cfg = ConfigDict(config.optim.to_dict())
  optim_cfg.update(stage.get("optim", {}) or {})
  loss_cfg = ConfigDict(config.loss.to_dict())
  loss_cfg.update(stage.get("loss", {}) or {})
  return optim_cfg, loss_cfg


def loss_params(loss_cfg: ConfigDict, mesh) -> dict:
  """The loss's own parameters, replicated on `mesh`: a learned log-temperature, a SigLIP bias."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = {}
  if loss_cfg.learn_temperature:
    params["log_temperature"] = jax.device_put(
        jnp.log(jnp.asarray(loss_cfg.temperature, jnp.float32)), replicated)
  if loss_cfg.type == "siglip":
    params["bias"] = jax.device_put(jnp.asarray(loss_cfg.siglip_bias, jnp.float32), replicated)
  return params


def train_stage(config: ConfigDict, workdir: str, name: str, mesh, writer, peak_flops: float,
                previous: str | None) -> str:
  """Trains (or resumes) one stage; returns the path of its last checkpoint."""
  stage = config.stages[name]
  total_steps = int(stage.steps)
  manager = checkpoints.make_manager(checkpoints.stage_dir(workdir, name),
                                     every=config.checkpoint.every, keep=config.checkpoint.keep,
                                     async_save=config.checkpoint.async_save)
  start = manager.latest_step()
  if start is not None and start >= total_steps:
    manager.close()
    return os.path.join(checkpoints.stage_dir(workdir, name), str(start))
  source = None  # where the encoder starts: a random init, or a checkpoint restored into it
  if start is None and stage.get("init", "random") != "random":
    source = previous if stage.init == "previous" else checkpoints.resolve(stage.init, workdir)
    if jax.process_index() == 0:
      print(f"[{name}] starting from {source}", flush=True)
  graphdef, state, train_step = init_train_state(config, name, mesh, source)
  teachers = teachers_lib.from_config(stage.distill.teachers, mesh) if "distill" in stage else {}
  data = pipeline.train_iterator(config, name)
  if start is not None:
    state, data_state = checkpoints.restore(manager, start, sharding.abstract_like(state))
    data.set_state(data_state)
    if jax.process_index() == 0:
      print(f"[{name}] resuming at step {start}", flush=True)
  start = start or 0

  is_main = jax.process_index() == 0
  window = metrics_lib.StepWindow("task")
  window_start, window_examples, window_flops = time.perf_counter(), 0, 0.0
  for current in range(start, total_steps):
    task, host_batch = next(data)
    batch = sharding.shard_batch(host_batch, mesh)
    if teachers:  # the task's teacher embeddings of the batch's examples, by example id
      batch["teacher_query"], batch["teacher_positive"] = teachers[task].batch_embeddings(
          host_batch, batch)
    with jax.set_mesh(mesh):  # activations are constrained by logical names inside the model
      state, step_metrics = train_step(state, batch)
    done = current + 1
    window.add(done, task, step_metrics)
    window_examples += batch["query_id"].shape[0]
    window_flops += 3.0 * sum(encoder_flops(config.model, jax.tree.map(jnp.shape, batch[k]))
                              for k in ("query", "positive", "negative") if k in batch)
    checkpoints.save(manager, done, state, data.get_state(), force=done == total_steps,
                     before_save=lambda: window.check(f"stage {name}"))  # no bad step saved
    if done % config.log_every == 0 or done == total_steps:
      elapsed, steps_in_window = time.perf_counter() - window_start, len(window)
      values = window.flush(f"stage {name}")
      values.update(steps_per_s=steps_in_window / elapsed, examples_per_s=window_examples / elapsed,
                    mfu=window_flops / elapsed / (peak_flops * jax.device_count()))
      values.update({f"data/{k}": v for k, v in data.metrics().items()})
      writer.write(done, values, stage=name)
      if is_main:
        terms = "".join(f" {k}={values[k]:.4g}" for k in losses.DISTILLATION_TERMS if k in values)
        print(metrics_lib.progress_line(name, done, total_steps, values) + terms, flush=True)
      window_start, window_examples, window_flops = time.perf_counter(), 0, 0.0
    every = stage.get("eval_every", 0)
    if every and done % every == 0 and done != total_steps:
      evaluation.run(config, workdir, graphdef, state["params"]["encoder"], state["rest"], mesh,
                     name=f"{name}_step{done}", step=done, writer=writer, stage=name)
  manager.wait_until_finished()
  manager.close()
  data.close()
  return os.path.join(checkpoints.stage_dir(workdir, name), str(total_steps))


def init_train_state(config: ConfigDict, name: str, mesh, encoder_path: str | None = None):
  """(graphdef, initial train state placed on `mesh`, step function) of training stage `name`.

  The encoder is a random init, or the checkpoint `encoder_path` loaded into it; with
  init="previous" the loss's learned parameters (temperature, SigLIP bias) carry on too. The state
  is {"params", "rest", "opt_state", "step", "rng"} (see gemb/train/step.py); the step function
  maps (state, global batch) -> (state, metrics) and donates the state.
  """
  stage = config.stages[name]
  optim_cfg, loss_cfg = stage_config(config, name)
  tx, schedule = optim.make_optimizer(optim_cfg, int(stage.steps) // optim_cfg.accumulate_steps)
  graphdef, encoder, rest = checkpoints.load_encoder(config.model, mesh, encoder_path,
                                                     seed=config.seed)
  params = {"encoder": encoder, **loss_params(loss_cfg, mesh)}
  if stage.get("init") == "previous" and encoder_path:  # the learned temperature carries on
    params.update(checkpoints.load_loss_params(
        encoder_path, sharding.abstract_like({k: v for k, v in params.items() if k != "encoder"})))
  state = {"params": params, "rest": rest, "opt_state": tx.init(params),
           "step": jnp.zeros((), jnp.int32),
           "rng": jax.random.PRNGKey(stage.get("seed", config.seed))}
  state_shardings = jax.tree.map(lambda x: sharding.sharding_on(x, mesh), state)
  state = jax.device_put(state, state_shardings)
  train_step = make_train_step(config, graphdef, loss_cfg, optim_cfg, tx, schedule, mesh,
                               state_shardings, stage.get("distill"))
  return graphdef, state, train_step


def make_train_step(config, graphdef, loss_cfg, optim_cfg, tx, schedule, mesh, state_shardings,
                    distill=None):
  """step(state, batch) -> (state, metrics): fused into one program (by GradCache with
  optim.grad_cache_chunks > 1) or compiled per side; the distillation objective of a
  distillation stage's `distill` block."""
  loss_fn = step.make_loss(loss_cfg, config.model.mrl_dims, mesh, distill)
  settings = step.loss_settings(loss_cfg, distill)
  kwargs = dict(graphdef=graphdef, loss_fn=loss_fn, tx=tx, schedule=schedule, loss_cfg=loss_cfg,
                accumulate_steps=optim_cfg.accumulate_steps)
  if config.fused_step:
    fused = jax.jit(functools.partial(step.train_step, **kwargs,
                                      grad_cache_chunks=optim_cfg.grad_cache_chunks),
                    donate_argnums=0, out_shardings=(state_shardings, None))
    return lambda state, batch: fused(state, batch, settings)
  if optim_cfg.grad_cache_chunks > 1:
    raise ValueError(f"optim.grad_cache_chunks={optim_cfg.grad_cache_chunks} needs the fused "
                     "step: set config.fused_step=True")
  return step.make_per_side_step(state_shardings=state_shardings, settings=settings, **kwargs)


def soup_stage(config: ConfigDict, workdir: str, name: str, mesh, writer) -> str:
  """Averages the ingredients' encoder params, evaluates each ingredient and the soup, saves it."""
  stage = config.stages[name]
  paths = [checkpoints.resolve(ref, workdir) for ref in stage.ingredients]
  loaded = [checkpoints.load_encoder(config.model, mesh, path) for path in paths]
  graphdef, _, rest = loaded[0]
  ingredients = [encoder for _, encoder, _ in loaded]
  soup = checkpoints.average_params(ingredients, stage.get("weights"))
  for ref, path, encoder in zip(stage.ingredients, paths, ingredients):
    evaluation.run(config, workdir, graphdef, encoder, rest, mesh,
                   name=f"{name}_ingredient_{ref.replace(os.path.sep, '_').replace(':', '_')}",
                   writer=writer, stage=name)
  manager = checkpoints.make_manager(checkpoints.stage_dir(workdir, name), every=1, keep=1,
                                     async_save=False)
  checkpoints.save(manager, 0, {"params": {"encoder": soup}}, {"ingredients": paths}, force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(checkpoints.stage_dir(workdir, name), "0")


def train_and_evaluate(config: ConfigDict, workdir: str, only_soups: bool = False) -> dict:
  """Runs every stage in `config.stage_order` (resuming where the workdir left off), then the
  final evaluation; returns the flat final metrics (also in WORKDIR/eval/final.json)."""
  config_check.check(config, jax.device_count(), jax.process_count(),
                     known_tasks=pipeline.known_tasks(config), workdir=workdir)
  mesh = sharding.make_mesh(config.mesh)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  peak = metrics_lib.measure_matmul_peak()
  logging.info("measured matmul peak: %.3g FLOP/s per device; memory allocator: %s", peak,
               allocator.in_use())
  last = None
  for name in config.stage_order:
    kind = config.stages[name].get("type", "train")
    if kind == "soup":
      last = soup_stage(config, workdir, name, mesh, writer)
    elif not only_soups:
      last = train_stage(config, workdir, name, mesh, writer, peak, previous=last)
    else:
      last = checkpoints.resolve(name, workdir)
  final = evaluate_path(config, workdir, last, mesh, writer, name="final")
  writer.close()
  if final and jax.process_index() == 0:
    plot_run(config, workdir, final)
  return final


def plot_run(config: ConfigDict, workdir: str, final: dict) -> None:
  """WORKDIR/eval/{training.png, task_losses.png, mrl.png}: loss, temperature and evaluations
  over (all stages') steps, each task's loss over steps, and the final retrieval R@1 against
  the MRL prefix dim."""
  records, offset, last_stage, last_step = [], 0, None, 0
  for record in metrics_lib.read_metrics(workdir):
    if record["stage"] != last_stage:  # stages count steps from 0: lay them end to end
      offset, last_stage = offset + last_step, record["stage"]
    last_step = record["step"]
    records.append((offset + record["step"], record))
  r1 = sorted(k for k in final if k.endswith("/R@1"))
  if records:
    report.plot_over_steps(records, ["loss", "temperature", *r1],
                           os.path.join(workdir, "eval", "training.png"), title="training")
    task_losses = sorted({k for _, record in records for k in record if k.startswith("loss/")})
    if task_losses:
      report.plot_over_steps(records, task_losses, os.path.join(workdir, "eval", "task_losses.png"),
                             title="loss of each task's batches")
  if r1 and any("@dim=" in k for k in final):
    report.plot_mrl(final, r1, os.path.join(workdir, "eval", "mrl.png"),
                    full_dim=config.model.embed_dim, title="R@1 against embedding dim")


def evaluate_path(config, workdir, path, mesh, writer=None, name="final") -> dict:
  """Evaluates checkpoint `path` with config.evals (nothing is loaded without evaluators)."""
  if not config.evals:
    return {}
  graphdef, encoder, rest = checkpoints.load_encoder(config.model, mesh, path)
  return evaluation.run(config, workdir, graphdef, encoder, rest, mesh, name=name, writer=writer,
                        stage="eval", checkpoint=path)


def evaluate_checkpoint(config: ConfigDict, workdir: str, reference: str | None) -> dict:
  """--mode=eval: evaluates a checkpoint (default: the last stage's latest) into
  eval/<name>.json."""
  reference = reference or config.stage_order[-1]
  path = checkpoints.resolve(reference, workdir)
  mesh = sharding.make_mesh(config.mesh)
  return evaluate_path(config, workdir, path, mesh, name="checkpoint_" + os.path.basename(path))
