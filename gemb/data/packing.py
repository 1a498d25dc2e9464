"""Pack inputs (lists of featurised parts) into static-shape arrays, one set per modality.

An input is an ordered list of parts, each of one modality. After featurisation a part is a
dict with exactly one key:

  {"text":  int32[L]}            token ids (0 is padding, never a real token)
  {"image": float32[H, W, 3]}    normalised pixels; H and W multiples of the patch size
  {"audio": float32[F, M]}       log-mel frames (F frames, M mel bins)
  {"video": float32[T, H, W, 3]} normalised frames at the configured video size

`pack_inputs` turns a batch of B inputs into a "side" (the query side, the positive side, ...):

  text_tokens  int32   [B, Pt, Lt]              0 = padding
  text_part    int32   [B, Pt]                  index of the part in its input, -1 = no part
  image        float32 [B, Pi, Hmax, Wmax, 3]   zero-padded bottom/right
  image_hw     int32   [B, Pi, 2]               real (height, width) in pixels
  image_part   int32   [B, Pi]
  audio        float32 [B, Pa, Fmax, M]         zero-padded in time
  audio_frames int32   [B, Pa]                  real number of frames
  audio_part   int32   [B, Pa]
  video        float32 [B, Pv, Tmax, Hv, Wv, 3] zero-padded in time
  video_frames int32   [B, Pv]                  real number of frames
  video_part   int32   [B, Pv]

A modality whose `max_parts` is 0 in the layout is left out of the side, so a text-only side
compiles to a text-only encoder call. The model embeds a part index (`*_part`) with each
token, so the order of parts is part of the input even though tokens are stored by modality:
under bidirectional attention and mean pooling, that is the same as one sequence in input order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

MODALITIES = ("text", "image", "audio", "video")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static shapes of one packed side. Every number comes from the config."""

  max_parts: Mapping[str, int]  # modality -> parts per input (0 leaves the modality out)
  max_text_tokens: int = 64
  max_image_size: tuple[int, int] = (64, 64)  # (Hmax, Wmax) in pixels
  max_audio_frames: int = 64
  n_mels: int = 32
  max_video_frames: int = 8
  video_size: tuple[int, int] = (32, 32)
  patch_size: int = 8
  truncate_text: bool = True  # False: a text over max_text_tokens is an error

  def __post_init__(self):
    unknown = set(self.max_parts) - set(MODALITIES)
    if unknown:
      raise ValueError(f"Layout.max_parts has unknown modalities {sorted(unknown)}; "
                       f"known: {MODALITIES}")
    if sum(self.max_parts.values()) == 0:
      raise ValueError("Layout.max_parts allows no parts at all")

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any], max_parts: Mapping[str, int]) -> "Layout":
    """Builds a layout from a `config.data.limits`-style mapping plus per-side part counts."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"max_parts"}
    kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
              for k, v in dict(cfg).items() if k in fields}
    return cls(max_parts=dict(max_parts), **kwargs)


class PackingError(ValueError):
  """An input does not fit the layout; the message names the input and part."""


def _shape_error(where: str, what: str) -> PackingError:
  return PackingError(f"{where}: {what}")


def pack_inputs(inputs: Sequence[Sequence[Mapping[str, np.ndarray]]], layout: Layout,
                names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Packs B featurised inputs into one side (see the module docstring for the arrays).

  Args:
    inputs: B inputs, each a non-empty list of single-key part dicts.
    layout: the static shapes.
    names: optional B labels used in error messages (e.g. "manifest.jsonl:12 query").
  Raises:
    PackingError naming the input and part that is empty, of an unknown modality, of the
    wrong shape, or over a limit.
  """
  batch = len(inputs)
  if batch == 0:
    raise PackingError("pack_inputs got an empty batch")
  names = list(names) if names is not None else [f"input {b}" for b in range(batch)]
  p = layout.patch_size
  hmax, wmax = layout.max_image_size
  hv, wv = layout.video_size
  present = [m for m in MODALITIES if layout.max_parts.get(m, 0) > 0]
  side: dict[str, np.ndarray] = {}
  for m in present:
    n = layout.max_parts[m]
    side[f"{m}_part"] = np.full((batch, n), -1, np.int32)
  if "text" in present:
    side["text_tokens"] = np.zeros((batch, layout.max_parts["text"], layout.max_text_tokens),
                                   np.int32)
  if "image" in present:
    side["image"] = np.zeros((batch, layout.max_parts["image"], hmax, wmax, 3), np.float32)
    side["image_hw"] = np.zeros((batch, layout.max_parts["image"], 2), np.int32)
  if "audio" in present:
    side["audio"] = np.zeros((batch, layout.max_parts["audio"], layout.max_audio_frames,
                              layout.n_mels), np.float32)
    side["audio_frames"] = np.zeros((batch, layout.max_parts["audio"]), np.int32)
  if "video" in present:
    side["video"] = np.zeros((batch, layout.max_parts["video"], layout.max_video_frames,
                              hv, wv, 3), np.float32)
    side["video_frames"] = np.zeros((batch, layout.max_parts["video"]), np.int32)

  for b, parts in enumerate(inputs):
    if len(parts) == 0:
      raise _shape_error(names[b], "input has no parts")
    count = {m: 0 for m in MODALITIES}
    for i, part in enumerate(parts):
      where = f"{names[b]} part {i}"
      if len(part) != 1:
        raise _shape_error(where, f"a part has exactly one modality key, got {sorted(part)}")
      (m, value), = part.items()
      if m not in MODALITIES:
        raise _shape_error(where, f"unknown modality {m!r}; known: {MODALITIES}")
      if count[m] >= layout.max_parts.get(m, 0):
        raise _shape_error(where, f"more than max_parts[{m!r}]={layout.max_parts.get(m, 0)} "
                           f"{m} parts in one input")
      k = count[m]
      count[m] += 1
      value = np.asarray(value)
      side[f"{m}_part"][b, k] = i
      if m == "text":
        if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
          raise _shape_error(
              where, f"text must be int token ids [L], got {value.dtype}{list(value.shape)}")
        if value.size == 0:
          raise _shape_error(where, "empty text (no tokens)")
        if (value <= 0).any():
          raise _shape_error(where, "text token ids must be >= 1 (0 is padding)")
        if value.size > layout.max_text_tokens:
          if not layout.truncate_text:
            raise _shape_error(where, f"text has {value.size} tokens > max_text_tokens="
                               f"{layout.max_text_tokens}")
          value = value[:layout.max_text_tokens]
        side["text_tokens"][b, k, :value.size] = value
      elif m == "image":
        if value.ndim != 3 or value.shape[-1] != 3:
          raise _shape_error(where, f"image must be [H, W, 3], got {list(value.shape)}")
        h, w = value.shape[:2]
        if h % p or w % p or h == 0 or w == 0:
          raise _shape_error(where, f"image size {h}x{w} is not a positive multiple of "
                             f"patch_size={p}")
        if h > hmax or w > wmax:
          raise _shape_error(where, f"image size {h}x{w} exceeds max_image_size={hmax}x{wmax}")
        side["image"][b, k, :h, :w] = value
        side["image_hw"][b, k] = (h, w)
      elif m == "audio":
        if value.ndim != 2 or value.shape[1] != layout.n_mels:
          raise _shape_error(where, f"audio must be log-mel [F, {layout.n_mels}], "
                             f"got {list(value.shape)}")
        f = value.shape[0]
        if f == 0:
          raise _shape_error(where, "empty audio (no frames)")
        if f > layout.max_audio_frames:
          raise _shape_error(where, f"audio has {f} frames > max_audio_frames="
                             f"{layout.max_audio_frames}")
        side["audio"][b, k, :f] = value
        side["audio_frames"][b, k] = f
      elif m == "video":
        if value.ndim != 4 or tuple(value.shape[1:]) != (hv, wv, 3):
          raise _shape_error(where, f"video must be [T, {hv}, {wv}, 3], got {list(value.shape)}")
        t = value.shape[0]
        if t == 0:
          raise _shape_error(where, "empty video (no frames)")
        if t > layout.max_video_frames:
          raise _shape_error(where, f"video has {t} frames > max_video_frames="
                             f"{layout.max_video_frames}")
        side["video"][b, k, :t] = value
        side["video_frames"][b, k] = t
  return side


def minimal_side(layout: Layout) -> dict[str, np.ndarray]:
  """One input packed with every part slot of `layout` filled by a minimal part of its modality
  (one token, one patch, one frame): a side of the layout's shapes, for shape checks."""
  p = layout.patch_size
  one = {"text": np.ones([1], np.int32), "image": np.zeros([p, p, 3], np.float32),
         "audio": np.zeros([1, layout.n_mels], np.float32),
         "video": np.zeros([1, *layout.video_size, 3], np.float32)}
  parts = [{m: one[m]} for m in MODALITIES for _ in range(layout.max_parts.get(m, 0))]
  return pack_inputs([parts], layout)
