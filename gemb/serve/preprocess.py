"""Raw inputs -> featurised parts for a serving bundle, checked against the bundle's limits.

An input is a list of parts, each a one-key dict (gemb/data/features.py does the featurising):

  {"text": str}
  {"image": uint8[H, W, 3] | file path}            PNG/JPEG/... decoded with Pillow
  {"audio": float32[N] at 16 kHz | .wav path}
  {"video": uint8[T, H, W, 3] | .npy/.gif path | folder of frames}

Over JSON (gemb/serve/service.py) an array is a nested list, or {"b64": base64 of the raw
little-endian bytes, "dtype": "uint8", "shape": [H, W, 3]}, or an encoded file
{"file_b64": base64 of the file, "format": "png"}. File paths are only read when the caller
allows it (the Python API does; the HTTP service does not).

Every problem is an `InputError` whose `field` names the place, e.g. "inputs[3][1].image".
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from gemb.data import features

RAW_DTYPES = {"image": np.uint8, "video": np.uint8, "audio": np.float32}
FILE_FORMATS = {"image": ("png", "jpeg", "jpg", "gif", "bmp", "webp"), "audio": ("wav",),
                "video": ("gif", "npy")}


class InputError(ValueError):
  """A request or input the bundle cannot embed; `field` names where (e.g. 'inputs[0][1].image')."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field, self.message = field, message


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one input may hold (the bundle manifest's "limits")."""

  max_parts: int           # parts per input
  max_text_tokens: int     # tokens per text part
  max_image_pixels: int    # raw H * W of an image or of one video frame, before resizing
  max_audio_seconds: float # length of an audio part
  max_video_frames: int    # frames of a video part
  max_seq_len: int         # encoder tokens of one input (parts x tokens per part)
  max_inputs_per_request: int
  max_request_bytes: int

  @classmethod
  def from_manifest(cls, limits: Mapping[str, Any]) -> "Limits":
    return cls(**{f.name: limits[f.name] for f in dataclasses.fields(cls)})


def decode_array(value: Any, modality: str, field: str) -> Any:
  """A JSON value of an image/audio/video part -> a numpy array (or an encoded-file dict)."""
  dtype = RAW_DTYPES[modality]
  if isinstance(value, Mapping):
    if "file_b64" in value:
      return value
    if set(value) != {"b64", "dtype", "shape"}:
      raise InputError(field, f"an encoded array has keys 'b64', 'dtype', 'shape' (or "
                              f"'file_b64', 'format'), got {sorted(value)}")
    try:
      data = base64.b64decode(value["b64"], validate=True)
      array = np.frombuffer(data, np.dtype(value["dtype"]).newbyteorder("<"))
      return array.reshape([int(s) for s in value["shape"]]).astype(dtype)
    except (binascii.Error, TypeError, ValueError) as e:
      raise InputError(field, f"cannot decode the base64 array: {e}") from e
  if isinstance(value, list):
    try:
      array = np.asarray(value)
    except ValueError as e:
      raise InputError(field, f"the nested list is not a rectangular array: {e}") from e
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.size == 0):
      raise InputError(field, "the nested list must hold only numbers")
    if dtype == np.uint8 and array.size and (not np.issubdtype(array.dtype, np.integer) or
                                             array.min() < 0 or array.max() > 255):
      raise InputError(field, f"{modality} pixels must be integers in [0, 255]")
    return array.astype(dtype)
  raise InputError(field, f"{modality} must be a nested list of numbers or an encoded array, "
                          f"got {type(value).__name__}")


def _decode_file_bytes(value: Mapping[str, Any], modality: str, cfg: features.FeatureConfig,
                       field: str) -> dict:
  """{"file_b64": ..., "format": ...} -> the raw part, decoded by gemb.data's file readers."""
  fmt = str(value.get("format", "")).lower()
  if fmt not in FILE_FORMATS[modality]:
    raise InputError(field, f"format {fmt!r} is not one of {FILE_FORMATS[modality]} for "
                            f"{modality} files")
  try:
    data = base64.b64decode(value["file_b64"], validate=True)
  except (binascii.Error, TypeError) as e:
    raise InputError(field, f"file_b64 is not base64: {e}") from e
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, f"part.{fmt}")
    with open(path, "wb") as f:
      f.write(data)
    try:
      return features.load_part({modality: path}, cfg)
    except (ValueError, OSError) as e:
      raise InputError(field, str(e).replace(path, f"the {fmt} file")) from e


def _check_raw(part: Mapping[str, Any], cfg: features.FeatureConfig, limits: Limits,
               field: str) -> None:
  """The limits, checked on a raw part (featurisation resizes images and, when cfg.truncate,
  cuts long text, audio and video)."""
  (modality, value), = part.items()
  if modality == "text":
    tokens = cfg.text_tokenizer.encode(value).size
    if tokens > limits.max_text_tokens and not cfg.truncate:
      raise InputError(field, f"{tokens} tokens > limit max_text_tokens="
                              f"{limits.max_text_tokens} (or ask for truncation)")
    return
  shape = np.shape(value)
  if modality in ("image", "video") and len(shape) >= 3:
    pixels = int(np.prod(shape[-3:-1]))
    if pixels > limits.max_image_pixels:
      raise InputError(field, f"{shape[-3]}x{shape[-2]} = {pixels} pixels > limit "
                              f"max_image_pixels={limits.max_image_pixels}")
  if modality == "video" and len(shape) == 4 and shape[0] > limits.max_video_frames and (
      not cfg.truncate):
    raise InputError(field, f"{shape[0]} frames > limit max_video_frames="
                            f"{limits.max_video_frames} (or ask for truncation)")
  if modality == "audio" and len(shape) == 1 and not cfg.truncate:
    seconds = shape[0] / features.RAW_AUDIO_RATE
    if seconds > limits.max_audio_seconds:
      raise InputError(field, f"{seconds:.3f} s > limit max_audio_seconds="
                              f"{limits.max_audio_seconds:.3f} (or ask for truncation)")


def featurise_inputs(inputs: Any, cfg: features.FeatureConfig, limits: Limits,
                     tokens_per_part: Mapping[str, int], *, task_string: str | None = None,
                     from_json: bool = False, allow_files: bool = True, where: str = "inputs"
                     ) -> list[list[dict[str, np.ndarray]]]:
  """Checks and featurises a batch of raw inputs.

  Args:
    inputs: a list of inputs, each a non-empty list of one-key part dicts.
    cfg: the bundle's featurisation settings (its `truncate` decides over-long text/audio/video).
    limits: the bundle's limits.
    tokens_per_part: encoder tokens of one part slot per modality (the bundle's layout); a
      modality missing from it cannot be served.
    task_string: prefixed to each input's first text part (features.TASK_STRING_FORMAT).
    from_json: part values are JSON values (nested lists / encoded arrays).
    allow_files: whether a string value of an image/audio/video part may name a file.
  Raises:
    InputError naming the field.
  """
  if not isinstance(inputs, (list, tuple)) or not inputs:
    raise InputError(where, "must be a non-empty list of inputs (each a list of parts)")
  out = []
  for b, parts in enumerate(inputs):
    field = f"{where}[{b}]"
    if not isinstance(parts, (list, tuple)) or not parts:
      raise InputError(field, "an input is a non-empty list of parts, e.g. [{\"text\": \"...\"}]")
    if len(parts) > limits.max_parts:
      raise InputError(field, f"{len(parts)} parts > limit max_parts={limits.max_parts}")
    raw_parts, tokens = [], 0
    for i, part in enumerate(parts):
      part_field = f"{field}[{i}]"
      if not isinstance(part, Mapping) or len(part) != 1:
        keys = sorted(part) if isinstance(part, Mapping) else type(part).__name__
        raise InputError(part_field, f"a part is an object with exactly one of the keys "
                                     f"{sorted(tokens_per_part)}, got {keys}")
      (modality, value), = part.items()
      part_field = f"{part_field}.{modality}"
      if modality not in tokens_per_part:
        raise InputError(part_field, f"unknown modality {modality!r}; this bundle embeds "
                                     f"{sorted(tokens_per_part)}")
      tokens += tokens_per_part[modality]
      if modality == "text":
        if not isinstance(value, str):
          raise InputError(part_field, f"text must be a string, got {type(value).__name__}")
      elif isinstance(value, (str, os.PathLike)):
        if not allow_files:
          raise InputError(part_field, "file paths are not accepted here; send the array (nested "
                                       "list or {b64, dtype, shape}) or {file_b64, format}")
      elif from_json:
        value = decode_array(value, modality, part_field)
        if isinstance(value, Mapping):
          value = _decode_file_bytes(value, modality, cfg, part_field)[modality]
      raw_parts.append({modality: value})
    if tokens > limits.max_seq_len:
      raise InputError(field, f"its parts make {tokens} encoder tokens > limit max_seq_len="
                              f"{limits.max_seq_len} (tokens per part: {dict(tokens_per_part)})")
    if task_string is not None:
      raw_parts = features.with_task_string(raw_parts, task_string)
    featurised = []
    for i, part in enumerate(raw_parts):
      part_field = f"{field}[{i}].{features.modality_of(part)}"
      try:
        raw = features.load_part(part, cfg)
        _check_raw(raw, cfg, limits, part_field)
        featurised.append(features.featurise_part(raw, cfg))
      except InputError:
        raise
      except (ValueError, OSError) as e:
        raise InputError(part_field, str(e)) from e
    out.append(featurised)
  return out


def featurise_token_ids(ids: Any, cfg: features.FeatureConfig, limits: Limits,
                        field: str) -> dict[str, np.ndarray]:
  """A text part given as token ids of the bundle's tokenizer (what `cfg.text_tokenizer.encode`
  returns) -> the featurised part, checked and cut like a text part."""
  if not isinstance(ids, list) or not ids:
    raise InputError(field, "a token array is a non-empty list of token ids")
  if any(type(i) is not int for i in ids):  # bool is an int; a token id is not
    raise InputError(field, "token ids must be integers")
  vocab_size = cfg.text_tokenizer.vocab_size
  bad = next((i for i in ids if not 0 < i < vocab_size), None)
  if bad is not None:
    raise InputError(field, f"token id {bad} is not in [1, {vocab_size}): token arrays are ids "
                            f"of this model's tokenizer ({cfg.tokenizer!r}), not another's (e.g. "
                            "tiktoken's); send strings instead")
  if len(ids) > limits.max_text_tokens and not cfg.truncate:
    raise InputError(field, f"{len(ids)} tokens > limit max_text_tokens={limits.max_text_tokens} "
                            "(or ask for truncation)")
  return {"text": np.asarray(ids[:limits.max_text_tokens], np.int32)}


def check_inputs_per_request(inputs: Sequence, limits: Limits) -> None:
  if isinstance(inputs, (list, tuple)) and len(inputs) > limits.max_inputs_per_request:
    raise InputError("inputs", f"{len(inputs)} inputs > limit max_inputs_per_request="
                               f"{limits.max_inputs_per_request}")
