"""Dynamic batching: concurrent requests share one embedding call.

Request threads `submit` their (already featurised) inputs and wait on a Future; one worker
thread takes the oldest request, then every request that arrives within `max_wait_s` (or is
already queued, when max_wait_s is 0) while the batch has room for it, up to `max_batch`
inputs, and runs them in one call. Under load the queue fills while a batch runs, so batches
grow with the load without adding latency when idle.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

_STOP = object()


@dataclasses.dataclass
class _Request:
  inputs: Sequence[Any]
  future: concurrent.futures.Future


class Batcher:
  """Runs `embed_fn(inputs) -> [N, D]` on batches of concurrently submitted requests."""

  def __init__(self, embed_fn: Callable[[list], np.ndarray], max_batch: int, max_wait_s: float):
    if max_batch < 1 or max_wait_s < 0:
      raise ValueError(f"max_batch={max_batch} must be >= 1 and max_wait_s={max_wait_s} >= 0")
    self.embed_fn, self.max_batch, self.max_wait_s = embed_fn, max_batch, max_wait_s
    self._queue: queue.Queue = queue.Queue()
    self._lock = threading.Lock()
    self.stats = {"requests": 0, "inputs": 0, "batches": 0, "largest_batch": 0}
    self._thread = threading.Thread(target=self._loop, name="gemb-batcher", daemon=True)
    self._thread.start()

  def submit(self, inputs: Sequence[Any]) -> concurrent.futures.Future:
    """Queues one request's inputs; the Future's result is its rows of the embeddings."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    self._queue.put(_Request(list(inputs), future))
    return future

  def close(self) -> None:
    self._queue.put(_STOP)
    self._thread.join()

  def _next_batch(self, first: _Request) -> tuple[list[_Request], Any]:
    """`first` plus what joins it; returns (batch, the request left over for the next batch)."""
    batch, size = [first], len(first.inputs)
    deadline = time.monotonic() + self.max_wait_s
    while size < self.max_batch:
      try:
        remaining = deadline - time.monotonic()
        item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      if item is _STOP or size + len(item.inputs) > self.max_batch:
        return batch, item
      batch.append(item)
      size += len(item.inputs)
    return batch, None

  def _loop(self) -> None:
    leftover = None
    while True:
      first = leftover if leftover is not None else self._queue.get()
      if first is _STOP:
        return
      batch, leftover = self._next_batch(first)
      inputs = [x for request in batch for x in request.inputs]
      try:
        embeddings = self.embed_fn(inputs)
      except Exception as e:  # the requests' threads report it; the worker keeps serving
        for request in batch:
          request.future.set_exception(e)
        continue
      with self._lock:
        self.stats["requests"] += len(batch)
        self.stats["inputs"] += len(inputs)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(inputs))
      start = 0
      for request in batch:
        request.future.set_result(embeddings[start:start + len(request.inputs)])
        start += len(request.inputs)

  def snapshot(self) -> dict[str, int]:
    with self._lock:
      return dict(self.stats)
