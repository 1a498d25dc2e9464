"""Data sources by name: `get(name, data_cfg)` returns the source that a mixture task reads.

  dataset = datasets.get("toyworld", config.data)   # or "manifest", "tfds", "hf", a registered name
  dataset.tasks()                                   # the task names it offers
  task = dataset.task("text_to_image", fcfg, where="config.stages.finetune.mixture")
  task.source[i]                                    # raw example: {"query": [parts], ...}

A source module is found by its path in `_MODULES` and imported only when asked for (TFDS pulls
in TensorFlow); it defines `Dataset(data_cfg)` with `tasks()`, `task(name, fcfg, where)` and
`skipped_lines` (records left out when it was read). `register(name, ...)` adds one.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Protocol

_MODULES: dict[str, Any] = {
    "toyworld": "gemb.datasets.toyworld",
    "manifest": "gemb.datasets.manifest",
    "tfds": "gemb.datasets.tfds",
    "hf": "gemb.datasets.hf",
}


@dataclasses.dataclass(frozen=True)
class Task:
  """One task of a dataset: its examples and the most parts of each modality per side."""

  source: Any                                # random access raw examples: len(), [i]
  max_parts: Mapping[str, Mapping[str, int]]  # side -> {modality: count}
  task_string: str | None                    # the task's own instruction, if it has one


class Dataset(Protocol):
  skipped_lines: int

  def tasks(self) -> list[str]: ...

  def task(self, name: str, fcfg, where: str) -> Task: ...


def names() -> list[str]:
  return sorted(_MODULES)


def register(name: str, dataset) -> None:
  """Makes `get(name, ...)` build `dataset`: a module path whose `Dataset` class is imported on
  first use, or a callable data_cfg -> Dataset."""
  _MODULES[name] = dataset


def get(name: str, data_cfg: Mapping[str, Any], where: str = "config.data.source") -> Dataset:
  """The dataset `name` built from `data_cfg` (config.data); `where` names the key in errors."""
  if name not in _MODULES:
    raise ValueError(f"{where}={name!r} is not a known data source; known: {names()} "
                     "(gemb.datasets.register adds one)")
  dataset = _MODULES[name]
  if isinstance(dataset, str):
    dataset = importlib.import_module(dataset).Dataset
  return dataset(data_cfg)


def parse_parts(spec: str, where: str) -> list[tuple[str, str]]:
  """A side's parts from a column spec: "text:caption,image:image" -> [("text", "caption"),
  ("image", "image")]; a column path walks nested fields with "/" (TFDS features, HF structs)."""
  from gemb.data import packing  # pylint: disable=g-import-not-at-top
  parts = []
  for item in [s.strip() for s in spec.split(",") if s.strip()]:
    modality, _, path = item.partition(":")
    if modality not in packing.MODALITIES or not path:
      raise ValueError(f"{where}={spec!r}: each part is 'modality:feature/path' with a modality "
                       f"in {packing.MODALITIES}, got {item!r}")
    parts.append((modality, path))
  return parts


def example(task: str, origin: str, parts: Mapping[str, list[tuple[str, str]]],
            read: Callable[[str, str], Any]) -> dict[str, Any]:
  """A raw example of a column-mapped source (TFDS, HF): side -> [{modality: read(modality,
  column path)}, ...]; a part that cannot be read is a BadRecordError naming origin and column."""
  from gemb.data import features  # pylint: disable=g-import-not-at-top
  out = {"task": task, "origin": origin}
  for side, side_parts in parts.items():
    out[side] = []
    for modality, path in side_parts:
      try:
        out[side].append({modality: read(modality, path)})
      except (KeyError, ValueError, TypeError, OSError) as e:
        raise features.BadRecordError(f"{origin} {side} {modality}:{path}: {e}") from e
  return out


def field(record: Mapping[str, Any], path: str) -> Any:
  """The value at a column path ("a/b" walks nested fields); KeyError naming what is there."""
  value = record
  for key in path.split("/"):
    if not isinstance(value, Mapping) or key not in value:
      there = sorted(value) if isinstance(value, Mapping) else type(value).__name__
      raise KeyError(f"field {path!r} not found at {key!r}; there: {there}")
    value = value[key]
  return value


def unknown_task(where: str, name: str, dataset: str, known) -> ValueError:
  return ValueError(f"{where}.{name}: {dataset} has no task {name!r}; it has {sorted(known)}")
