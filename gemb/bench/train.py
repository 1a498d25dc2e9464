r"""Training throughput: steps/s, examples/s and MFU of a config's training stages on this machine.

  python -m gemb.bench.train                       # configs/smoke.py and configs/toyworld.py
  python -m gemb.bench.train --configs=configs/smoke.py --steps=20

For each config and training stage, one batch of every task in the stage's mixture is prepared,
each task's step is compiled and warmed up, then `--steps` steps cycle over the tasks. MFU is
model FLOPs per second (3x the encoder's forward matmul FLOPs per side, 4x with remat) over the
f32 matmul peak measured on this device at start. Compilation is reported apart, and the fused
step's row has its per-device memory: XLA's compiled memory analysis of the stage's largest
program (arguments, i.e. params, optimizer state and batch, plus temporaries). Each stage
runs with the fused step (one program per task) and the per-side step (programs per side
layout), side by side, and the last column is fused/per-side steps/s.

It runs under tcmalloc where that is installed (gemb/runtime/allocator.py);
`GEMB_ALLOCATOR=system python -m gemb.bench.train` measures with glibc's malloc.
"""
from __future__ import annotations

import importlib.util
import time

import jax
from absl import app, flags

from gemb import sharding
from gemb.runtime import allocator
from gemb.data import pipeline
from gemb.model.flops import encoder_flops
from gemb.train import lowering, metrics, trainer

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["configs/smoke.py", "configs/toyworld.py"], "Config files.")
flags.DEFINE_integer("steps", 20, "Timed steps per stage (cycling over the mixture's tasks).")
flags.DEFINE_list("step_kinds", ["fused", "per_side"], "config.fused_step values to compare.")


def _load(path: str):
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def bench_stage(config, name: str, mesh, peak: float, steps: int) -> dict:
  _, state, train_step = trainer.init_train_state(config, name, mesh)
  data = pipeline.train_iterator(config, name)
  batches, seen = [], set()
  for _ in range(64 * len(config.stages[name].mixture)):  # one batch of each task
    task, host_batch = next(data)
    if task not in seen:
      seen.add(task)
      batches.append(sharding.shard_batch(host_batch, mesh))
    if len(seen) == len(config.stages[name].mixture):
      break
  data.close()
  factor = 4.0 if config.model.remat else 3.0
  flops = [factor * sum(encoder_flops(config.model, b[k]) for k in ("query", "positive",
                                                                     "negative") if k in b)
           for b in batches]
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    for batch in batches:  # compile and warm up every task's step
      state, out = train_step(state, batch)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - start
    start, done_flops, examples = time.perf_counter(), 0.0, 0
    for i in range(steps):
      batch = batches[i % len(batches)]
      state, out = train_step(state, batch)
      done_flops += flops[i % len(batches)]
      examples += batch["query_id"].shape[0]
    jax.block_until_ready(out)
  elapsed = time.perf_counter() - start
  return {"tasks": len(batches), "compile_s": compile_s, "steps_per_s": steps / elapsed,
          "examples_per_s": examples / elapsed,
          "mfu": done_flops / elapsed / (peak * jax.device_count())}


def step_memory_mib(config, name: str, mesh) -> float:
  """Per-device memory of the stage's largest fused step program, from XLA's compiled memory
  analysis (arguments: params, optimizer state, batch; plus temporaries), in MiB."""
  programs = [lowered for (stage, _), lowered in lowering.lower_stages(config, mesh).items()
              if stage == name]
  analyses = [program.compile().memory_analysis() for program in programs]
  return max(a.argument_size_in_bytes + a.temp_size_in_bytes for a in analyses) / 2**20


def main(argv):
  del argv
  peak = metrics.measure_matmul_peak()
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s per device, "
        f"memory allocator: {allocator.in_use()}")
  print(f"{'config':<22} {'stage':<12} {'step':<9} {'tasks':>5} {'compile s':>10} "
        f"{'steps/s':>8} {'examples/s':>11} {'MFU':>6} {'mem MiB':>8} {'fused/per-side':>15}")
  for path in FLAGS.configs:
    config = _load(path)
    mesh = sharding.make_mesh(config.mesh)
    for name in config.stage_order:
      if config.stages[name].get("type", "train") != "train":
        continue
      rates = {}
      for kind in FLAGS.step_kinds:
        config.fused_step = kind == "fused"
        r = bench_stage(config, name, mesh, peak, FLAGS.steps)
        rates[kind] = r["steps_per_s"]
        ratio = (f"{rates['fused'] / rates['per_side']:.2f}x"
                 if set(rates) == {"fused", "per_side"} else "")
        memory = f"{step_memory_mib(config, name, mesh):.0f}" if kind == "fused" else "-"
        print(f"{path:<22} {name:<12} {kind:<9} {r['tasks']:>5} {r['compile_s']:>10.1f} "
              f"{r['steps_per_s']:>8.2f} {r['examples_per_s']:>11.1f} {100 * r['mfu']:>5.1f}% "
              f"{memory:>8} {ratio:>15}", flush=True)


if __name__ == "__main__":
  allocator.use_tcmalloc()  # GEMB_ALLOCATOR=system to bench glibc's malloc instead
  app.run(main)
