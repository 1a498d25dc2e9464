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

On an accelerator, a model preset on ToyWorld, its MFU over the chip's datasheet peak (what
launch/device_check.sh runs: presets S and B, bf16 compute, the fused step):

  python -m gemb.bench.train --configs=configs/toyworld.py --preset=B --tasks=text_to_image \
      --stages=prefinetune --batch_size=256 --step_kinds=fused --peak_tflops=989
"""
from __future__ import annotations

import time

import jax
from absl import app, flags

from configs import common
from gemb import config_file, sharding
from gemb.runtime import allocator
from gemb.data import pipeline
from gemb.model.flops import encoder_flops
from gemb.train import lowering, metrics, trainer

FLAGS = flags.FLAGS


def _define_flags():
  """The command line's flags, defined when run (importing the module for `memory_mib` must not
  define flags that another module of the same process defines)."""
  flags.DEFINE_list("configs", ["configs/smoke.py", "configs/toyworld.py"], "Config files.")
  flags.DEFINE_integer("steps", 20, "Timed steps per stage (cycling over the mixture's tasks).")
  flags.DEFINE_list("step_kinds", ["fused", "per_side"], "config.fused_step values to compare.")
  flags.DEFINE_string("preset", None, "Model preset (configs/common.py MODEL_SIZES) replacing "
                      "each config's model: common.toyworld_model(preset), its dtype and remat.")
  flags.DEFINE_list("stages", None, "Training stages to time (default: all).")
  flags.DEFINE_list("tasks", None, "Mixture tasks to keep in every stage (default: all).")
  flags.DEFINE_integer("batch_size", None, "Global batch size of every mixture task.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak FLOP/s per device for MFU, in TFLOP/s (e.g. a "
                     "datasheet's dense bf16 figure); 0: the f32 matmul peak measured at start.")


def _load(path: str):
  """The config file at `path`, with the --preset, --tasks and --batch_size overrides."""
  config = config_file.load(path)
  if FLAGS.preset:
    config.model = common.toyworld_model(FLAGS.preset)
    config.data.toyworld = common.toyworld_world(config.model)
  for name in config.stage_order:
    stage = config.stages[name]
    if stage.get("type", "train") != "train":
      continue
    tasks = [task for task in stage.mixture if not FLAGS.tasks or task in FLAGS.tasks]
    if not tasks:
      raise ValueError(f"--tasks={FLAGS.tasks}: none is in {path}'s stage {name} "
                       f"({sorted(stage.mixture)})")
    stage.mixture = {task: {**stage.mixture[task].to_dict(),
                            **({"batch_size": FLAGS.batch_size} if FLAGS.batch_size else {})}
                     for task in tasks}
  return config


def memory_mib(analysis) -> float:
  """Per-device MiB of a compiled program: its arguments (params, optimizer state, batch) plus
  temporaries, from `compiled.memory_analysis()`."""
  return (analysis.argument_size_in_bytes + analysis.temp_size_in_bytes) / 2**20


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
  return max(memory_mib(program.compile().memory_analysis()) for program in programs)


def main(argv):
  del argv
  peak = FLAGS.peak_tflops * 1e12 or metrics.measure_matmul_peak()
  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s) "
        f"({jax.devices()[0].device_kind}), "
        f"{'given' if FLAGS.peak_tflops else 'measured f32 matmul'} peak "
        f"{peak / 1e9:.1f} GFLOP/s per device, memory allocator: {allocator.in_use()}")
  print(f"{'config':<22} {'stage':<12} {'step':<9} {'tasks':>5} {'compile s':>10} "
        f"{'steps/s':>8} {'examples/s':>11} {'MFU':>6} {'mem MiB':>8} {'fused/per-side':>15}")
  for path in FLAGS.configs:
    config = _load(path)
    mesh = sharding.make_mesh(config.mesh)
    for name in config.stage_order:
      if config.stages[name].get("type", "train") != "train":
        continue
      if FLAGS.stages and name not in FLAGS.stages:
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
  _define_flags()
  allocator.use_tcmalloc()  # GEMB_ALLOCATOR=system to bench glibc's malloc instead
  app.run(main)
