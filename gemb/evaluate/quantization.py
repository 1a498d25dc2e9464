"""Compressed embeddings for retrieval: symmetric int8 and binary (sign bits), with their sizes.

int8: x ~ scale * round(x / scale), scale = max|x| / 127 per dimension or over the whole matrix,
calibrated on the corpus; queries are quantised with the corpus scales (and clipped).
binary: one bit per dimension, 1 where x > 0, packed 8 per byte; two codes are compared by the
inner product of their +-1 vectors, which equals D - 2 * Hamming distance.
"""
from __future__ import annotations

import numpy as np

KINDS = ("int8", "binary")


def int8_scales(calibration: np.ndarray, mode: str) -> np.ndarray:
  """Symmetric scales from [N, D] calibration rows: [D] ('per_dim') or [1] ('global')."""
  magnitude = np.abs(np.asarray(calibration, np.float32))
  if mode == "per_dim":
    peak = magnitude.max(axis=0)
  elif mode == "global":
    peak = magnitude.max(keepdims=True).reshape(1)
  else:
    raise ValueError(f"int8 scale mode {mode!r} is not one of 'per_dim', 'global'.")
  return np.maximum(peak, 1e-12) / 127.0


def quantize_int8(x: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """[N, D] float -> [N, D] int8 codes in [-127, 127]."""
  return np.clip(np.rint(np.asarray(x, np.float32) / scales), -127, 127).astype(np.int8)


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """[N, D] int8 codes -> [N, D] float32 approximations."""
  return codes.astype(np.float32) * scales.astype(np.float32)


def binarize(x: np.ndarray) -> np.ndarray:
  """[N, D] float -> [N, ceil(D / 8)] uint8 packed sign bits (bit = x > 0)."""
  return np.packbits(np.asarray(x) > 0, axis=-1)


def unpack_signs(bits: np.ndarray, dim: int) -> np.ndarray:
  """[N, ceil(D / 8)] packed bits -> [N, D] float32 +-1 (1 where the bit is set)."""
  return np.unpackbits(bits, axis=-1, count=dim).astype(np.float32) * 2.0 - 1.0


def bytes_per_vector(dim: int, kind: str = "float32") -> int:
  """Storage of one D-dim embedding (scales are shared by the corpus, not counted per vector)."""
  sizes = {"float32": 4 * dim, "int8": dim, "binary": (dim + 7) // 8}
  if kind not in sizes:
    raise ValueError(f"quantization kind {kind!r} is not one of {sorted(sizes)}.")
  return sizes[kind]
