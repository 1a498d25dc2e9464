"""Hugging Face `datasets` as gemb tasks: local parquet / Arrow / CSV / JSON files, or a folder
written by `Dataset.save_to_disk`, with columns mapped to parts by config.

  config.data.hf = {
      "captions": {                           # the task name (a mixture entry)
          "path": "data/captions/*.parquet",  # file(s) (a glob, or a list) or a save_to_disk folder
          "format": "",                       # parquet | arrow | csv | json; "" = by extension
          "split": "",                        # default: config.data.split
          "query": "text:caption",            # parts, comma-separated "modality:column[/field]"
          "positive": "image:image",
          "negative": "",                     # optional
          "sample_rate": 16000,               # of audio arrays that carry none
          "cache_dir": "",                    # where files are converted to Arrow (HF's default)
      }}

Columns: text takes a string (bytes as UTF-8; a ClassLabel gives its name, a number its
digits, a list its first); image an `Image` feature, bytes of an image file, a path, or a
uint8 [H, W, C] array; audio an `Audio` feature, bytes or a path of any file libsndfile reads
(WAV, FLAC, OGG, MP3), or {"array", "sampling_rate"}; video a path of a video file or a uint8
[T, H, W, 3] array. Image, audio and video features are read undecoded and decoded by gemb's
own decoders (no torch). Rows are read by index from memory-mapped Arrow, so a dataset larger
than memory trains without being loaded; a streaming (iterable) dataset is not a source, since
exact resume reads batch k by position: convert it once with `save_to_disk`.
"""
from __future__ import annotations

import glob
import io
import os
from typing import Any, Mapping

import numpy as np

from gemb import datasets
from gemb.data import audio as audio_lib
from gemb.data import features
from gemb.data import image as image_lib

ENTRY_KEYS = ("path", "format", "split", "query", "positive", "negative", "sample_rate",
              "cache_dir")
FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json",
           ".jsonl": "json"}


def _files(path, where: str) -> list[str]:
  paths = [path] if isinstance(path, str) else list(path)
  files = sorted(f for p in paths for f in (glob.glob(p) if glob.has_magic(p) else [p]))
  missing = [f for f in files if not os.path.exists(f)]
  if not files or missing:
    raise FileNotFoundError(f"{where}.path={path!r}: no such file(s) {missing or paths}")
  return files


class HfSource:
  """Random access raw examples of one Hugging Face dataset (picklable: opens it lazily)."""

  def __init__(self, task: str, entry: Mapping[str, Any], split: str, where: str,
               fcfg: features.FeatureConfig):
    self.task, self.where, self._fcfg = task, where, fcfg
    self.path, self.split = entry["path"], entry.get("split") or split
    self.format = entry.get("format") or ""
    self.cache_dir = entry.get("cache_dir") or None
    self.sample_rate = int(entry.get("sample_rate") or features.RAW_AUDIO_RATE)
    self.parts = {side: datasets.parse_parts(entry[side], f"{where}.{side}")
                  for side in features.SIDES if entry.get(side)}
    self.max_parts = {side: features.count_modalities(m for m, _ in p)
                      for side, p in self.parts.items()}
    self._dataset = None

  def __getstate__(self):
    return {**self.__dict__, "_dataset": None}

  @property
  def dataset(self):
    if self._dataset is None:
      self._dataset = self._open()
    return self._dataset

  def _open(self):
    import datasets as hf  # pylint: disable=g-import-not-at-top  (heavy; only when used)
    if isinstance(self.path, str) and os.path.isdir(self.path):
      data = hf.load_from_disk(self.path)
      if isinstance(data, hf.DatasetDict):
        if self.split not in data:
          raise ValueError(f"{self.where}: {self.path!r} has splits {sorted(data)}, not "
                           f"{self.split!r} (set {self.where}.split)")
        data = data[self.split]
    else:
      files = _files(self.path, self.where)
      fmt = self.format or FORMATS.get(os.path.splitext(files[0])[1].lower())
      if fmt not in FORMATS.values():
        raise ValueError(f"{self.where}.format={self.format!r}: set one of "
                         f"{sorted(set(FORMATS.values()))} for {files[0]!r}")
      data = hf.load_dataset(fmt, data_files={self.split: files}, split=self.split,
                             cache_dir=self.cache_dir)
    if isinstance(data, (hf.IterableDataset, hf.IterableDatasetDict)):
      raise ValueError(f"{self.where}: a streaming dataset cannot be read by position; save it "
                       "with save_to_disk and point path at that folder")
    for name, feature in data.features.items():  # gemb decodes media itself (no torch)
      if getattr(feature, "decode", False) and type(feature).__name__ in ("Image", "Audio",
                                                                          "Video"):
        data = data.cast_column(name, type(feature)(decode=False))
    columns = {path.split("/")[0] for parts in self.parts.values() for _, path in parts}
    missing = sorted(columns - set(data.column_names))
    if missing:
      raise ValueError(f"{self.where}: columns {missing} are not in {self.path!r}; it has "
                       f"{data.column_names}")
    return data

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, index: int) -> dict[str, Any]:
    row = self.dataset[int(index)]
    return datasets.example(self.task, f"{self.where} row {int(index)}", self.parts,
                            lambda modality, path: self._part(modality, path, row))

  def _part(self, modality: str, path: str, row: Mapping[str, Any]):
    value = datasets.field(row, path)
    if value is None:
      raise ValueError("the value is missing (null)")
    if modality == "text":
      if isinstance(value, (list, tuple)):
        if not value:
          raise ValueError("empty list of texts")
        value = value[0]
      feature = self.dataset.features.get(path.split("/")[0])
      if isinstance(value, int) and hasattr(feature, "int2str"):
        return feature.int2str(value)
      return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    if modality == "image":
      return image_lib.load_image(self._file(value)) if self._is_file(value) else np.asarray(
          value, np.uint8)
    if modality == "audio":
      if isinstance(value, Mapping) and value.get("array") is not None:
        wave = audio_lib.to_float_mono(np.asarray(value["array"]))
        rate = int(value.get("sampling_rate") or self.sample_rate)
      elif self._is_file(value):
        wave, rate = audio_lib.load_audio(self._file(value))
      else:
        wave, rate = audio_lib.to_float_mono(np.asarray(value)), self.sample_rate
      return audio_lib.resample(wave, rate, features.RAW_AUDIO_RATE)
    if self._is_file(value):  # video: a path
      source = self._file(value)
      if not isinstance(source, str):
        raise ValueError("video bytes are not supported; store a path to the file")
      return features.load_part({"video": source}, self._fcfg)["video"]
    return np.asarray(value, np.uint8)

  @staticmethod
  def _is_file(value) -> bool:
    return isinstance(value, (str, bytes)) or (isinstance(value, Mapping) and (
        value.get("bytes") is not None or value.get("path")))

  @staticmethod
  def _file(value):
    """A file's path or its bytes (as a file object) from a column value."""
    if isinstance(value, Mapping):
      value = value["bytes"] if value.get("bytes") is not None else value["path"]
    return io.BytesIO(value) if isinstance(value, bytes) else value


class Dataset:
  """Hugging Face datasets for the data registry: a task per `config.data.hf` entry."""

  skipped_lines = 0

  def __init__(self, data_cfg: Mapping[str, Any]):
    self._entries = dict(data_cfg.get("hf") or {})
    self._split = data_cfg["split"]

  def tasks(self) -> list[str]:
    return list(self._entries)

  def task(self, name: str, fcfg, where: str):
    key = f"config.data.hf.{name}"
    if name not in self._entries:
      raise ValueError(f"{where}.{name} reads Hugging Face data but config.data.hf has no entry "
                       f"{name!r}; it has {sorted(self._entries)}")
    entry = dict(self._entries[name])
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
      raise ValueError(f"{key} has unknown keys {unknown}; known: {ENTRY_KEYS}")
    for field in ("path", "query", "positive"):
      if not entry.get(field):
        raise ValueError(f"{key}.{field} is missing")
    source = HfSource(name, entry, self._split, key, fcfg)
    return datasets.Task(source, source.max_parts, None)
