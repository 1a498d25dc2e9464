"""Training metrics: `metrics.jsonl` + TensorBoard event files in the workdir, a progress line, MFU.

MFU here is model FLOPs per second divided by the matmul peak *measured* on this device at start
(a large f32 matmul under jit), not a datasheet number, so it is meaningful on a laptop CPU too.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def measure_matmul_peak(n: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of an n x n x n matmul on the default device, best of `repeats` (after warm-up)."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


class MetricWriter:
  """Appends flat metric dicts to WORKDIR/metrics.jsonl and TensorBoard (main process only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pure-python TensorBoard writer (no TensorFlow)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float], stage: str) -> None:
    if not self.enabled:
      return
    record = {"stage": stage, "step": int(step),
              **{k: float(v) for k, v in metrics.items() if np.isscalar(v) or np.ndim(v) == 0}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("stage", "step"):
        self._tb.add_scalar(f"{stage}/{key}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of WORKDIR/metrics.jsonl, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def host_values(step_metrics: Mapping, where: str, batch_of: str) -> dict[str, float]:
  """A step's metrics fetched to the host as floats. A loss that is not finite stops the run:
  FloatingPointError naming `where` (e.g. 'stage finetune step 300') and `batch_of` (e.g.
  'task bitext'); checkpoints are only saved before this check fails, so the last one is good."""
  values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  if not np.isfinite(values["loss"]):
    raise FloatingPointError(f"{where}: loss is {values['loss']} ({batch_of}); the last good "
                             "checkpoint is kept")
  return values


def progress_line(stage: str, step: int, total: int, metrics: Mapping[str, float]) -> str:
  keys = ("loss", "temperature", "lr", "steps_per_s", "examples_per_s", "mfu")
  shown = " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
  return f"[{stage}] step {step}/{total} {shown}"
