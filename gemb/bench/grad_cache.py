r"""The largest batch whose train step fits a memory budget, without and with GradCache.

  python -m gemb.bench.grad_cache --config=configs/smoke.py --stage=finetune --budget_mib=512
  python -m gemb.bench.grad_cache --config=configs/toyworld.py --budget_mib=1024 --chunks=8

Nothing runs: the stage's fused step (gemb.train.lowering's abstract state and batch, the stage's
largest task) is compiled at each probed global batch size, and its per-device memory is XLA's
compiled memory analysis, as in gemb.bench.train (arguments, i.e. params, optimizer state and
batch, plus temporaries). Batch sizes double from one multiple of the batch shards (times
--chunks with GradCache) until one no longer fits, then bisect between the last two. The last
line reads `grad_cache: largest batch within X MiB: off=B1 on=B2 (K=...)`.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
from absl import app, flags

from gemb import config_file, sharding
from gemb.bench.train import memory_mib
from gemb.data import pipeline
from gemb.train import lowering, step, trainer

FLAGS = flags.FLAGS


def _define_flags():
  """The command line's flags, defined when run (tests import this module)."""
  flags.DEFINE_string("config", "configs/smoke.py", "Config file, optionally ':arg'.")
  flags.DEFINE_string("stage", "finetune", "Training stage whose step is measured.")
  flags.DEFINE_float("budget_mib", 512.0, "Per-device memory budget, MiB.")
  flags.DEFINE_integer("chunks", 4, "optim.grad_cache_chunks with GradCache.")
  flags.DEFINE_integer("max_batch", 1 << 20, "Largest global batch probed.")


def step_memory(config, name: str, mesh, task: pipeline.TaskSpec, batch_size: int,
                chunks: int) -> float:
  """Per-device MiB of stage `name`'s fused step at global batch `batch_size`."""
  graphdef, state, tx, schedule = lowering.abstract_state(config, name, mesh)
  optim_cfg, loss_cfg = trainer.stage_config(config, name)
  fused = jax.jit(functools.partial(
      step.train_step, graphdef=graphdef, tx=tx, schedule=schedule, loss_cfg=loss_cfg,
      loss_fn=step.make_loss(loss_cfg, config.model.mrl_dims, mesh),
      accumulate_steps=optim_cfg.accumulate_steps, grad_cache_chunks=chunks), donate_argnums=0)
  task = dataclasses.replace(task, global_batch_size=batch_size, batch_size=batch_size)
  with jax.set_mesh(mesh):
    lowered = fused.lower(state, lowering.abstract_batch(task, mesh), step.loss_settings(loss_cfg))
  return memory_mib(lowered.compile().memory_analysis())


def largest_batch(fits, unit: int, max_batch: int) -> int:
  """The largest multiple of `unit` up to `max_batch` for which `fits` holds (0 if none), by
  doubling then bisecting; `fits` is assumed monotone in the batch size."""
  good, bad = 0, None
  size = unit
  while size <= max_batch:
    if not fits(size):
      bad = size
      break
    good, size = size, 2 * size
  if bad is None:
    return good
  while bad - good > unit:
    middle = (good + bad) // 2 // unit * unit
    if fits(middle):
      good = middle
    else:
      bad = middle
  return good


def main(argv):
  del argv
  config = config_file.load(FLAGS.config)
  mesh = sharding.make_mesh(config.mesh)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  stage = config.stages[FLAGS.stage]
  if "distill" in stage:
    raise ValueError(f"--stage={FLAGS.stage} is a distillation stage: use a training stage")
  tasks = pipeline.make_tasks(config.data, config.model, stage.mixture,
                              hard_negatives=stage.get("hard_negatives", True),
                              where=f"config.stages.{FLAGS.stage}.mixture")
  name = max(lowering.representative_tasks(tasks), key=lambda t: len(tasks[t].layouts))
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{FLAGS.config} stage {FLAGS.stage}, task {name} ({', '.join(tasks[name].layouts)})",
        flush=True)
  largest = {}
  for chunks in (1, FLAGS.chunks):
    def fits(batch_size, chunks=chunks):
      mib = step_memory(config, FLAGS.stage, mesh, tasks[name], batch_size, chunks)
      print(f"  K={chunks} batch {batch_size}: {mib:.0f} MiB", flush=True)
      return mib <= FLAGS.budget_mib
    largest[chunks] = largest_batch(fits, chunks * shards, FLAGS.max_batch)
  print(f"grad_cache: largest batch within {FLAGS.budget_mib:.0f} MiB: off={largest[1]} "
        f"on={largest[FLAGS.chunks]} (K={FLAGS.chunks})", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
