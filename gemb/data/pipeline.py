"""The training input pipeline: a task mixture of featurised, packed batches (grain).

Every batch holds one task. The task of step s is drawn from the configured rates by an RNG
seeded with (seed, s // 1024), so every host picks the same task without talking to the
others. The k-th batch of task t takes positions [k * B_t, (k + 1) * B_t) of t's stream, a
seeded shuffle of t's examples that is reshuffled every epoch (EpochShuffle; a source read in
order, `source.in_order`, e.g. a streaming one, shuffles itself and gets positions as they are);
host p of P reads the slice [p * B_t / P, (p + 1) * B_t / P) of it. Batches are therefore a pure
function of (config, step): grain maps `step -> batch` over steps, with `worker_count` worker
processes each building whole batches (featurise + pack) and `prefetch` batches read ahead.
The order of batches does not depend on worker_count, and the iterator state is the step:

  it = train_iterator(config, "finetune")   # or make_iterator(config.data, config.model, mixture)
  task, batch = next(it)       # task: str (pop it before jit); batch: dict of numpy arrays
  state = it.get_state()       # {"step": int, "skipped": {task: int}}: JSON, save with orbax
  it.set_state(state)          # the next batch is exactly the one after the saved state

A batch:
  query, positive              packed sides (gemb/data/packing.py) with the task's layout
  negative                     only for tasks with hard negatives
  query_id, positive_id        int32[B]: equal content => equal id (ToyWorld identity keys, or a
                               hash of the decoded raw parts), for masking duplicates in the loss

Task strings: the query's first text part becomes "task: {task_string} | query: {text}"
(features.TASK_STRING_FORMAT), except with probability task_string_dropout, drawn by an RNG
seeded with (seed, task, stream position), so it is deterministic too.

Bad records (missing/corrupt file, empty text, over a limit with truncate off, too many parts):
with on_bad_record="raise" (default) the iterator raises BadRecordError naming the record
(manifest line) and field. With "skip" the record is logged, counted in `metrics()` and in the
state, and replaced by another record of the same task drawn by a seeded RNG, so batches keep
their static shapes (for a source read in order, one of the next `source.replacement_window`
records); never padded or zeroed silently.

The mixture (a stage's `mixture`): {task: {rate, batch_size[, task_string][, source]}}, rate > 0
(normalised over tasks), batch_size global (divisible by the number of processes), task_string
overriding the task's own (ToyWorld tasks have one; manifest and TFDS tasks none by default),
source overriding config.data.source for this task.

config.data: the keys of configs/common.py's `data()`, which documents each and holds their
defaults; gemb/train/config_check.py checks them (`data_config` below calls it).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Mapping

from absl import flags
from absl import logging
import grain
import numpy as np

from gemb import datasets
from gemb.data import features
from gemb.data import packing
from gemb.train import config_check

_SCHEDULE_BLOCK = 1024  # task draws are made in blocks of this many steps


def data_config(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """config.data as a dict, checked (config_check.data): a missing or unknown key, or a bad
  value, is an error naming the key. Build it with configs/common.py's `data(...)`."""
  config_check.data(data_cfg)
  return dict(data_cfg)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One mixture task: where its examples come from and the static shapes of its batches."""

  name: str
  source: Any                      # random access raw examples: len(), [i]
  rate: float                      # normalised sampling rate
  global_batch_size: int
  batch_size: int                  # this process' rows: global_batch_size / process count
  task_string: str | None
  layouts: dict[str, packing.Layout]  # side -> layout (query, positive[, negative])


def _datasets(cfg: Mapping[str, Any], mixture: Mapping[str, Any],
              where: str = "mixture") -> dict[str, Any]:
  """Each data source the mixture reads (gemb.datasets), built once: a manifest is scanned once."""
  sources = {}
  for task, entry in mixture.items():
    name = dict(entry).get("source", cfg["source"])
    if name not in sources:
      key = f"{where}.{task}.source" if "source" in dict(entry) else "config.data.source"
      sources[name] = datasets.get(name, cfg, where=key)
  return sources


def make_tasks(data_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
               mixture: Mapping[str, Mapping[str, Any]], *, hard_negatives: bool = True,
               shard_count: int = 1, sources: Mapping[str, Any] | None = None,
               where: str = "mixture") -> dict[str, TaskSpec]:
  """Builds every mixture task (sources, per-process batch sizes, layouts) from the configs.

  Args:
    mixture: {task: {rate, batch_size[, task_string][, source]}}; `where` names it in errors
      (e.g. "config.stages.finetune.mixture").
    hard_negatives: False leaves the negative side out even for tasks that have one.
    shard_count: processes sharing each batch.
    sources: source name -> gemb.datasets dataset, built here when not given.
  """
  cfg = data_config(data_cfg)
  fcfg = features.FeatureConfig.from_config(model_cfg, truncate=cfg["truncate"])
  mixture = {name: dict(entry) for name, entry in dict(mixture).items()}
  config_check.mixture(mixture, where, process_count=shard_count)
  if sources is None:
    sources = _datasets(cfg, mixture, where)
  total = sum(float(e["rate"]) for e in mixture.values())
  tasks = {}
  for name, entry in mixture.items():
    task = sources[entry.get("source", cfg["source"])].task(name, fcfg, where)
    source, parts, task_string = task.source, task.max_parts, task.task_string
    if len(source) == 0:
      raise ValueError(f"{where}.{name}: the task has no examples")
    sides = [side for side in features.SIDES
             if side in parts and (hard_negatives or side != "negative")]
    layouts = {side: fcfg.layout(parts[side]) for side in sides}
    for side, layout in layouts.items():
      _check_layout(layout, model_cfg, f"{where}.{name} {side}")
    tasks[name] = TaskSpec(
        name=name, source=source, rate=float(entry["rate"]) / total,
        global_batch_size=int(entry["batch_size"]),
        batch_size=int(entry["batch_size"]) // shard_count,
        task_string=entry.get("task_string", task_string), layouts=layouts)
  return tasks


def _check_layout(layout: packing.Layout, model_cfg: Mapping[str, Any], what: str) -> None:
  """Packs one minimal input with every slot of the layout and lets the model check the shapes
  (sequence length, part count), so a layout the encoder cannot take fails before training."""
  from gemb.model import inputs  # pylint: disable=g-import-not-at-top
  try:
    inputs.check_side(packing.minimal_side(layout), model_cfg)
  except ValueError as e:
    raise ValueError(f"{what}: the layout {dict(layout.max_parts)} does not fit config.model: "
                     f"{e}") from e


class TaskSchedule:
  """step -> (task index, how many earlier steps drew that task).

  Picklable and thread-safe (grain's read threads share it); caches per-block draw counts, so
  going through steps in order costs O(1) per step and jumping to step s costs O(s / 1024).
  """

  def __init__(self, rates: np.ndarray, seed: int):
    self._rates = np.asarray(rates, np.float64)
    self._seed = seed
    self.__setstate__(self.__dict__)

  def __getstate__(self):
    return {"_rates": self._rates, "_seed": self._seed}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._block_starts = [np.zeros(len(self._rates), np.int64)]  # draws before each block
    self._last_block: tuple[int, np.ndarray] | None = None

  def _block(self, b: int) -> np.ndarray:
    if self._last_block is None or self._last_block[0] != b:
      rng = np.random.default_rng([self._seed, b])
      self._last_block = (b, rng.choice(len(self._rates), size=_SCHEDULE_BLOCK, p=self._rates))
    return self._last_block[1]

  def __call__(self, step: int) -> tuple[int, int]:
    b, r = divmod(step, _SCHEDULE_BLOCK)
    with self._lock:
      while len(self._block_starts) <= b:
        counts = np.bincount(self._block(len(self._block_starts) - 1), minlength=len(self._rates))
        self._block_starts.append(self._block_starts[-1] + counts)
      tasks = self._block(b)
      t = int(tasks[r])
      return t, int(self._block_starts[b][t] + np.count_nonzero(tasks[:r] == t))


class EpochShuffle:
  """Position in an endless stream -> example index: a new seeded permutation every epoch.

  Picklable and thread-safe. (grain's index_shuffle needs no memory but takes milliseconds per
  index on small datasets; a cached permutation costs 8 bytes per example, microseconds per
  index.)
  """

  def __init__(self, size: int, seed: int):
    self._size = size
    self._seed = seed
    self.__setstate__(self.__dict__)

  def __getstate__(self):
    return {"_size": self._size, "_seed": self._seed}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._epochs: dict[int, np.ndarray] = {}

  def __getitem__(self, position: int) -> int:
    epoch, i = divmod(position, self._size)
    with self._lock:
      if epoch not in self._epochs:
        if len(self._epochs) > 1:  # keep the last epoch: a batch may straddle the boundary
          del self._epochs[min(self._epochs)]
        self._epochs[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self._size)
      return int(self._epochs[epoch][i])


class InOrder:
  """Position -> the same position: the order of a source read in order (`source.in_order`)."""

  def __getitem__(self, position: int) -> int:
    return position


class BatchMaker:
  """step -> one task's packed batch for this process (runs in grain workers; picklable).

  Returns {"task": str, "batch": dict, "skipped": [messages], "error": message or ""}.
  """

  def __init__(self, tasks: Mapping[str, TaskSpec], fcfg: features.FeatureConfig,
               cfg: Mapping[str, Any], shard_index: int):
    self._tasks = list(tasks.values())
    self._fcfg = fcfg
    self._seed = int(cfg["seed"])
    self._dropout = float(cfg["task_string_dropout"])
    self._skip = cfg["on_bad_record"] == "skip"
    self._max_replacements = int(cfg["max_replacements"])
    self._shard_index = shard_index
    self._salts = [features.key_id(t.name) for t in self._tasks]
    self.schedule = TaskSchedule(np.array([t.rate for t in self._tasks]), self._seed)
    self._orders = [
        InOrder() if getattr(t.source, "in_order", False)
        else EpochShuffle(len(t.source), features.key_id((self._seed, "shuffle", t.name)))
        for t in self._tasks]

  def __call__(self, step: int) -> dict[str, Any]:
    t, k = self.schedule(step)
    task = self._tasks[t]
    first = k * task.global_batch_size + self._shard_index * task.batch_size
    rows, skipped = [], []
    for position in range(first, first + task.batch_size):
      try:
        rows.append(self._example(t, position, skipped))
      except features.BadRecordError as e:
        return {"task": task.name, "batch": {}, "skipped": skipped, "error": str(e)}
    batch = {side: {key: np.concatenate([r[side][key] for r in rows]) for key in rows[0][side]}
             for side in task.layouts}
    for key in ("query_id", "positive_id"):
      batch[key] = np.array([r[key] for r in rows], np.int32)
    return {"task": task.name, "batch": batch, "skipped": skipped, "error": ""}

  def _example(self, t: int, position: int, skipped: list[str]) -> dict[str, Any]:
    """The example at `position` of task t's stream, or with "skip" its seeded replacement."""
    task = self._tasks[t]
    rng = np.random.default_rng([self._seed, self._salts[t], position])
    index = self._orders[t][position]
    for _ in range(self._max_replacements):
      try:
        return self._featurise(task, index, rng)
      except features.BadRecordError as e:
        if not self._skip:
          raise
        skipped.append(str(e))
        index = _replacement(task.source, position, rng)
    raise features.BadRecordError(
        f"task {task.name!r}: {self._max_replacements} records in a row were bad "
        f"(config.data.max_replacements); the last: {skipped[-1]}")

  def _featurise(self, task: TaskSpec, index: int, rng: np.random.Generator) -> dict[str, Any]:
    """Reads, featurises and packs (B=1) one example; BadRecordError names what is wrong."""
    where = f"{task.name} #{index}"
    try:
      raw = task.source[index]
      where = raw.get("origin", where)
      use_task_string = task.task_string and rng.random() >= self._dropout
      row = {}
      for side, layout in task.layouts.items():
        if side not in raw:
          raise features.BadRecordError(f"{where}: the record has no {side!r} but task "
                                        f"{task.name!r} needs one")
        parts = raw[side]
        if side == "query" and use_task_string:
          parts = features.with_task_string(parts, task.task_string)
        name = f"{where} {side}"
        row[side] = packing.pack_inputs([features.featurise_input(parts, self._fcfg, name)],
                                        layout, names=[name])
      row["query_id"], row["positive_id"] = features.example_ids(raw)
      return row
    except packing.PackingError as e:
      raise features.BadRecordError(str(e)) from e
    except features.BadRecordError:
      raise
    except (ValueError, OSError, KeyError, TypeError) as e:
      raise features.BadRecordError(f"{where}: {type(e).__name__}: {e}") from e


def _replacement(source, position: int, rng: np.random.Generator) -> int:
  """The index of a record for a bad one: any of the source's, or for a source read in order one
  of the next `source.replacement_window` (it keeps them at hand; a far one means re-reading)."""
  if getattr(source, "in_order", False):
    return position + 1 + int(rng.integers(source.replacement_window))
  return int(rng.integers(len(source)))


class MixtureIterator:
  """Yields (task name, batch); get_state()/set_state() resume on exactly the next batch."""

  def __init__(self, tasks: Mapping[str, TaskSpec], fcfg: features.FeatureConfig,
               cfg: Mapping[str, Any], shard_index: int = 0, scan_skipped: int = 0):
    self.tasks = dict(tasks)
    self._cfg = cfg
    self._maker = BatchMaker(tasks, fcfg, cfg, shard_index)
    self._scan_skipped = scan_skipped
    self._step = 0
    self._skipped = {name: 0 for name in tasks}
    self._iterator = None

  def _start(self):
    self.close()
    ds = grain.MapDataset.range(self._step, 2**62).map(self._maker)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self._cfg["read_threads"],
                                              prefetch_buffer_size=self._cfg["prefetch"]))
    if self._cfg["worker_count"] > 0:
      if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app
        flags.FLAGS.mark_as_parsed()   # (tests, notebooks) their defaults are what we want
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._cfg["worker_count"],
          per_worker_buffer_size=self._cfg["worker_buffer_size"]))
    self._iterator = iter(ds)

  def __iter__(self):
    return self

  def __next__(self) -> tuple[str, dict[str, Any]]:
    if self._iterator is None:
      self._start()
    element = next(self._iterator)
    self._step += 1  # also past a step that raises, so state and grain iterator stay in line
    for message in element["skipped"]:
      logging.warning("skipped bad record: %s", message)
    self._skipped[element["task"]] += len(element["skipped"])
    if element["error"]:
      raise features.BadRecordError(element["error"] + " (set config.data.on_bad_record='skip' "
                                    "to skip bad records)")
    return element["task"], element["batch"]

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable: the number of batches read and the bad records skipped so far."""
    return {"step": self._step, "skipped": dict(self._skipped)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._step = int(state["step"])
    self._skipped = {name: int(state.get("skipped", {}).get(name, 0)) for name in self.tasks}
    self.close()

  def metrics(self) -> dict[str, int]:
    """Bad-record counts for the metrics writer (the trainer prefixes "data/")."""
    out = {f"skipped/{name}": n for name, n in self._skipped.items()}
    out["skipped_records"] = sum(self._skipped.values())
    out["skipped_manifest_lines"] = self._scan_skipped
    return out

  def close(self):
    """Stops worker processes (also on garbage collection)."""
    if self._iterator is not None and hasattr(self._iterator, "close"):
      self._iterator.close()
    self._iterator = None


def make_iterator(data_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                  mixture: Mapping[str, Mapping[str, Any]], *, hard_negatives: bool = True,
                  seed: int | None = None, shard: grain.sharding.ShardOptions | None = None,
                  where: str = "mixture") -> MixtureIterator:
  """The training iterator for this process (module docstring).

  Args:
    data_cfg: config.data (keys in the module docstring).
    model_cfg: config.model (limits, tokenizer).
    mixture: {task: {rate, batch_size[, task_string][, source]}}.
    hard_negatives: False leaves out the negative side.
    seed: replaces config.data.seed (e.g. a stage's seed).
    shard: which slice this process reads; default grain.sharding.ShardByJaxProcess(), i.e.
      jax.process_index() of jax.process_count().
    where: the mixture's config key, for error messages.
  """
  cfg = data_config(data_cfg)
  if seed is not None:
    cfg["seed"] = int(seed)
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  sources = _datasets(cfg, mixture, where)
  tasks = make_tasks(cfg, model_cfg, mixture, hard_negatives=hard_negatives,
                     shard_count=shard.shard_count, sources=sources, where=where)
  fcfg = features.FeatureConfig.from_config(model_cfg, truncate=cfg["truncate"])
  scan_skipped = sum(dataset.skipped_lines for dataset in sources.values())
  return MixtureIterator(tasks, fcfg, cfg, shard.shard_index, scan_skipped)


def train_iterator(config: Mapping[str, Any], stage: str) -> MixtureIterator:
  """The iterator of training stage `stage`: its mixture, hard_negatives and seed."""
  stage_cfg = config["stages"][stage]
  return make_iterator(config["data"], config["model"], stage_cfg["mixture"],
                       hard_negatives=stage_cfg.get("hard_negatives", True),
                       seed=stage_cfg.get("seed"), where=f"config.stages.{stage}.mixture")


def known_tasks(config: Mapping[str, Any]) -> list[str]:
  """The tasks config.data.source offers (ToyWorld tasks, manifest tasks, config.data.tfds...)."""
  cfg = data_config(config["data"])
  return datasets.get(cfg["source"], cfg).tasks()
