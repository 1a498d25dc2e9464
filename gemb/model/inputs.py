"""What a packed side must look like for the encoder, checked on shapes before compilation.

A side (see gemb/data/packing.py) holds per-modality buffers. Their shapes may be *smaller*
than the config limits (a text-only task can use a short text buffer and small images), but
never larger: position tables are sized by the limits in `config.model`, and a buffer reads
the first rows of its table. So the same parameters embed the same input identically under
any layout that holds it.

  text_tokens  [B, Pt, Lt]              Lt <= max_text_tokens
  image        [B, Pi, H, W, 3]         H, W multiples of patch_size, <= max_image_size
  audio        [B, Pa, F, n_mels]       F a multiple of audio_patch[0], <= max_audio_frames
  video        [B, Pv, T, Hv, Wv, 3]    (Hv, Wv) = video_size, T a multiple of tubelet_frames,
                                        <= max_video_frames
"""
from __future__ import annotations

from typing import Any, Mapping

import math
import jax.numpy as jnp
import numpy as np

MODALITIES = ("text", "image", "audio", "video")
# modality -> (data key, per-part metadata keys other than *_part)
KEYS = {
    "text": ("text_tokens", ()),
    "image": ("image", ("image_hw",)),
    "audio": ("audio", ("audio_frames",)),
    "video": ("video", ("video_frames",)),
}
KNOWN_KEYS = tuple(k for m in MODALITIES for k in (KEYS[m][0], *KEYS[m][1], f"{m}_part"))


def shape_of(x: Any) -> tuple[int, ...]:
  return tuple(x) if isinstance(x, (tuple, list)) else tuple(x.shape)


def present_modalities(side: Mapping[str, Any]) -> list[str]:
  """Modalities with a `*_part` array in `side`, in the fixed MODALITIES order."""
  return [m for m in MODALITIES if f"{m}_part" in side]


def token_grid(modality: str, data_shape: tuple[int, ...], cfg) -> tuple[int, ...]:
  """Tokens of one part slot, as a grid: text (L,), image (H/p, W/p), audio (F/pf, M/pm),
  video (T/tf, Hv/p, Wv/p)."""
  p = cfg.patch_size
  if modality == "text":
    return (data_shape[2],)
  if modality == "image":
    return (data_shape[2] // p, data_shape[3] // p)
  if modality == "audio":
    pf, pm = cfg.audio_patch
    return (data_shape[2] // pf, data_shape[3] // pm)
  return (data_shape[2] // cfg.tubelet_frames, data_shape[3] // p, data_shape[4] // p)


def token_counts(side_shapes: Mapping[str, Any], cfg) -> dict[str, tuple[int, int]]:
  """modality -> (part slots, tokens per slot) for the modalities present in the side.

  `side_shapes` maps keys to arrays or to shapes.
  """
  counts = {}
  for m in present_modalities(side_shapes):
    shape = shape_of(side_shapes[KEYS[m][0]])
    counts[m] = (shape[1], math.prod(token_grid(m, shape, cfg)))  # symbolic-safe (export)
  return counts


def sequence_length(side_shapes: Mapping[str, Any], cfg) -> int:
  """Length of the encoder's one sequence: every token of every part slot."""
  return sum(slots * tokens for slots, tokens in token_counts(side_shapes, cfg).values())


def _expected(modality: str, key: str, batch: int, slots: int, cfg) -> str:
  """The expected shape of `key`, in words, for error messages."""
  hmax, wmax = cfg.max_image_size
  hv, wv = cfg.video_size
  return {
      "text_tokens": f"[B={batch}, Pt={slots}, Lt<={cfg.max_text_tokens}] integer",
      "image": f"[B={batch}, Pi={slots}, H<={hmax}, W<={wmax}, 3] float, H and W multiples of "
               f"patch_size={cfg.patch_size}",
      "image_hw": f"[B={batch}, Pi={slots}, 2] integer",
      "audio": f"[B={batch}, Pa={slots}, F<={cfg.max_audio_frames}, n_mels={cfg.n_mels}] float, "
               f"F a multiple of audio_patch[0]={cfg.audio_patch[0]}",
      "audio_frames": f"[B={batch}, Pa={slots}] integer",
      "video": f"[B={batch}, Pv={slots}, T<={cfg.max_video_frames}, {hv}, {wv}, 3] float, "
               f"T a multiple of tubelet_frames={cfg.tubelet_frames}",
      "video_frames": f"[B={batch}, Pv={slots}] integer",
  }.get(key, f"[B={batch}, P{modality[0]}={slots}] integer")


def _data_shape_ok(modality: str, shape: tuple[int, ...], cfg) -> bool:
  p = cfg.patch_size
  if modality == "text":
    return len(shape) == 3 and 0 < shape[2] <= cfg.max_text_tokens
  if modality == "image":
    hmax, wmax = cfg.max_image_size
    return (len(shape) == 5 and shape[4] == 3 and 0 < shape[2] <= hmax and 0 < shape[3] <= wmax
            and shape[2] % p == 0 and shape[3] % p == 0)
  if modality == "audio":
    return (len(shape) == 4 and shape[3] == cfg.n_mels and 0 < shape[2] <= cfg.max_audio_frames
            and shape[2] % cfg.audio_patch[0] == 0)
  return (len(shape) == 6 and tuple(shape[3:]) == (*cfg.video_size, 3)
          and 0 < shape[2] <= cfg.max_video_frames and shape[2] % cfg.tubelet_frames == 0)


def check_side(side: Mapping[str, Any], cfg) -> None:
  """Raises ValueError if `side` cannot be embedded by an encoder built from `cfg`.

  Checks keys, shapes and dtypes (works on arrays, tracers and jax.ShapeDtypeStruct), and the
  total sequence length against cfg.max_seq_len. For concrete numpy arrays it also checks the
  token ids (< vocab_size) and part indices (< max_parts).
  """
  unknown = sorted(set(side) - set(KNOWN_KEYS))
  if unknown:
    raise ValueError(f"side has unknown keys {unknown} (unknown modality?); known keys: "
                     f"{KNOWN_KEYS}")
  modalities = [m for m in MODALITIES
                if any(k in side for k in (KEYS[m][0], *KEYS[m][1], f"{m}_part"))]
  if not modalities:
    raise ValueError("side is empty: it has no modality arrays (expected e.g. 'text_tokens' "
                     "and 'text_part'); an encoder input needs at least one part")
  batch = None
  for m in modalities:
    data_key, meta_keys = KEYS[m]
    keys = (data_key, *meta_keys, f"{m}_part")
    missing = [k for k in keys if k not in side]
    if missing:
      raise ValueError(f"side has {m} arrays but lacks {missing}; a {m} side needs {list(keys)}")
    part_shape = shape_of(side[f"{m}_part"])
    if len(part_shape) != 2:
      raise ValueError(f"side[{m + '_part'!r}] has shape {list(part_shape)}, expected [B, P]")
    if batch is None:
      batch = part_shape[0]
    slots = part_shape[1]
    expected_shape = {
        f"{m}_part": (batch, slots),
        "image_hw": (batch, slots, 2),
        "audio_frames": (batch, slots),
        "video_frames": (batch, slots),
    }
    for key in keys:
      x = side[key]
      shape, dtype = shape_of(x), x.dtype
      is_float = key in ("image", "audio", "video")
      if key == data_key:
        ok = shape[:2] == (batch, slots) and _data_shape_ok(m, shape, cfg)
      else:
        ok = shape == expected_shape[key]
      ok = ok and (jnp.issubdtype(dtype, jnp.floating) if is_float
                   else jnp.issubdtype(dtype, jnp.integer))
      if not ok:
        raise ValueError(f"side[{key!r}] has shape {list(shape)} and dtype {dtype}; expected "
                         f"{_expected(m, key, batch, slots, cfg)}")
    if isinstance(side[f"{m}_part"], np.ndarray):
      part = side[f"{m}_part"]
      if part.size and (part.min() < -1 or part.max() >= cfg.max_parts):
        raise ValueError(f"side[{m + '_part'!r}] has part indices in [{part.min()}, "
                         f"{part.max()}]; they must lie in [-1, config.model.max_parts="
                         f"{cfg.max_parts})")
    if m == "text" and isinstance(side["text_tokens"], np.ndarray):
      tokens = side["text_tokens"]
      if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
        raise ValueError(f"side['text_tokens'] has ids in [{tokens.min()}, {tokens.max()}]; "
                         f"they must lie in [0, config.model.vocab_size={cfg.vocab_size})")
  length = sequence_length(side, cfg)
  if length > cfg.max_seq_len:
    counts = {m: f"{s} slots x {t} tokens" for m, (s, t) in token_counts(side, cfg).items()}
    raise ValueError(f"side makes a sequence of {length} tokens > config.model.max_seq_len="
                     f"{cfg.max_seq_len} ({counts}); use fewer part slots or smaller buffers "
                     f"in the layout, or raise max_seq_len")
