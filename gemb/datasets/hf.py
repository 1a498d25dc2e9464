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
          "streaming": False,                 # True: stream the files, converting nothing
          "shuffle_buffer": 1000,             # streaming: rows shuffled together; 0 = file order
      }}

Columns: text takes a string (bytes as UTF-8; a ClassLabel gives its name, a number its
digits, a list its first); image an `Image` feature, bytes of an image file, a path, or a
uint8 [H, W, C] array; audio an `Audio` feature, bytes or a path of any file libsndfile reads
(WAV, FLAC, OGG, MP3), or {"array", "sampling_rate"}; video a path of a video file or a uint8
[T, H, W, 3] array. Image, audio and video features are read undecoded and decoded by gemb's
own decoders (no torch). Rows are read by index from memory-mapped Arrow (the files converted
once into cache_dir), so a dataset larger than memory trains without being loaded.

With "streaming": True the files are read as they are (`load_dataset(..., streaming=True)`:
no Arrow copy; not for a save_to_disk folder, which is memory-mapped already). The pipeline
then reads the task in stream order (`in_order`): position p is row p mod n of epoch p // n,
an epoch being the files in a seeded order through a seeded `shuffle_buffer`-row shuffle
(config.data.seed, task, epoch), n counted once (parquet: from its metadata; CSV / JSON: one
pass). Each reading thread or worker keeps its own place: it reads forward to the next
position it needs and reopens the stream (skipping at Arrow speed) for an earlier one, so
resuming at step k yields exactly the batches of an unbroken run, at the cost of skipping to
k's position; with several workers or hosts each one reads (and skips) every row, decoding
only its own. A bad record is replaced by one of the next `replacement_window` rows.
"""
from __future__ import annotations

import collections
import glob
import io
import os
import threading
from typing import Any, Mapping

import numpy as np

from gemb import datasets
from gemb.data import audio as audio_lib
from gemb.data import features
from gemb.data import image as image_lib

ENTRY_KEYS = ("path", "format", "split", "query", "positive", "negative", "sample_rate",
              "cache_dir", "streaming", "shuffle_buffer")
SHUFFLE_BUFFER = 1000  # streaming's default shuffle_buffer (HF's own default)
_READ_ROWS = 64        # rows a stream converts to Python at a time
FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json",
           ".jsonl": "json"}


def _files(path, where: str) -> list[str]:
  paths = [path] if isinstance(path, str) else list(path)
  files = sorted(f for p in paths for f in (glob.glob(p) if glob.has_magic(p) else [p]))
  missing = [f for f in files if not os.path.exists(f)]
  if not files or missing:
    raise FileNotFoundError(f"{where}.path={path!r}: no such file(s) {missing or paths}")
  return files


# load_dataset resolves files in a tqdm thread_map, whose class-level lock is not safe when
# several read threads open their streams at once ("'tqdm' object has no attribute '_lock'").
_LOAD_LOCK = threading.Lock()


class HfSource:
  """Random access raw examples of one Hugging Face dataset (picklable: opens it lazily)."""

  streaming = False

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

  def _files(self) -> tuple[list[str], str]:
    """The data files and their format (parquet | arrow | csv | json)."""
    files = _files(self.path, self.where)
    fmt = self.format or FORMATS.get(os.path.splitext(files[0])[1].lower())
    if fmt not in FORMATS.values():
      raise ValueError(f"{self.where}.format={self.format!r}: set one of "
                       f"{sorted(set(FORMATS.values()))} for {files[0]!r}")
    return files, fmt

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
      files, fmt = self._files()
      with _LOAD_LOCK:
        data = hf.load_dataset(fmt, data_files={self.split: files}, split=self.split,
                               cache_dir=self.cache_dir, streaming=self.streaming)
    for name, feature in (data.features or {}).items():  # gemb decodes media itself (no torch)
      if getattr(feature, "decode", False) and type(feature).__name__ in ("Image", "Audio",
                                                                          "Video"):
        data = data.cast_column(name, type(feature)(decode=False))
    have = data.column_names
    if have is None:  # a stream of CSV / JSON knows its columns from its first row
      have = list(next(iter(data.take(1)), {}))
    columns = {path.split("/")[0] for parts in self.parts.values() for _, path in parts}
    missing = sorted(columns - set(have))
    if missing:
      raise ValueError(f"{self.where}: columns {missing} are not in {self.path!r}; it has "
                       f"{have}")
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
      feature = (self.dataset.features or {}).get(path.split("/")[0])
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


class HfStream(HfSource):
  """Raw examples of local files streamed in order: position p is row p mod n of epoch p // n's
  seeded shuffle (module docstring). Picklable; each thread reads from its own open stream."""

  streaming = True
  in_order = True          # the pipeline reads positions as they are (no shuffle of its own)
  replacement_window = 16  # the pipeline replaces a bad record by one of the next this many

  def __init__(self, task: str, entry: Mapping[str, Any], split: str, where: str,
               fcfg: features.FeatureConfig, seed: int):
    super().__init__(task, entry, split, where, fcfg)
    if isinstance(self.path, str) and os.path.isdir(self.path):
      raise ValueError(f"{where}.streaming: {self.path!r} is a folder (save_to_disk), which is "
                       "read by position from memory-mapped Arrow already; drop streaming")
    buffer = entry.get("shuffle_buffer")
    self.shuffle_buffer = SHUFFLE_BUFFER if buffer is None else int(buffer)
    if self.shuffle_buffer < 0:
      raise ValueError(f"{where}.shuffle_buffer={self.shuffle_buffer}: rows shuffled together, "
                       ">= 0 (0: file order)")
    self.seed = seed
    self._num_rows = None
    self._local = threading.local()

  def __getstate__(self):
    return {**super().__getstate__(), "_local": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __len__(self) -> int:
    """Rows in one epoch: parquet metadata, or one pass over a CSV / JSON stream (cached)."""
    if self._num_rows is None:
      files, fmt = self._files()
      if fmt == "parquet":
        import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
        self._num_rows = sum(pq.read_metadata(f).num_rows for f in files)
      else:
        self._num_rows = sum(table.num_rows for table in
                             self.dataset.with_format("arrow").iter(batch_size=65536))
    return self._num_rows

  def __getitem__(self, position: int) -> dict[str, Any]:
    position = int(position)
    row = self._row(position)
    epoch, offset = divmod(position, len(self))
    origin = (f"{self.where} epoch {epoch} record {offset}" if self.shuffle_buffer
              else f"{self.where} row {offset}")
    return datasets.example(self.task, origin, self.parts,
                            lambda modality, path: self._part(modality, path, row))

  def _row(self, position: int) -> dict[str, Any]:
    """The row at `position`: kept, read forward to, or read after reopening the stream."""
    n = len(self)
    cursor = getattr(self._local, "cursor", None)
    if cursor is not None and cursor.position - len(cursor.kept) <= position < cursor.position:
      return cursor.kept[position - cursor.position]
    if (cursor is None or position < cursor.position
        or position // n != cursor.position // n):  # earlier, or a later epoch: reopen
      cursor = self._local.cursor = _Cursor(position, *self._rows(position))
    while cursor.position <= position:
      if cursor.position == cursor.end:  # the epoch ended: the next one from its start
        cursor.rows, cursor.end = self._rows(cursor.position)
      row = next(cursor.rows, None)
      if row is None:
        raise ValueError(f"{self.where}: the stream of {self.path!r} ended before row "
                         f"{cursor.position % n} of {n}; did the files change while training?")
      cursor.kept.append(row)
      cursor.position += 1
    return cursor.kept[-1]

  def _rows(self, position: int):
    """(rows from `position` to the end of its epoch, that end's position) from a new stream."""
    if getattr(self._local, "dataset", None) is None:  # its own: iteration state is not shared
      self._local.dataset = self._open()
    n = len(self)
    epoch, offset = divmod(position, n)
    data = self._local.dataset
    # One file at a time fills the buffer: HF's interleaving of several runs reader threads and
    # sleeps seconds when closed, i.e. on every reopen.
    if self.shuffle_buffer:
      seed = features.key_id((self.seed, "shuffle", self.task, epoch))
      data = data.shuffle(seed=seed, buffer_size=self.shuffle_buffer, max_buffer_input_shards=1)
    tables = data.with_format("arrow").skip(offset).iter(batch_size=_READ_ROWS)
    return (row for table in tables for row in table.to_pylist()), (epoch + 1) * n


class _Cursor:
  """One thread's place in a stream: the next position it yields and the rows just before it."""

  def __init__(self, position: int, rows, end: int):
    self.position, self.rows, self.end = position, rows, end
    self.kept = collections.deque(maxlen=4 * HfStream.replacement_window)


class Dataset:
  """Hugging Face datasets for the data registry: a task per `config.data.hf` entry."""

  skipped_lines = 0

  def __init__(self, data_cfg: Mapping[str, Any]):
    self._entries = dict(data_cfg.get("hf") or {})
    self._split = data_cfg["split"]
    self._seed = int(data_cfg.get("seed") or 0)

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
    if entry.get("streaming"):
      source = HfStream(name, entry, self._split, key, fcfg, self._seed)
    elif entry.get("shuffle_buffer") is not None:
      raise ValueError(f"{key}.shuffle_buffer shuffles a stream: set {key}.streaming=True or "
                       "drop it (the pipeline shuffles a random access dataset itself)")
    else:
      source = HfSource(name, entry, self._split, key, fcfg)
    return datasets.Task(source, source.max_parts, None)
