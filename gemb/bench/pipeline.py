r"""Input pipeline throughput per task, with 0 and 2 worker processes, against the train step.

For each task of a stage's mixture (default: configs/smoke.py's pre-finetuning, ToyWorld), it
builds the pipeline with only that task, the stage's batch size and hard_negatives setting,
reads one batch (start-up: worker processes, first renders), then times batches for --seconds
and prints examples/s. With --train_step it also times the smoke training step (compiled once
per task layout, on one CPU device) on that task's batches, so the two rates can be compared:
the pipeline keeps up when its examples/s exceed the step's. The last rows are the whole
mixture.

  python -m gemb.bench.pipeline
  python -m gemb.bench.pipeline --workers=0 --tasks=text_to_audio,bitext --seconds=2
"""
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags

from gemb.data import pipeline

config_flags.DEFINE_config_file("config", "configs/smoke.py", "Training config.")
_STAGE = flags.DEFINE_string("stage", "prefinetune", "Stage whose mixture is measured.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "config.data.worker_count values.")
_TASKS = flags.DEFINE_list("tasks", [], "Tasks to measure (default: the stage's mixture).")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Timed seconds per measurement (after start-up).")
_MIN_BATCHES = flags.DEFINE_integer("min_batches", 3, "Timed batches at least.")
_TRAIN_STEP = flags.DEFINE_bool("train_step", True, "Also time the training step per task.")


def examples_per_second(data_cfg, model_cfg, mixture, hard_negatives: bool, seconds: float,
                        min_batches: int):
  """(start-up seconds, examples/s, the first batch per task) of one pipeline."""
  start = time.perf_counter()
  it = pipeline.make_iterator(data_cfg, model_cfg, mixture, hard_negatives=hard_negatives)
  task, batch = next(it)
  first = {task: batch}
  startup = time.perf_counter() - start
  examples, batches, start = 0, 0, time.perf_counter()
  while batches < min_batches or time.perf_counter() - start < seconds:
    task, batch = next(it)
    first.setdefault(task, batch)
    examples += batch["query_id"].shape[0]
    batches += 1
  rate = examples / (time.perf_counter() - start)
  it.close()
  return startup, rate, first


def make_train_step(config, stage: str):
  """The stage's train step and initial state on one device, built as gemb.train.trainer's
  train_stage builds them."""
  from gemb import sharding  # pylint: disable=g-import-not-at-top
  from gemb.train import trainer  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  _, state, train_step = trainer.init_train_state(config, stage, mesh)
  return mesh, train_step, state


def step_examples_per_second(mesh, train_step, state, batch, seconds: float, min_steps: int):
  """(examples/s, new state) of the train step on one batch."""
  from gemb import sharding  # pylint: disable=g-import-not-at-top
  batch = sharding.shard_batch(batch, mesh)
  with jax.set_mesh(mesh):
    state, metrics = train_step(state, batch)  # compiles
    jax.block_until_ready(metrics)
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
      state, metrics = train_step(state, batch)
      jax.block_until_ready(metrics)
      steps += 1
  return steps * batch["query_id"].shape[0] / (time.perf_counter() - start), state


def main(argv):
  del argv
  config = flags.FLAGS.config
  mixture = {k: dict(v) for k, v in config.stages[_STAGE.value].mixture.items()}
  hard_negatives = config.stages[_STAGE.value].get("hard_negatives", True)
  tasks = _TASKS.value or list(mixture)
  data = dict(config.data)
  rows = {task: {} for task in tasks + ["mixture"]}
  firsts = {}
  for workers in [int(w) for w in _WORKERS.value]:
    data["worker_count"] = workers
    for task in tasks:
      startup, rate, first = examples_per_second(
          data, config.model, {task: dict(mixture[task], rate=1.0)}, hard_negatives,
          _SECONDS.value, _MIN_BATCHES.value)
      firsts.update(first)
      rows[task][f"{workers} workers"] = rate
      print(f"{task:26s} {workers} workers: {rate:8.1f} examples/s (start-up {startup:.1f} s)",
            flush=True)
    startup, rate, _ = examples_per_second(data, config.model, mixture, hard_negatives,
                                           3 * _SECONDS.value, _MIN_BATCHES.value)
    rows["mixture"][f"{workers} workers"] = rate
    print(f"{'mixture':26s} {workers} workers: {rate:8.1f} examples/s (start-up {startup:.1f} s)",
          flush=True)
  if _TRAIN_STEP.value:
    mesh, train_step, state = make_train_step(config, _STAGE.value)
    for task in tasks:
      rows[task]["train step"], state = step_examples_per_second(  # the state is donated
          mesh, train_step, state, firsts[task], _SECONDS.value, _MIN_BATCHES.value)
      print(f"{task:26s} train step: {rows[task]['train step']:8.1f} examples/s", flush=True)
  columns = [f"{w} workers" for w in _WORKERS.value] + (["train step"] if _TRAIN_STEP.value
                                                         else [])
  print(f"\nexamples/s, {_STAGE.value} batches, {os.cpu_count()} CPU cores")
  print(f"| task | {' | '.join(columns)} |\n|---|{'---:|' * len(columns)}")
  for task, row in rows.items():
    print(f"| {task} | " + " | ".join(f"{row[c]:.0f}" if c in row else "" for c in columns) + " |")


if __name__ == "__main__":
  app.run(main)
