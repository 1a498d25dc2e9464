"""Matmul FLOPs of one encoder forward pass, for MFU.

Counts 2 * M * N * K for every matrix product the encoder runs on a packed side, padding
tokens included (they are computed, so they count towards hardware utilisation). Embedding
lookups, softmax, norms and other elementwise work are left out, as in the usual 6 * N * D
accounting. A training step costs about 3x the forward pass (4x with remat).
"""
from __future__ import annotations

from typing import Any, Mapping

from gemb.model.inputs import shape_of, token_counts


def _patch_features(modality: str, cfg) -> int:
  """Input features of one token's linear embedding (0 for the text lookup table)."""
  p = cfg.patch_size
  return {"text": 0, "image": p * p * 3, "audio": cfg.audio_patch[0] * cfg.audio_patch[1],
          "video": cfg.tubelet_frames * p * p * 3}[modality]


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
  width, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
  length = sum(slots * tokens for slots, tokens in counts.values())  # N
  stems = sum(2 * batch * slots * tokens * _patch_features(m, cfg) * width
              for m, (slots, tokens) in counts.items())
  per_block = (
      4 * 2 * batch * length * width * width    # query, key, value and output projections
      + 2 * 2 * batch * length * length * width  # logits and weighted sum of values
      + 2 * 2 * batch * length * width * hidden  # MLP up and down
  )
  projection = 2 * batch * width * cfg.embed_dim
  return stems + cfg.depth * per_block + projection
