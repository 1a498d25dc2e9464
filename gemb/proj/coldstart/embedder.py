"""Item embeddings by a gemb model, in batches with progress, cached by item id.

The model is a serving bundle (`config.embedder.bundle`, through gemb.serve) or a training
checkpoint (`config.embedder.checkpoint` with the training config that built it,
`config.embedder.model_config`, through gemb.embed.make_embed_fn as the evaluators use it); the
'random_init' variant is the same architecture at its random initialisation
(gemb.train.checkpoints.load_encoder without a path). An item's content is embedded as one input
of all its parts (combine='joint', how gemb embeds interleaved inputs) or part by part, the unit
embeddings averaged (combine='mean_of_parts').

The cache is one .npz per model fingerprint (a digest of the bundle's or checkpoint's files, or
of the config and seed of a random init) and combine mode: item ids, content digests, rows. A
second call embeds only the ids it has not seen (or whose content changed).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np

from gemb import config_file
from gemb.data import features
from gemb.evaluate import embeddings as embeddings_lib
from gemb.proj.coldstart import catalogue

COMBINES = ("joint", "mean_of_parts")


@dataclasses.dataclass(frozen=True)
class ItemEncoder:
  """What embeds an item: a name for messages, a cache fingerprint, the embedding function."""
  name: str
  fingerprint: str
  embed_fn: embeddings_lib.EmbedFn
  feature_config: features.FeatureConfig


def _digest_files(paths: Sequence[str], extra: str = "") -> str:
  digest = hashlib.sha256(extra.encode())
  for path in sorted(paths):
    digest.update(os.path.basename(path).encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        digest.update(block)
  return digest.hexdigest()[:20]


def _files_under(directory: str) -> list[str]:
  return [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]


def load_training_config(reference: str) -> ml_collections.ConfigDict:
  """The config of `reference` = 'configs/x.py' or 'configs/x.py:arg' (its get_config(arg))."""
  path = reference.partition(":")[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.embedder.model_config={reference!r}: no file {path!r}; name "
                            "the training config the checkpoint was trained with")
  return config_file.load(reference)


def _bundle_model_config(bundle_path: str) -> ml_collections.ConfigDict:
  """config.model of the bundle (its manifest's model_config), for a random init of it."""
  from gemb.serve import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  manifest = bundle_lib.read_manifest(bundle_path)
  if "model_config" not in manifest:
    raise ValueError(f"bundle {bundle_path!r} has no model_config in its manifest; give "
                     "config.embedder.model_config for the random-init variant")
  tuples = lambda v: tuple(tuples(x) for x in v) if isinstance(v, list) else v
  model_cfg = ml_collections.ConfigDict({k: tuples(v) for k, v in manifest["model_config"].items()})
  tokenizer = manifest["features"].get("tokenizer", "")
  if tokenizer not in ("", "bytes") and os.path.isfile(os.path.join(bundle_path, tokenizer)):
    model_cfg.tokenizer = os.path.join(bundle_path, tokenizer)
  return model_cfg


def _encoder_embed_fn(model_cfg, mesh_cfg, checkpoint: str | None, seed: int):
  from gemb import sharding  # pylint: disable=g-import-not-at-top  (jax model code, only here)
  from gemb.embed import make_embed_fn  # pylint: disable=g-import-not-at-top
  from gemb.train import checkpoints  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(mesh_cfg)
  graphdef, params, rest = checkpoints.load_encoder(model_cfg, mesh, checkpoint, seed)
  return make_embed_fn(model_cfg, graphdef, params, rest, mesh)


def item_encoder(embedder_config, variant: str) -> ItemEncoder:
  """The encoder of `variant`: 'trained' (the bundle or checkpoint) or 'random_init' (its
  architecture at random init, seed config.embedder.random_init_seed)."""
  ec = embedder_config
  if variant == "trained" and not ec.bundle and not ec.checkpoint:
    raise ValueError("config.embedder needs a model: set config.embedder.bundle=DIR (a serving "
                     "bundle) or config.embedder.checkpoint=PATH with config.embedder.model_config")
  mesh_cfg = {"data": -1, "fsdp": 1, "tensor": 1}
  if ec.model_config:
    training_config = load_training_config(ec.model_config)
    model_cfg, mesh_cfg = training_config.model, dict(training_config.get("mesh", mesh_cfg))
  elif ec.bundle:
    model_cfg = _bundle_model_config(ec.bundle)
  elif ec.checkpoint:
    raise ValueError(f"config.embedder.checkpoint={ec.checkpoint!r} needs "
                     "config.embedder.model_config, the training config that built it "
                     "(e.g. 'configs/smoke.py')")
  else:
    raise ValueError("the random_init variant needs the model's architecture: set "
                     "config.embedder.model_config (a training config) or config.embedder.bundle")
  if variant == "random_init":
    key = (json.dumps(model_cfg.to_dict(), sort_keys=True, default=str)
           + f"seed={ec.random_init_seed}")
    return ItemEncoder("random_init", "random-" + hashlib.sha256(key.encode()).hexdigest()[:20],
                       _encoder_embed_fn(model_cfg, mesh_cfg, None, int(ec.random_init_seed)),
                       features.FeatureConfig.from_config(model_cfg))
  if variant != "trained":
    raise ValueError(f"unknown embedding variant {variant!r}; use 'trained' or 'random_init'")
  if ec.bundle:
    from gemb.serve import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
    embedder = bundle_lib.load(ec.bundle)
    weights = [os.path.join(ec.bundle, bundle_lib.MANIFEST)] + [
        f for f in _files_under(ec.bundle) if os.path.basename(f).startswith("weights.")]
    return ItemEncoder("bundle", "bundle-" + _digest_files(weights),
                       lambda inputs: embedder.embed(inputs, truncate=True),
                       embedder.feature_config(truncate=True))
  from gemb.train import checkpoints  # pylint: disable=g-import-not-at-top
  path = checkpoints.resolve(ec.checkpoint, os.getcwd())
  key = json.dumps(model_cfg.to_dict(), sort_keys=True, default=str)
  return ItemEncoder("checkpoint", "checkpoint-" + _digest_files(
      _files_under(os.path.join(path, "params")), key),
                     _encoder_embed_fn(model_cfg, mesh_cfg, path, 0),
                     features.FeatureConfig.from_config(model_cfg))


def _embed_content(encoder: ItemEncoder, items: Sequence[catalogue.Item],
                   combine: str) -> np.ndarray:
  """[len(items), D] unit rows for a batch of items."""
  contents = [catalogue.load_content(item, encoder.feature_config) for item in items]
  if combine == "joint":
    return embeddings_lib.l2_normalize(encoder.embed_fn(contents))
  parts = [[part] for content in contents for part in content]
  rows = np.asarray(encoder.embed_fn(parts), np.float32)  # [total parts, D]
  owner = np.repeat(np.arange(len(contents)), [len(c) for c in contents])
  sums = np.zeros((len(contents), rows.shape[1]), np.float64)
  np.add.at(sums, owner, embeddings_lib.l2_normalize(rows))
  return embeddings_lib.l2_normalize(sums)


def cache_path(cache_dir: str, encoder: ItemEncoder, combine: str) -> str:
  return os.path.join(cache_dir, f"{encoder.fingerprint}-{combine}.npz")


def embed_items(encoder: ItemEncoder, items: Sequence[catalogue.Item], *, batch_size: int,
                combine: str, cache_dir: str = "",
                log: Callable[[str], None] = lambda line: print(line, flush=True)) -> np.ndarray:
  """float32 [len(items), D] unit embeddings of `items`, read from / added to the cache."""
  if combine not in COMBINES:
    raise ValueError(f"config.embedder.combine={combine!r}; use one of {COMBINES}")
  if batch_size < 1:
    raise ValueError(f"config.embedder.batch_size={batch_size}; it must be >= 1")
  hashes = [catalogue.content_hash(item) for item in items]
  cached: dict[tuple[str, str], np.ndarray] = {}
  path = cache_path(cache_dir, encoder, combine) if cache_dir else ""
  if path and os.path.exists(path):
    with np.load(path) as data:
      cached = {(i, h): row for i, h, row in zip(data["ids"].tolist(), data["hashes"].tolist(),
                                                 data["embeddings"])}
  missing = [k for k, (item, h) in enumerate(zip(items, hashes)) if (item.item_id, h) not in cached]
  start = last = time.perf_counter()
  for done in range(0, len(missing), batch_size):
    batch = missing[done:done + batch_size]
    rows = _embed_content(encoder, [items[k] for k in batch], combine)
    if not np.all(np.isfinite(rows)):
      raise ValueError(f"{encoder.name} gave non-finite embeddings for items "
                       f"{[items[k].item_id for k in batch][:5]}")
    for k, row in zip(batch, rows):
      cached[(items[k].item_id, hashes[k])] = row
    now = time.perf_counter()
    finished = done + len(batch)
    if now - last > 15 or finished == len(missing):
      rate = finished / max(now - start, 1e-9)
      log(f"[embed {encoder.name}] {finished}/{len(missing)} items  {rate:.0f} items/s  "
          f"eta {(len(missing) - finished) / max(rate, 1e-9):.0f}s")
      last = now
  if missing:
    log(f"[embed {encoder.name}] embedded {len(missing)} items, {len(items) - len(missing)} "
        f"from the cache, {len(missing) / max(time.perf_counter() - start, 1e-9):.0f} items/s")
    if path:
      os.makedirs(cache_dir, exist_ok=True)
      keys = list(cached)
      partial = path + ".partial.npz"
      np.savez(partial, ids=np.array([k[0] for k in keys]), hashes=np.array([k[1] for k in keys]),
               embeddings=np.stack([cached[k] for k in keys]).astype(np.float32))
      os.replace(partial, path)
  return np.stack([cached[(item.item_id, h)] for item, h in zip(items, hashes)]).astype(np.float32)
