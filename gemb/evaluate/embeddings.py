"""Calling an embedding function in chunks, and the Matryoshka (MRL) prefix views of its output.

An embedding function is any callable `embed_fn(inputs: list[list[dict]]) -> [N, D]` array: a gemb
checkpoint, an exported model, or an outside model. Evaluators only ever call it through
`embed_in_chunks`, so a corpus of any size is embedded `batch_size` inputs at a time.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

# one input: an ordered list of parts, e.g. [{"image": array}, {"text": "what colour?"}]
Input = list
EmbedFn = Callable[[list[Input]], np.ndarray]
Metrics = Iterator[tuple[str, float]]


def check_inputs(inputs: Sequence[Input], what: str) -> list[Input]:
  """Returns `inputs` as a list after checking each one is a non-empty list of part dicts."""
  inputs = list(inputs)
  if not inputs:
    raise ValueError(f"{what} is empty; an evaluator needs at least one input.")
  for i, parts in enumerate(inputs):
    if (not isinstance(parts, (list, tuple)) or not parts
        or not all(isinstance(p, dict) for p in parts)):
      raise TypeError(
          f"{what}[{i}] is {type(parts).__name__} {str(parts)[:80]!r}; an input is a non-empty "
          "list of parts, each a dict of one modality, e.g. [{'text': 'a red cube'}].")
  return inputs


def check_pairs(inputs_a: Sequence[Input], inputs_b: Sequence[Input], values, what: str):
  """Checks two aligned input lists and one value per pair; returns (list, list, array)."""
  inputs_a, inputs_b = (check_inputs(inputs_a, f"{what} inputs_a"),
                        check_inputs(inputs_b, f"{what} inputs_b"))
  values = np.asarray(values)
  if not len(inputs_a) == len(inputs_b) == len(values):
    raise ValueError(f"{what}: inputs_a, inputs_b and the per-pair values have lengths "
                     f"{len(inputs_a)}, {len(inputs_b)}, {len(values)}; they must be equal.")
  return inputs_a, inputs_b, values


def embed_in_chunks(embed_fn: EmbedFn, inputs: Sequence[Input], batch_size: int) -> np.ndarray:
  """Embeds `inputs` `batch_size` at a time; returns float32 [N, D] (not re-normalised)."""
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}; it must be >= 1.")
  chunks = []
  for start in range(0, len(inputs), batch_size):
    chunk = list(inputs[start:start + batch_size])
    out = np.asarray(embed_fn(chunk), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(chunk):
      raise ValueError(
          f"embed_fn returned shape {out.shape} for {len(chunk)} inputs; it must return one row "
          f"per input, [{len(chunk)}, D].")
    if chunks and out.shape[1] != chunks[0].shape[1]:
      raise ValueError(f"embed_fn returned D={out.shape[1]} after D={chunks[0].shape[1]}; the "
                       "embedding width must not change between calls.")
    if not np.all(np.isfinite(out)):
      raise ValueError(f"embed_fn returned non-finite values for inputs "
                       f"{start}..{start + len(chunk) - 1}.")
    chunks.append(out)
  return np.concatenate(chunks, axis=0)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit L2 norm ([N, D] -> [N, D] float32); an all-zero row stays zero."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def mrl_prefix(embeddings: np.ndarray, dim: int) -> np.ndarray:
  """The first `dim` coordinates, re-normalised: [N, D] -> [N, dim] (the MRL sub-embedding)."""
  if not 1 <= dim <= embeddings.shape[-1]:
    raise ValueError(f"MRL dim {dim} is outside 1..{embeddings.shape[-1]} (the embedding width); "
                     "fix the evaluator's `mrl_dims`.")
  return l2_normalize(embeddings[..., :dim])


def over_mrl_dims(embeddings: Sequence[np.ndarray], mrl_dims: Sequence[int],
                  metrics_fn: Callable[..., Metrics]) -> Metrics:
  """Runs `metrics_fn(*normalised_embeddings)` at the full width and at each MRL prefix width.

  Full-width metrics keep their names; prefix metrics get the suffix `@dim=N`. A listed dim equal
  to the full width is the full embedding and is reported once, without suffix.
  """
  full_dim = embeddings[0].shape[-1]
  yield from metrics_fn(*[l2_normalize(e) for e in embeddings])
  for dim in sorted(set(int(d) for d in mrl_dims)):
    if dim == full_dim:
      continue
    prefixes = [mrl_prefix(e, dim) for e in embeddings]
    for name, value in metrics_fn(*prefixes):
      yield f"{name}@dim={dim}", value
