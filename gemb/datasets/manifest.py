"""JSONL manifests: your own data as lists of parts pointing at files.

One example per line:

  {"task": "captions", "query": [{"text": "a red circle"}], "positive": [{"image": "img/0.png"}],
   "negative": [{"image": "img/1.png"}]}

  task      str, the task (mixture entry) the example belongs to.
  query, positive, negative (optional)
            non-empty lists of parts, each {"text": str} or {"image" | "audio" | "video": path};
            paths are relative to the manifest's folder. Images: any format Pillow reads. Audio:
            WAV, FLAC, OGG, MP3 (any rate, mono or multi-channel; resampled, channels
            averaged). Video: .gif,
            .npy uint8 [T, H, W, 3], a folder of frames, or .mp4 (decoded with av).
  query_key, positive_key (optional)
            identity strings: two examples with equal keys have the same content (their ids
            in a batch are equal, so the loss does not treat them as negatives of each other).
            Without them, ids hash the decoded content.
  other keys (label, score, ...) are kept in the raw example.

`scan_manifest` reads the file once: per task, the byte offset of each line and, per side, the
most parts of each modality any line has (the task's static packing layout). Lines that are not
valid JSON of this shape are errors naming the line, or with on_bad_record="skip" are counted
and left out. `ManifestSource` reads one task's lines by index and decodes the files.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from gemb import datasets
from gemb.data import features


@dataclasses.dataclass(frozen=True)
class ManifestTask:
  name: str
  offsets: np.ndarray       # int64[N] byte offset of each line of this task
  lines: np.ndarray         # int64[N] 1-based line numbers, for error messages
  max_parts: dict[str, dict[str, int]]  # side -> modality -> most parts in one line
  has_negative: bool


@dataclasses.dataclass(frozen=True)
class ManifestIndex:
  path: str
  tasks: dict[str, ManifestTask]
  bad_lines: tuple[str, ...]  # why each skipped line was skipped (on_bad_record="skip")


def check_record(record: Any) -> dict[str, Any]:
  """Checks one decoded line against the manifest format; ValueError names the field."""
  if not isinstance(record, dict):
    raise ValueError(f"a line is a JSON object, got {type(record).__name__}")
  if not isinstance(record.get("task"), str) or not record["task"]:
    raise ValueError("field 'task' must be a non-empty string")
  for side in features.SIDES:
    if side not in record:
      if side == "negative":
        continue
      raise ValueError(f"field {side!r} is missing")
    check_parts(record[side], side)
  return record


def check_parts(parts: Any, field: str) -> None:
  """Checks a record's list of parts (text inline, other modalities as file paths); ValueError
  names `field` and the part."""
  if not isinstance(parts, list) or not parts:
    raise ValueError(f"field {field!r} must be a non-empty list of parts, e.g. "
                     "[{\"text\": \"a red circle\"}, {\"image\": \"img/0.png\"}]")
  for i, part in enumerate(parts):
    try:
      modality = features.modality_of(part)
    except ValueError as e:
      raise ValueError(f"{field}[{i}]: {e}") from None
    if not isinstance(part[modality], str):
      what = "a string" if modality == "text" else "a file path (string)"
      raise ValueError(f"{field}[{i}].{modality} must be {what}, got "
                       f"{type(part[modality]).__name__}")


def scan_manifest(path: str, on_bad_record: str = "raise") -> ManifestIndex:
  """Reads the manifest once; see the module docstring."""
  if on_bad_record not in ("raise", "skip"):
    raise ValueError(f"config.data.on_bad_record={on_bad_record!r}; use 'raise' or 'skip'")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"manifest {path!r} does not exist (config.data.manifest)")
  found: dict[str, dict[str, Any]] = {}
  bad = []
  offset = 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      line_offset, offset = offset, offset + len(raw)
      if not raw.strip():
        continue
      try:
        record = check_record(json.loads(raw))
      except ValueError as e:  # json.JSONDecodeError is a ValueError
        message = f"{path}:{number}: {e}"
        if on_bad_record == "raise":
          raise features.BadRecordError(message) from None
        bad.append(message)
        continue
      task = found.setdefault(record["task"], {
          "offsets": [], "lines": [], "negative_lines": [], "plain_lines": [],
          "max_parts": {side: {} for side in features.SIDES}})
      task["offsets"].append(line_offset)
      task["lines"].append(number)
      task["negative_lines" if "negative" in record else "plain_lines"].append(number)
      for side in features.SIDES:
        parts = record.get(side, [])
        for m, n in features.count_modalities(m for p in parts for m in p).items():
          task["max_parts"][side][m] = max(task["max_parts"][side].get(m, 0), n)
  tasks = {}
  for name, t in found.items():
    if t["negative_lines"] and t["plain_lines"]:
      raise features.BadRecordError(
          f"{path}: task {name!r} has a 'negative' on line {t['negative_lines'][0]} but none on "
          f"line {t['plain_lines'][0]}; give every line of a task a hard negative, or none")
    max_parts = {side: parts for side, parts in t["max_parts"].items() if parts}
    tasks[name] = ManifestTask(name, np.asarray(t["offsets"], np.int64),
                               np.asarray(t["lines"], np.int64), max_parts,
                               bool(t["negative_lines"]))
  if not tasks:
    raise ValueError(f"manifest {path!r} has no valid lines")
  return ManifestIndex(path, tasks, tuple(bad))


class ManifestSource:
  """Random access to one task's raw examples (files decoded to arrays).

  Each example carries "origin" = "manifest.jsonl:LINE" for error messages. A missing or
  corrupt file raises BadRecordError naming the line and the field, e.g.
  "data/m.jsonl:12 positive[0].image: image file '.../x.png' does not exist".
  """

  def __init__(self, index: ManifestIndex, task: str, cfg: features.FeatureConfig):
    if task not in index.tasks:
      raise KeyError(f"task {task!r} is not in manifest {index.path!r}; it has "
                     f"{sorted(index.tasks)}")
    self._path = index.path
    self._root = os.path.dirname(os.path.abspath(index.path))
    self._task = index.tasks[task]
    self._cfg = cfg

  def __len__(self) -> int:
    return len(self._task.offsets)

  def read_record(self, index: int) -> tuple[dict[str, Any], str]:
    """The JSON record of the index-th line of the task, and its "path:line" origin."""
    with open(self._path, "rb") as f:  # a file per read: safe under grain's read threads
      f.seek(int(self._task.offsets[index]))
      line = f.readline()
    return json.loads(line), f"{self._path}:{self._task.lines[index]}"

  def __getitem__(self, index: int) -> dict[str, Any]:
    record, origin = self.read_record(index)
    example = dict(record, origin=origin)
    for side in features.SIDES:
      if side in record:
        example[side] = []
        for i, part in enumerate(record[side]):
          (modality,) = part
          try:
            example[side].append(features.load_part(part, self._cfg, self._root))
          except (ValueError, OSError) as e:
            raise features.BadRecordError(f"{origin} {side}[{i}].{modality}: {e}") from e
    return example


def write_manifest(path: str, examples: Iterable[Mapping[str, Any]], *, fps: float,
                   video_format: str = "gif") -> None:
  """Writes raw examples (data contract: arrays) as a manifest plus media files beside it.

  Images -> PNG, audio -> 16-bit WAV at 16 kHz, video -> GIF at `fps` (lossy palette) or .npy
  (exact). Files go to media/ next to the manifest, named by line and field.
  """
  root = os.path.dirname(os.path.abspath(path))
  os.makedirs(os.path.join(root, "media"), exist_ok=True)
  lines = []
  for number, example in enumerate(examples, start=1):
    record = {"task": example["task"]}
    for side in features.SIDES:
      if side not in example:
        continue
      record[side] = []
      for i, part in enumerate(example[side]):
        modality = features.modality_of(part)
        value = part[modality]
        if modality == "text":
          record[side].append({"text": value})
          continue
        name = write_part(root, os.path.join("media", f"{number:05d}_{side}_{i}"), modality,
                          value, fps=fps, video_format=video_format)
        record[side].append({modality: name})
    record.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in example.items()
                   if k not in record and k != "origin" and _is_json(v)})
    lines.append(json.dumps(record, ensure_ascii=False))
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def write_part(root: str, stem: str, modality: str, value: Any, *, fps: float = 0.0,
               video_format: str = "npy") -> str:
  """Writes one non-text part's array as a media file at root/stem.EXT; returns stem.EXT. Images
  -> PNG, audio -> 16-bit WAV at 16 kHz, video -> .npy (exact) or GIF at `fps` (lossy)."""
  from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
  if modality == "image":
    name = stem + ".png"
    Image.fromarray(np.asarray(value, np.uint8)).save(os.path.join(root, name))
  elif modality == "audio":
    name = stem + ".wav"
    pcm = np.clip(np.round(np.asarray(value) * 32768), -32768, 32767).astype(np.int16)
    wavfile.write(os.path.join(root, name), features.RAW_AUDIO_RATE, pcm)
  elif video_format == "npy":
    name = stem + ".npy"
    np.save(os.path.join(root, name), np.asarray(value, np.uint8))
  else:
    name = stem + ".gif"
    frames = [Image.fromarray(f) for f in np.asarray(value, np.uint8)]
    frames[0].save(os.path.join(root, name), save_all=True, append_images=frames[1:],
                   duration=int(round(1000 / fps)), loop=0)
  return name


def _is_json(value: Any) -> bool:
  return isinstance(value, (str, int, float, bool, np.integer, np.floating)) or value is None



class Dataset:
  """The JSONL manifest `config.data.manifest` for the data registry: scanned once, here
  (bad lines logged, or with on_bad_record="raise" an error naming the line)."""

  def __init__(self, data_cfg: Mapping[str, Any]):
    from absl import logging  # pylint: disable=g-import-not-at-top
    if not data_cfg["manifest"]:
      raise ValueError("config.data.manifest is empty but a mixture task reads the manifest")
    self.index = scan_manifest(data_cfg["manifest"], data_cfg["on_bad_record"])
    for message in self.index.bad_lines:
      logging.warning("skipped bad manifest line: %s", message)
    self.skipped_lines = len(self.index.bad_lines)

  def tasks(self) -> list[str]:
    return list(self.index.tasks)

  def task(self, name: str, fcfg: features.FeatureConfig, where: str):
    if name not in self.index.tasks:
      raise datasets.unknown_task(where, name, f"manifest {self.index.path!r}", self.index.tasks)
    return datasets.Task(ManifestSource(self.index, name, fcfg), self.index.tasks[name].max_parts,
                         None)
