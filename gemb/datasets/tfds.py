"""Any TFDS dataset as a gemb task: features mapped to parts by config.

  config.data.tfds = {
      "mnist_classes": {                       # the task name (a mixture entry)
          "name": "mnist",                     # TFDS name (with optional :version / config)
          "split": "train",                    # default: config.data.split
          "data_dir": "",                      # default: TFDS's own (~/tensorflow_datasets)
          "query": "image:image",              # parts, comma-separated "modality:feature/path"
          "positive": "text:label",
          "negative": "",                      # optional
          "sample_rate": 16000,                # audio features' rate if the feature has none
      }}

The dataset is read through `tfds.data_source` (array_record files: random access, no
TensorFlow needed for prepared datasets; prepare them once with `tfds build` or
`tfds.builder(name).download_and_prepare(file_format="array_record")`). A feature path walks
nested features with "/". Text parts take a string, bytes (UTF-8), a ClassLabel (its name) or
a number; a sequence of texts gives its first. Image: uint8 [H, W, C] (grey and RGBA are
converted). Audio: int or float [N] / [N, C] at the feature's sample rate. Video: uint8
[T, H, W, 3], taken to be at the model's video_fps.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from gemb import datasets
from gemb.data import audio as audio_lib
from gemb.data import features

ENTRY_KEYS = ("name", "split", "data_dir", "query", "positive", "negative", "sample_rate")


class TfdsSource:
  """Random access raw examples of one TFDS split (picklable: opens the data lazily)."""

  def __init__(self, task: str, name: str, split: str, parts: Mapping[str, list[tuple[str, str]]],
               data_dir: str | None = None, sample_rate: int = features.RAW_AUDIO_RATE):
    self.task, self.name, self.split, self.data_dir = task, name, split, data_dir or None
    self.parts = dict(parts)
    self.sample_rate = sample_rate
    self._source = None
    self.max_parts = {side: features.count_modalities(m for m, _ in p)
                      for side, p in self.parts.items()}

  @classmethod
  def from_config(cls, task: str, entry: Mapping[str, Any], split: str) -> "TfdsSource":
    """From a config.data.tfds[task] entry (module docstring)."""
    where = f"config.data.tfds.{task}"
    entry = dict(entry)
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
      raise ValueError(f"{where} has unknown keys {unknown}; known: {ENTRY_KEYS}")
    for key in ("name", "query", "positive"):
      if not entry.get(key):
        raise ValueError(f"{where}.{key} is missing")
    parts = {side: datasets.parse_parts(entry[side], f"{where}.{side}")
             for side in features.SIDES if entry.get(side)}
    return cls(task, entry["name"], entry.get("split") or split, parts, entry.get("data_dir"),
               int(entry.get("sample_rate", features.RAW_AUDIO_RATE)))

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  @property
  def source(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow, optional)
      self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir)
    return self._source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.source[int(index)]
    return datasets.example(self.task, f"tfds {self.name}/{self.split} #{index}", self.parts,
                            lambda modality, path: self._part(modality, path, record))

  def _feature(self, path: str):
    feature = self.source.dataset_info.features
    for key in path.split("/"):
      feature = feature[key] if hasattr(feature, "keys") and key in feature.keys() else None
      if feature is None:
        return None
    return feature

  def _part(self, modality: str, path: str, record: Mapping[str, Any]):
    value = datasets.field(record, path)
    if modality == "text":
      feature = self._feature(path)
      value = np.asarray(value)
      if value.ndim > 0:  # a sequence of texts: its first
        if value.size == 0:
          raise ValueError("empty sequence of texts")
        value = value.reshape(-1)[0]
      value = value.item() if isinstance(value, (np.ndarray, np.generic)) else value
      if isinstance(value, bytes):
        return value.decode("utf-8")
      if hasattr(feature, "int2str"):
        return feature.int2str(int(value))
      return str(value)
    if modality == "audio":
      rate = getattr(self._feature(path), "sample_rate", None) or self.sample_rate
      return audio_lib.resample(audio_lib.to_float_mono(value), int(rate), features.RAW_AUDIO_RATE)
    return np.asarray(value)



class Dataset:
  """TFDS for the data registry: a task per `config.data.tfds` entry (module docstring)."""

  skipped_lines = 0

  def __init__(self, data_cfg: Mapping[str, Any]):
    self._entries = dict(data_cfg["tfds"] or {})
    self._split = data_cfg["split"]

  def tasks(self) -> list[str]:
    return list(self._entries)

  def task(self, name: str, fcfg, where: str):
    if name not in self._entries:
      raise ValueError(f"{where}.{name} reads TFDS but config.data.tfds has no entry {name!r}; "
                       f"it has {sorted(self._entries)}")
    source = TfdsSource.from_config(name, self._entries[name], self._split)
    return datasets.Task(source, source.max_parts, None)
