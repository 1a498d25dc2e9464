"""A serving bundle on disk, and the standalone embedder that runs it (jax + numpy, no flax).

A bundle (written by gemb/export/bundle.py) is a folder:

  manifest.json              format, model dims, MRL dims, modalities, limits, featurisation
                             settings, the exported functions, versions
  weights.safetensors        the encoder's parameters (float32), one tensor per "/"-joined path
                             such as "blocks/0/mlp/up/kernel" (format_version 1 bundles:
                             weights.npz, which still loads)
  functions/<mods>.jaxexport one `jax.export` serialization (StableHLO) per modality set, e.g.
                             "text", "image+text": f(weights, side) -> [B, embed_dim] unit rows,
                             with a symbolic batch size and symbolic part-slot counts
  tokenizer.model            only for a SentencePiece tokenizer (byte-level needs no file)
  tokenizer.json             only for a Hugging Face tokenizer (config.model.tokenizer "hf:..."):
                             the checkpoint's tokenizer.json, lowercasing included, by itself

The weights are an argument of the functions, not constants in them: every function shares the
one weights file (15 modality sets would otherwise hold 15 copies), any safetensors reader can
open it (memory-mapped, no pickle), and the serialized modules stay small.

    embedder = gemb.serve.load("bundle/")
    embedder.embed([[{"text": "a red circle"}], [{"image": pixels}, {"text": "what colour?"}]],
                   mrl_dim=32)  # -> float32 [2, 32], unit rows
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax import export as jax_export
from safetensors import safe_open

from gemb.data import features, packing
from gemb.serve import preprocess

FORMAT = "gemb-serving-bundle"
FORMAT_VERSION = 2  # 2: weights in safetensors, named by the manifest's "weights"
READABLE_VERSIONS = (1, 2)  # 1: weights.npz, no "weights" entry
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
NPZ_WEIGHTS = "weights.npz"  # format_version 1
FUNCTIONS_DIR = "functions"
TOKENIZER = "tokenizer.model"
HF_TOKENIZER = "tokenizer.json"
MODALITIES = packing.MODALITIES


def function_name(modalities: Sequence[str]) -> str:
  """The modality set's name and file stem, in MODALITIES order: e.g. 'text+image'."""
  return "+".join(m for m in MODALITIES if m in modalities)


def read_manifest(path: str) -> dict[str, Any]:
  file = os.path.join(path, MANIFEST)
  if not os.path.exists(file):
    raise FileNotFoundError(f"{path} is not a gemb serving bundle (no {MANIFEST}); write one "
                            "with `python -m launch.main --mode=export --export_dir=...`")
  with open(file) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
    raise ValueError(f"{file}: format {manifest.get('format')!r} version "
                     f"{manifest.get('format_version')!r}; this gemb reads {FORMAT!r} versions "
                     f"{list(READABLE_VERSIONS)} (re-export the checkpoint)")
  return manifest


def read_weights(path: str, manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The bundle's parameters as {"/"-joined path: array}, from the file its manifest names."""
  entry = manifest.get("weights", {"file": NPZ_WEIGHTS, "format": "npz"})  # format_version 1
  file = os.path.join(path, entry["file"])
  if not os.path.exists(file):
    raise FileNotFoundError(f"the bundle's weights file {file} is missing; re-export the "
                            "checkpoint with `python -m launch.main --mode=export`")
  if entry["format"] == "safetensors":
    with safe_open(file, framework="numpy") as f:  # memory-mapped: each tensor read once
      return {name: f.get_tensor(name) for name in f.keys()}
  if entry["format"] == "npz":
    with np.load(file, allow_pickle=False) as weights:
      return {name: weights[name] for name in weights.files}
  raise ValueError(f"{os.path.join(path, MANIFEST)}: \"weights\" format {entry['format']!r} is "
                   "not 'safetensors' or 'npz' (re-export the checkpoint)")


def _check_weights(weights: Mapping[str, np.ndarray], exported: jax_export.Exported,
                   file: str) -> None:
  """Raises unless `weights` are the names, shapes and dtypes the exported `file` takes."""
  (expected, _), _ = jax.tree.unflatten(exported.in_tree, exported.in_avals)
  missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
  wrong = [f"{k} {weights[k].dtype}{list(weights[k].shape)} (wants {expected[k].str_short()})"
           for k in sorted(set(weights) & set(expected))
           if (weights[k].shape, weights[k].dtype) != (expected[k].shape, expected[k].dtype)]
  if missing or extra or wrong:
    raise ValueError(f"the bundle's weights do not fit {file}: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}, mismatched {wrong[:5]} (re-export the checkpoint)")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows scaled to unit norm, as the encoder does it (a zero row stays zero)."""
  x = np.asarray(x, np.float32)
  return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _part_counts(parts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
  """{modality: number of parts} of one input, for the modalities it has."""
  counts: dict[str, int] = {}
  for part in parts:
    for m in part:
      counts[m] = counts.get(m, 0) + 1
  return counts


def _bucket(n: int, cap: int) -> int:
  """The batch size `n` inputs are padded to: the next power of two, at most `cap`, so that a
  service compiles each function for a few batch sizes only."""
  return min(cap, 1 << max(0, n - 1).bit_length())


class Embedder:
  """Embeds raw inputs with a serving bundle (see the module docstring)."""

  def __init__(self, path: str, *, max_batch: int | None = None):
    """Reads the bundle at `path`; `max_batch` caps inputs per function call (default: the
    manifest's serving.max_batch)."""
    self.path = os.path.abspath(path)
    self.manifest = read_manifest(self.path)
    model, serving = self.manifest["model"], self.manifest["serving"]
    self.embed_dim = int(model["embed_dim"])
    self.mrl_dims = [int(d) for d in model["mrl_dims"]]
    self.limits = preprocess.Limits.from_manifest(self.manifest["limits"])
    self.tokens_per_part = dict(self.manifest["tokens_per_part"])
    self.max_batch = int(max_batch or serving["max_batch"])
    settings = {k: tuple(v) if isinstance(v, list) else v
                for k, v in self.manifest["features"].items()}
    if settings["tokenizer"] not in ("", "bytes"):
      settings["tokenizer"] = os.path.join(self.path, settings["tokenizer"])
    self._features = {truncate: features.FeatureConfig(**settings, truncate=truncate)
                      for truncate in (False, True)}

    backend = jax.default_backend()  # 'gpu' for the exports' 'cuda' and 'rocm'
    platforms = self.manifest["platforms"]
    if backend not in platforms and not (backend == "gpu" and {"cuda", "rocm"} & set(platforms)):
      raise ValueError(f"{self.path} was exported for platforms {platforms}, not for this "
                       f"machine's {backend!r}; re-export with config.export.platforms "
                       f"including {backend!r}")
    weights = read_weights(self.path, self.manifest)
    self._functions = {}
    for entry in self.manifest["functions"]:
      with open(os.path.join(self.path, entry["file"]), "rb") as f:
        exported = jax_export.deserialize(bytearray(f.read()))
      _check_weights(weights, exported, entry["file"])
      self._functions[function_name(entry["modalities"])] = jax.jit(exported.call)
    self._weights = jax.device_put(weights)
    self.modalities = sorted({m for e in self.manifest["functions"] for m in e["modalities"]},
                             key=MODALITIES.index)

  def feature_config(self, truncate: bool = False) -> features.FeatureConfig:
    return self._features[bool(truncate)]

  def featurise(self, inputs: Sequence[Sequence[Mapping[str, Any]]], *,
                task_string: str | None = None, truncate: bool = False, from_json: bool = False,
                allow_files: bool = True) -> list[list[dict[str, np.ndarray]]]:
    """Checks raw inputs against the bundle's limits and featurises them.

    Raises preprocess.InputError naming the field (e.g. 'inputs[2][0].image').
    """
    featurised = preprocess.featurise_inputs(
        inputs, self.feature_config(truncate), self.limits,
        {m: self.tokens_per_part[m] for m in self.modalities}, task_string=task_string,
        from_json=from_json, allow_files=allow_files)
    for b, parts in enumerate(featurised):
      self.function_for(_part_counts(parts), f"inputs[{b}]")
    return featurised

  def function_for(self, counts: Mapping[str, int], field: str = "inputs") -> str:
    """The exported function that embeds an input with `counts` parts per modality: the one for
    exactly its modalities if exported, else the smallest exported superset whose extra
    modalities' empty (masked) slots still fit max_seq_len."""
    name = function_name(counts)
    if name in self._functions:
      return name
    fitting = [n for n in self._functions if set(counts) <= set(n.split("+")) and
               self._sequence_length(self._layout_slots(n, [counts])) <= self.limits.max_seq_len]
    if not fitting:
      raise preprocess.InputError(field, f"this bundle has no function for the modality set "
                                         f"{name!r} (or a superset with room for it); it has "
                                         f"{sorted(self._functions)} (config.export.modality_sets)")
    return min(fitting, key=lambda n: (sum(self.tokens_per_part[m] for m in n.split("+")), n))

  def _sequence_length(self, slots: Mapping[str, int]) -> int:
    return sum(self.tokens_per_part[m] * n for m, n in slots.items())

  def _layout_slots(self, function: str, counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Part slots per modality for a chunk of inputs run by `function`: the most any input has
    (at least 1), rounded up to a power of two when that still fits max_seq_len, so that a
    service compiles few distinct shapes."""
    exact = {m: max([1] + [c.get(m, 0) for c in counts]) for m in function.split("+")}
    rounded = {m: min(self.limits.max_parts, 1 << (n - 1).bit_length()) for m, n in exact.items()}
    return rounded if self._sequence_length(rounded) <= self.limits.max_seq_len else exact

  def embed_featurised(self, featurised: Sequence[Sequence[Mapping[str, np.ndarray]]],
                       mrl_dim: int | None = None) -> np.ndarray:
    """Featurised inputs -> float32 [N, mrl_dim or embed_dim] unit rows.

    Inputs are grouped by the function that runs them (function_for), and each group is cut
    into chunks of at most `max_batch` inputs whose packed layout fits max_seq_len; a chunk is
    padded to a power-of-two batch. Padding slots and rows are masked, so an input's embedding
    does not depend on what it is batched with.
    """
    dim = self.check_mrl_dim(mrl_dim)
    groups: dict[str, list[int]] = {}
    counts = []
    for b, parts in enumerate(featurised):
      counts.append(_part_counts(parts))
      groups.setdefault(self.function_for(counts[b], f"inputs[{b}]"), []).append(b)
    out = np.zeros((len(featurised), self.embed_dim), np.float32)
    for function, members in groups.items():
      chunk: list[int] = []
      for b in members + [None]:  # None: the end, run what is left
        grown = chunk + [b]
        if chunk and (b is None or len(grown) > self.max_batch or self._sequence_length(
            self._layout_slots(function, [counts[i] for i in grown])) > self.limits.max_seq_len):
          slots = self._layout_slots(function, [counts[i] for i in chunk])
          out[chunk] = self._run(function, [featurised[i] for i in chunk], slots)
          grown = [b]
        chunk = grown
    return out if dim == self.embed_dim else l2_normalize(out[:, :dim])

  def _run(self, function: str, featurised: list, slots: dict[str, int]) -> np.ndarray:
    """One call of an exported function on a chunk, padded to a power-of-two batch."""
    n = len(featurised)
    padded = featurised + featurised[:1] * (_bucket(n, self.max_batch) - n)
    side = packing.pack_inputs(padded, self.feature_config().layout(slots))
    return np.asarray(self._functions[function](self._weights, side))[:n]

  def embed(self, inputs: Sequence[Sequence[Mapping[str, Any]]], *, mrl_dim: int | None = None,
            task_string: str | None = None, truncate: bool = False) -> np.ndarray:
    """Raw inputs (lists of parts; arrays, text or file paths) -> float32 [N, dim] unit rows.

    Args:
      inputs: N inputs, e.g. [[{"text": "a red circle"}], [{"image": uint8[H, W, 3]}]].
      mrl_dim: one of the bundle's MRL dims (a re-normalised prefix); default the full width.
      task_string: the task the embedding is for (prefixed to each input's first text part as
        in training, e.g. "retrieve the image that matches the caption").
      truncate: cut over-long text/audio/video to the limits instead of raising.
    """
    self.check_mrl_dim(mrl_dim)
    return self.embed_featurised(
        self.featurise(inputs, task_string=task_string, truncate=truncate), mrl_dim)

  def warmup(self, example: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Compiles the function for `example`'s layout (default: one text part) at every batch
    size a service uses (powers of two up to max_batch), so no request waits on a compile."""
    featurised = self.featurise([list(example or [{"text": "warm up"}])], truncate=True)
    size = 1
    while True:
      self.embed_featurised(featurised * size)
      if size >= self.max_batch:
        return
      size = _bucket(size + 1, self.max_batch)

  def check_mrl_dim(self, mrl_dim: int | None) -> int:
    """The output width for `mrl_dim` (None: the full width); InputError if not offered."""
    if mrl_dim is None:
      return self.embed_dim
    allowed = sorted(set(self.mrl_dims) | {self.embed_dim})
    if isinstance(mrl_dim, bool) or not isinstance(mrl_dim, (int, np.integer)) or (
        int(mrl_dim) not in allowed):
      raise preprocess.InputError("mrl_dim", f"{mrl_dim!r} is not one of this model's MRL dims "
                                             f"{allowed}")
    return int(mrl_dim)

  def describe(self) -> dict[str, Any]:
    """What a client needs to know: dims, modalities, limits."""
    return {"embed_dim": self.embed_dim, "mrl_dims": self.mrl_dims,
            "modalities": self.modalities, "functions": sorted(self._functions),
            "limits": dataclasses.asdict(self.limits), "model": self.manifest["model"]}


def load(path: str, *, max_batch: int | None = None) -> Embedder:
  """Loads the serving bundle at `path` (needs jax and numpy, plus Pillow for images)."""
  return Embedder(path, max_batch=max_batch)
