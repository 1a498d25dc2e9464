r"""Memory and time of the masked NCE loss across devices: full matrix vs gathered vs blockwise.

For each global batch, on simulated CPU devices (the batch sharded over 'data'), it
compiles value_and_grad of the loss (w.r.t. query, positive and hard-negative
embeddings; with hard negatives and duplicate ids) in three forms:
  full       every device all-gathers everything and computes the whole
             [B_global, B_global] logits (the naive baseline),
  gathered   gemb.losses.masked_nce_loss: each device's [B_local, B_global] rows,
  blockwise  the same in chunks of --block_size gathered targets.
It prints XLA's compile-time per-device temporary memory (memory_analysis()
.temp_size_in_bytes) and the median step time, measured only where the estimated
memory of running all devices on this host fits --memory_budget_gib.

  python -m gemb.bench.loss
  python -m gemb.bench.loss --batch_sizes=1024,4096 --dim=64 --block_size=256

The last line reads `at <report_batch>: full/gathered=X full/blockwise=Y` (memory ratios).
"""
import os

# XLA reads these when jax initialises its backend, so they are set before the import.
# 8 simulated devices; and since they share 2 cores, a device can reach a collective
# minutes after the others at large batch: XLA:CPU's default is to abort after 40 s.
_XLA_FLAGS = {
    "xla_force_host_platform_device_count": "8",
    "xla_cpu_collective_timeout_seconds": "3600",
    "xla_cpu_collective_call_warn_stuck_timeout_seconds": "600",
    "xla_cpu_collective_call_terminate_timeout_seconds": "3600",
}
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [f"--{name}={value}" for name, value in _XLA_FLAGS.items()
       if name not in os.environ.get("XLA_FLAGS", "")]
).strip()

import functools  # pylint: disable=g-import-not-at-top
import statistics
import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from gemb import losses

_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["4096", "16384", "32768"], "Global batch sizes to measure.")
_DIM = flags.DEFINE_integer("dim", 256, "Embedding width D.")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", 512, "Chunk of gathered targets (blockwise).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.05, "Loss temperature.")
_DISTINCT_ID_FRACTION = flags.DEFINE_float(
    "distinct_id_fraction", 0.9,
    "Ids are drawn from fraction * batch values, so some examples are duplicates.")
_TIMING_RUNS = flags.DEFINE_integer("timing_runs", 3, "Timed steps after one warm-up.")
_SECONDS_PER_CONFIG = flags.DEFINE_float(
    "seconds_per_config", 60.0,
    "Time budget of the timed steps of one configuration: fewer of them when the "
    "warm-up says they would take longer; if not even one fits, the warm-up step is "
    "the measurement.")
_MAX_STEP_SECONDS = flags.DEFINE_float(
    "max_step_seconds", 120.0,
    "Skip timing a configuration whose step time, extrapolated from the previous batch "
    "size (time ~ B^2), exceeds this.")
_MEMORY_BUDGET_GIB = flags.DEFINE_float(
    "memory_budget_gib", 8.0,
    "Run (time) a configuration only if all devices' estimated memory fits this.")
_REPORT_BATCH = flags.DEFINE_integer(
    "report_batch", 16384, "Global batch of the memory ratios on the last line.")

BATCH_AXES = ("data", "fsdp")
GIB = 2**30
MIB = 2**20


def _full_matrix_loss(query, positive, hard_negative, query_ids, positive_ids, *,
                      axis_name, temperature):
  """Naive baseline: gather the whole batch, compute [B_global, B_global] everywhere."""
  gathered = [lax.all_gather(x, axis_name, tiled=True)
              for x in (query, positive, hard_negative, query_ids, positive_ids)]
  loss = losses.masked_nce_loss(*gathered[:3], query_ids=gathered[3],
                                positive_ids=gathered[4], temperature=temperature)
  # Every device holds the same value; pmean makes it one replicated scalar and
  # gives each device's copy 1/num_devices of the gradient.
  return lax.pmean(loss, axis_name)


def _variants(mesh):
  temperature = _TEMPERATURE.value
  return {
      "full": losses.sharded_loss(
          functools.partial(_full_matrix_loss, temperature=temperature), mesh),
      "gathered": losses.sharded_loss(
          functools.partial(losses.masked_nce_loss, temperature=temperature), mesh),
      "blockwise": losses.sharded_loss(
          functools.partial(losses.masked_nce_loss, temperature=temperature,
                            block_size=_BLOCK_SIZE.value), mesh),
  }


def _step(loss):
  """value_and_grad w.r.t. the three embeddings, as in a training step."""

  def value_and_grads(query, positive, hard_negative, query_ids, positive_ids):
    return jax.value_and_grad(
        lambda q, p, n: loss(q, p, n, query_ids=query_ids, positive_ids=positive_ids),
        argnums=(0, 1, 2))(query, positive, hard_negative)

  return jax.jit(value_and_grads)


def _inputs(batch, dim, sharding, seed=0):
  """Unit-norm embeddings and ids with some duplicates, sharded over the batch."""
  rng = np.random.default_rng(seed)

  def unit(shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  num_ids = max(1, int(_DISTINCT_ID_FRACTION.value * batch))
  arrays = (unit((batch, dim)), unit((batch, dim)), unit((batch, dim)),
            rng.integers(0, num_ids, batch, dtype=np.int32),
            rng.integers(0, num_ids, batch, dtype=np.int32))
  return tuple(jax.device_put(x, sharding) for x in arrays)


def _time(compiled, args):
  """Median seconds per step after one warm-up, and how it was measured."""
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  warm_up = time.perf_counter() - start
  runs = min(_TIMING_RUNS.value, int(_SECONDS_PER_CONFIG.value // warm_up))
  if runs < 1:
    return warm_up, "1 run, no warm-up"
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), f"median of {runs}"


def main(argv):
  del argv
  batch_sizes = [int(batch) for batch in _BATCH_SIZES.value]
  report = _REPORT_BATCH.value
  if report not in batch_sizes:
    raise app.UsageError(f"--report_batch={report} must be one of --batch_sizes.")
  devices = jax.devices()
  mesh = jax.make_mesh((len(devices), 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  sharding = NamedSharding(mesh, P(BATCH_AXES))
  dim = _DIM.value
  print(f"jax {jax.__version__}, {len(devices)} {devices[0].platform} devices, D={dim}, "
        f"block_size={_BLOCK_SIZE.value}, loss = masked NCE with hard negatives and ids, "
        "measured: value_and_grad")
  header = (f"{'global batch':>12} {'variant':>10} {'temp MiB/device':>16} "
            f"{'step time':>28}")
  print(header)
  print("-" * len(header))
  temp_bytes = {}
  step_seconds = {}  # variant -> (batch, seconds) of its last timed run
  for batch in batch_sizes:
    # query, positive, hard_negative [B, D]; query_ids, positive_ids [B].
    shapes = (3 * [jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharding)]
              + 2 * [jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding)])
    args = None
    for name, loss in _variants(mesh).items():
      compiled = _step(loss).lower(*shapes).compile()
      memory = compiled.memory_analysis()
      temp_bytes[batch, name] = memory.temp_size_in_bytes
      per_device = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
                    + memory.output_size_in_bytes)
      needed_gib = len(devices) * per_device / GIB
      if name in step_seconds:
        previous_batch, previous_seconds = step_seconds[name]
        estimated_seconds = previous_seconds * (batch / previous_batch)**2
      else:
        estimated_seconds = 0.0
      if needed_gib > _MEMORY_BUDGET_GIB.value:
        timing = f"skipped (needs {needed_gib:.1f} GiB)"
      elif estimated_seconds > _MAX_STEP_SECONDS.value:
        timing = f"skipped (about {estimated_seconds:.0f} s/step)"
      else:
        args = args or _inputs(batch, dim, sharding)
        seconds, how = _time(compiled, args)
        step_seconds[name] = batch, seconds
        timing = f"{seconds:.3f} s ({how})"
      print(f"{batch:>12} {name:>10} {memory.temp_size_in_bytes / MIB:>16.1f} "
            f"{timing:>28}", flush=True)
      del compiled
    print(f"{batch:>12} {'ratios':>10}  full/gathered="
          f"{temp_bytes[batch, 'full'] / temp_bytes[batch, 'gathered']:.2f} "
          f"full/blockwise={temp_bytes[batch, 'full'] / temp_bytes[batch, 'blockwise']:.2f}",
          flush=True)
  print(f"at {report}: "
        f"full/gathered={temp_bytes[report, 'full'] / temp_bytes[report, 'gathered']:.2f} "
        f"full/blockwise={temp_bytes[report, 'full'] / temp_bytes[report, 'blockwise']:.2f}")


if __name__ == "__main__":
  app.run(main)
