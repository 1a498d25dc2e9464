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


def measure_matmul_peak(n: int = 1024, dtype=jnp.float32, repeats: int = 50, *,
                        clock=time.perf_counter) -> float:
  """FLOP/s of an n x n x n matmul on the default device, best of `repeats` (after warm-up).

  Best of many: a peak is what the device can do, and on a shared CPU host many single calls
  run slow. On the 2-core machine eight back-to-back measurements gave 176-208 GFLOP/s with 5
  repeats and 202-215 with 50 (0.5 s each), and 5-repeat measurements at the start of runs gave
  109-184, so MFUs over them were up to ~2x too high. `clock` is injectable for tests.
  """
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  for _ in range(3):
    matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = clock()
    matmul(a, b).block_until_ready()
    best = min(best, clock() - start)
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


class StepWindow:
  """The metrics of the steps since the last log line, kept on the device (no host sync per
  step) and fetched together when a log line or a checkpoint is due.

  `check(where)` stops the run on the first step whose loss or gradient norm is not finite:
  FloatingPointError naming the step and its batch's task (or domain). Call it before every
  checkpoint save, so that no checkpoint holds the parameters of a bad step and the last one
  is good. `flush(where)` checks too, then returns each metric's mean over the window and
  `loss/<group>`, the mean loss of each task's (domain's) steps in it, and starts a new window.
  """

  def __init__(self, group: str = "task"):
    self.group = group  # what a batch is drawn by: "task" or "domain"
    self._steps: list[tuple[int, str, Mapping]] = []  # (step, group, device metrics)
    self._host: list[dict[str, float]] = []  # fetched and checked metrics of the first steps

  def __len__(self) -> int:
    return len(self._steps)

  def add(self, step: int, group: str, step_metrics: Mapping) -> None:
    self._steps.append((step, group, step_metrics))

  def check(self, where: str) -> None:
    unchecked = self._steps[len(self._host):]
    for (step, group, _), values in zip(unchecked, jax.device_get([m for *_, m in unchecked])):
      values = {k: float(v) for k, v in values.items()}
      for key in ("loss", "grad_norm"):
        if key in values and not np.isfinite(values[key]):
          raise FloatingPointError(f"{where} step {step}: {key} is {values[key]} ({self.group} "
                                   f"{group}); the last good checkpoint is kept")
      self._host.append(values)

  def flush(self, where: str) -> dict[str, float]:
    self.check(where)
    if not self._host:
      raise ValueError(f"{where}: no steps to report since the last log line")
    values = {k: float(np.mean([v[k] for v in self._host])) for k in self._host[0]}
    losses: dict[str, list[float]] = {}
    for (_, group, _), host in zip(self._steps, self._host):
      losses.setdefault(group, []).append(host["loss"])
    values.update({f"loss/{group}": float(np.mean(v)) for group, v in sorted(losses.items())})
    self._steps, self._host = [], []
    return values


def duration(seconds: float) -> str:
  """A person's reading of a duration: '45s', '3m05s', '2h07m'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(stage: str, step: int, total: int, metrics: Mapping[str, float]) -> str:
  """One console line per log window: where the stage is, its loss and pace, and its ETA at
  this window's pace, e.g. `[finetune] step 200/300  loss 2.314  temp 0.0496  lr 2.6e-04
  6.1 steps/s  390 ex/s  mfu 31.2%  eta 16s`."""
  fields = [f"[{stage}] step {step}/{total}"]
  formats = (("loss", "loss {:.4g}"), ("temperature", "temp {:.3g}"), ("lr", "lr {:.2g}"),
             ("steps_per_s", "{:.3g} steps/s"), ("examples_per_s", "{:.0f} ex/s"))
  fields += [fmt.format(metrics[key]) for key, fmt in formats if key in metrics]
  if "mfu" in metrics:
    fields.append(f"mfu {100 * metrics['mfu']:.1f}%")
  if metrics.get("steps_per_s", 0) > 0 and step < total:
    fields.append(f"eta {duration((total - step) / metrics['steps_per_s'])}")
  return "  ".join(fields)
