"""Matmul FLOPs of one encoder forward pass, for MFU.

Counts 2 * M * N * K for every matrix product the encoder runs on a packed side, padding
tokens included (they are computed, so they count towards hardware utilisation). Embedding
lookups, softmax, norms and other elementwise work are left out, as in the usual 6 * N * D
accounting. A training step costs about 3x the forward pass (4x with remat).
"""
from __future__ import annotations

from typing import Any, Mapping

from gemb.model.inputs import shape_of, token_counts
from gemb.model.stems import conv_layout, patch_features


def _patch_features(modality: str, cfg) -> int:
  """Input features of one token's linear embedding (0 for the text lookup table)."""
  if modality in ("image", "video"):
    frames = cfg.tubelet_frames if modality == "video" else 1
    return frames * patch_features(cfg, modality)
  return {"text": 0, "audio": cfg.audio_patch[0] * cfg.audio_patch[1]}[modality]


def _pixel_conv_flops(cfg, modality: str) -> int:
  """Matmul FLOPs of the PixelPatches convolutions (3x3) over one frame's p x p patch."""
  flops, c_in, pixels = 0, 3, cfg.patch_size ** 2
  for c_out, stride in conv_layout(cfg, modality):
    pixels //= stride * stride  # a stride-2 convolution halves both sides
    flops += 2 * pixels * 9 * c_in * c_out
    c_in = c_out
  return flops


def encoder_flops(cfg, side_shapes: Mapping[str, Any]) -> int:
  """Matmul FLOPs of `Encoder(cfg)(side)` for the whole batch.

  Args:
    cfg: the `config.model` ConfigDict.
    side_shapes: the packed side, or a mapping from its keys to shapes.
  """
  counts = token_counts(side_shapes, cfg)
  if not counts:
    raise ValueError("encoder_flops: the side has no modality (no '*_part' key)")
  batch = shape_of(side_shapes[f"{next(iter(counts))}_part"])[0]
  width = cfg.width
  if cfg.backbone == "gemma":  # grouped kv heads of head_dim; a gated MLP (gate, up, down)
    query_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    hidden, mlp_matmuls = cfg.mlp_dim, 3
  else:
    query_width = kv_width = width
    hidden = cfg.mlp_dim if cfg.backbone == "bert" else int(cfg.width * cfg.mlp_ratio)
    mlp_matmuls = 2
  length = sum(slots * tokens for slots, tokens in counts.values())  # N
  frames = {"image": 1, "video": cfg.tubelet_frames}  # frames per token that the convs see

  def per_token(m: str) -> int:  # the linear embedding, and the convolutions of pixel stems
    convs = frames[m] * _pixel_conv_flops(cfg, m) if m in frames else 0
    return 2 * _patch_features(m, cfg) * width + convs

  stems = sum(batch * slots * tokens * per_token(m) for m, (slots, tokens) in counts.items())
  per_block = (
      2 * 2 * batch * length * width * (query_width + kv_width)  # q, k, v, output projections
      + 2 * 2 * batch * length * length * query_width  # logits and weighted sum of values
      + mlp_matmuls * 2 * batch * length * width * hidden  # MLP
  )
  dims = {"linear": (width, cfg.embed_dim), "identity": ()}.get(cfg.projection)
  dims = (width, *cfg.dense_dims) if dims is None else dims  # "dense": the folder's layers
  projection = sum(2 * batch * n_in * n_out for n_in, n_out in zip(dims, dims[1:]))
  return stems + cfg.depth * per_block + projection
