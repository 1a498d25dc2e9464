"""Raw parts -> featurised parts, with errors that name the record and field.

A raw part (data contract) is {"text": str}, {"image": uint8[H, W, 3]}, {"audio": float32[N]
at 16 kHz} or {"video": uint8[T, H, W, 3]}; image/audio/video may also be a file path, which
`load_part` decodes (relative paths against a root folder, e.g. the manifest's). Featurised
parts are what gemb/data/packing.py packs:

  text   int32[L]              token ids, L <= max_text_tokens
  image  float32[h, w, 3]      resized to fit max_image_size, sides multiples of patch_size
  audio  float32[F, n_mels]    log-mel, F <= max_audio_frames (see gemb/data/audio.py)
  video  float32[T, Hv, Wv, 3] T <= max_video_frames frames at video_fps, (Hv, Wv) = video_size

Every number comes from config.model through `FeatureConfig.from_config`. Limits: a text,
audio or video over its limit is cut to it when `truncate` is on (config.data.truncate), else
it is a BadRecordError.

`pack_raw_inputs` featurises and packs any list of raw inputs into one side: the evaluation
suite and the embedding API call it with arbitrary inputs.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from gemb.data import audio as audio_lib
from gemb.data import image as image_lib
from gemb.data import packing
from gemb.data import tokenizer as tokenizer_lib
from gemb.data import video as video_lib

RAW_AUDIO_RATE = 16000  # the data contract's rate for in-memory waveforms
SIDES = ("query", "positive", "negative")  # the inputs of an example; negative is optional
TASK_STRING_FORMAT = "task: {task_string} | query: {text}"


class BadRecordError(ValueError):
  """A record cannot be read or featurised; the message names the record and the field."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """Everything featurisation needs. Limits are required; the rest has documented defaults."""

  max_text_tokens: int
  max_image_size: tuple[int, int]
  patch_size: int
  n_mels: int
  max_audio_frames: int
  max_video_frames: int
  video_size: tuple[int, int]
  vocab_size: int
  tokenizer: str = "bytes"         # "bytes" or a SentencePiece .model path
  image_mean: float = 0.5          # pixels -> (x / 255 - mean) / std, i.e. [-1, 1]
  image_std: float = 0.5
  sample_rate: int = 16000         # audio is resampled to this rate before the log-mel
  audio_window_ms: float = 25.0
  audio_hop_ms: float = 10.0
  audio_n_fft: int = 512
  audio_fmin: float = 0.0
  audio_fmax: float = 8000.0
  audio_log_floor: float = 1e-5
  audio_mean: float = 0.0          # log-mels -> (x - mean) / std; set your data's statistics
  audio_std: float = 1.0
  video_fps: float = 8.0           # frames are sampled at this rate from timed files
  truncate: bool = True            # cut over-long text/audio/video to the limits, else error

  @classmethod
  def from_config(cls, model_cfg: Mapping[str, Any], truncate: bool = True) -> "FeatureConfig":
    """Reads the fields above from config.model (missing limits are an error)."""
    model_cfg = dict(model_cfg)
    kwargs = {"truncate": truncate}
    for f in dataclasses.fields(cls):
      if f.name == "truncate":
        continue
      if f.name in model_cfg:
        value = model_cfg[f.name]
        kwargs[f.name] = tuple(value) if isinstance(value, (list, tuple)) else value
      elif f.default is dataclasses.MISSING:
        raise ValueError(f"config.model.{f.name} is missing; featurisation needs it "
                         "(see configs/common.py)")
    return cls(**kwargs)

  def layout(self, max_parts: Mapping[str, int]) -> packing.Layout:
    """The packing layout for a side with `max_parts` parts per modality."""
    return packing.Layout.from_config(
        {**dataclasses.asdict(self), "truncate_text": self.truncate}, max_parts)

  @property
  def text_tokenizer(self):
    return _tokenizer(self.tokenizer, self.vocab_size, self.max_text_tokens)


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str, vocab_size: int, max_length: int):
  return tokenizer_lib.make_tokenizer(name, vocab_size, max_length)


def modality_of(part: Mapping[str, Any]) -> str:
  """The one modality key of a part; ValueError if the part is not a one-key modality dict."""
  if not isinstance(part, Mapping) or len(part) != 1:
    keys = sorted(part) if isinstance(part, Mapping) else type(part).__name__
    raise ValueError(f"a part is a dict with exactly one of the keys {packing.MODALITIES}, "
                     f"got {keys}")
  (modality,) = part
  if modality not in packing.MODALITIES:
    raise ValueError(f"unknown modality {modality!r}; known: {packing.MODALITIES}")
  return modality


def load_part(part: Mapping[str, Any], cfg: FeatureConfig, root: str = "") -> dict[str, Any]:
  """Decodes a part that holds a file path into the raw array form; others pass through.

  Raises ValueError / OSError (file missing, corrupt) with the path in the message.
  """
  modality = modality_of(part)
  value = part[modality]
  if modality == "text":
    if not isinstance(value, str):
      raise ValueError(f"text must be a string, got {type(value).__name__}")
    return {"text": value}
  if not isinstance(value, (str, os.PathLike)):
    return {modality: value}
  path = os.path.join(root, os.fspath(value))
  if not os.path.exists(path):
    raise FileNotFoundError(f"{modality} file {path!r} does not exist")
  try:
    if modality == "image":
      return {"image": image_lib.load_image(path)}
    if modality == "audio":
      wave, rate = audio_lib.load_audio(path)
      return {"audio": audio_lib.resample(wave, rate, RAW_AUDIO_RATE)}
    # One frame more than the limit lets `featurise_part` see that a clip is too long.
    return {"video": video_lib.load_video(path, cfg.video_fps, cfg.max_video_frames + 1)}
  except Exception as e:  # decoders raise many types; keep the cause, name the file
    raise ValueError(f"cannot decode {modality} file {path!r}: {type(e).__name__}: {e}") from e


def featurise_part(part: Mapping[str, Any], cfg: FeatureConfig) -> dict[str, np.ndarray]:
  """One raw part (arrays, not paths) -> one featurised part. Raises ValueError when unusable."""
  modality = modality_of(part)
  value = part[modality]
  if modality == "text":
    if not isinstance(value, str):
      raise ValueError(f"text must be a string, got {type(value).__name__}")
    ids = cfg.text_tokenizer.encode(value)
    if ids.size == 0:
      raise ValueError("empty text")
    if ids.size > cfg.max_text_tokens:
      if not cfg.truncate:
        raise ValueError(f"text has {ids.size} tokens > config.model.max_text_tokens="
                         f"{cfg.max_text_tokens} (set config.data.truncate=True to cut it)")
      ids = ids[:cfg.max_text_tokens]
    return {"text": ids}
  if modality == "image":
    return {"image": image_lib.featurise_image(value, cfg.max_image_size, cfg.patch_size,
                                               cfg.image_mean, cfg.image_std)}
  if modality == "audio":
    wave = np.asarray(value)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.floating):
      raise ValueError(f"audio must be a float waveform [N], got {wave.dtype}{list(wave.shape)}")
    if wave.size == 0:
      raise ValueError("empty audio (no samples)")
    if not np.isfinite(wave).all():
      raise ValueError("audio has NaN or infinite samples")
    wave = audio_lib.resample(wave.astype(np.float32), RAW_AUDIO_RATE, cfg.sample_rate)
    limit = audio_lib.max_samples(cfg.max_audio_frames, cfg.sample_rate, cfg.audio_window_ms,
                                  cfg.audio_hop_ms)
    if wave.size > limit:
      if not cfg.truncate:
        raise ValueError(f"audio is {wave.size / cfg.sample_rate:.3f} s long, more than "
                         f"config.model.max_audio_frames={cfg.max_audio_frames} frames "
                         f"({limit / cfg.sample_rate:.3f} s; set config.data.truncate=True "
                         "to cut it)")
      wave = wave[:limit]
    mels = audio_lib.log_mel(
        wave, cfg.sample_rate, cfg.n_mels, cfg.audio_window_ms, cfg.audio_hop_ms,
        cfg.audio_n_fft, cfg.audio_fmin, cfg.audio_fmax, cfg.audio_log_floor)
    return {"audio": ((mels - cfg.audio_mean) / cfg.audio_std).astype(np.float32)}
  video = np.asarray(value)
  if video.ndim == 4 and video.shape[0] > cfg.max_video_frames:
    if not cfg.truncate:
      raise ValueError(f"video has more than config.model.max_video_frames="
                       f"{cfg.max_video_frames} frames (set config.data.truncate=True to cut it)")
    video = video[:cfg.max_video_frames]
  return {"video": video_lib.featurise_video(video, cfg.video_size, cfg.image_mean,
                                             cfg.image_std)}


def featurise_input(parts: Sequence[Mapping[str, Any]], cfg: FeatureConfig, where: str,
                    root: str = "") -> list[dict[str, np.ndarray]]:
  """Loads and featurises every part; errors become BadRecordError naming `where[i].modality`."""
  if not isinstance(parts, (list, tuple)) or not parts:
    raise BadRecordError(f"{where}: an input is a non-empty list of parts, got {parts!r:.80}")
  out = []
  for i, part in enumerate(parts):
    field = f"{where}[{i}]"
    try:
      field = f"{where}[{i}].{modality_of(part)}"
      out.append(featurise_part(load_part(part, cfg, root), cfg))
    except (ValueError, OSError) as e:
      raise BadRecordError(f"{field}: {e}") from e
  return out


def with_task_string(parts: Sequence[Mapping[str, Any]], task_string: str) -> list[dict]:
  """Prefixes the first text part with TASK_STRING_FORMAT; inputs without text are unchanged."""
  parts = [dict(p) for p in parts]
  for p in parts:
    if "text" in p and isinstance(p["text"], str):
      p["text"] = TASK_STRING_FORMAT.format(task_string=task_string, text=p["text"])
      break
  return parts


def _digest(chunks: Sequence[bytes]) -> int:
  h = hashlib.blake2b(digest_size=4)
  for c in chunks:
    h.update(len(c).to_bytes(8, "little"))
    h.update(c)
  return int.from_bytes(h.digest(), "little") & 0x7FFFFFFF  # non-negative int32


def key_id(key: Any) -> int:
  """Stable non-negative int32 id of a hashable identity key (e.g. ToyWorld's query_key).

  repr() of tuples of str/int/float is stable across processes, unlike hash() of str.
  """
  return _digest([b"key", repr(key).encode("utf-8")])


def content_id(parts: Sequence[Mapping[str, Any]]) -> int:
  """Stable non-negative int32 id of raw parts (arrays or text): equal content, equal id."""
  chunks = []
  for part in parts:
    modality = modality_of(part)
    value = part[modality]
    chunks.append(modality.encode())
    if isinstance(value, str):
      chunks.append(value.encode("utf-8"))
    else:
      value = np.ascontiguousarray(value)
      chunks += [f"{value.dtype.str}{value.shape}".encode(), value.tobytes()]
  return _digest(chunks)


def example_ids(raw: Mapping[str, Any]) -> tuple[int, int]:
  """(query id, positive id) of a raw example, the ids its batch rows carry: the key's id when
  the example has identity keys (ToyWorld, manifests with keys), else its content's."""
  query = key_id(raw["query_key"]) if "query_key" in raw else content_id(raw["query"])
  positive = (key_id(raw["positive_key"]) if "positive_key" in raw
              else content_id(raw["positive"]))
  return query, positive


def count_modalities(modalities: Iterable[str]) -> dict[str, int]:
  """("text", "image", "text") -> {"text": 2, "image": 1}: parts per modality of one input."""
  counts: dict[str, int] = {}
  for m in modalities:
    counts[m] = counts.get(m, 0) + 1
  return counts


def max_parts_of(inputs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, int]:
  """Per modality, the largest number of parts any one input has."""
  counts: dict[str, int] = {}
  for parts in inputs:
    for m, n in count_modalities(modality_of(p) for p in parts).items():
      counts[m] = max(counts.get(m, 0), n)
  return counts


def pack_raw_inputs(inputs: Sequence[Sequence[Mapping[str, Any]]], model_cfg: Mapping[str, Any],
                    *, task_string: str | None = None, truncate: bool = True,
                    max_parts: Mapping[str, int] | None = None,
                    root: str = "") -> dict[str, np.ndarray]:
  """Featurises and packs B raw inputs (lists of raw parts) into one side for config.model.

  Args:
    inputs: B inputs; parts hold arrays, text, or file paths (relative to `root`).
    model_cfg: config.model (limits, tokenizer).
    task_string: if given, the first text part of each input gets TASK_STRING_FORMAT.
    truncate: cut over-long text/audio/video to the limits instead of raising.
    max_parts: the layout's parts per modality; default: the most any input has, so inputs
      with the same modalities always get the same shapes.
  Returns:
    A packed side (see gemb/data/packing.py).
  Raises:
    BadRecordError naming "input b[i].modality".
  """
  cfg = FeatureConfig.from_config(model_cfg, truncate=truncate)
  if task_string is not None:
    inputs = [with_task_string(parts, task_string) for parts in inputs]
  featurised = [featurise_input(parts, cfg, f"input {b}", root) for b, parts in enumerate(inputs)]
  layout = cfg.layout(max_parts if max_parts is not None else max_parts_of(inputs))
  return packing.pack_inputs(featurised, layout, names=[f"input {b}" for b in range(len(inputs))])
