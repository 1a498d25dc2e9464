"""The service path: a platform's catalogue in, a day's exploration traffic per item out.

  python -m launch.main --config=configs/proj/coldstart.py --workdir=DIR \\
      --config.items=catalogue.jsonl --config.bundle=BUNDLE

1. reads the catalogue (catalogue.py) and embeds it through the serving bundle (cached by id);
2. fits the discoverability model on logs of the simulated ToyWorld platform whose past items the
   same bundle embeds, and tunes the allocation's settings on more of its items (a platform with
   its own exploration logs would fit on those); the fit is saved (`service.model_dir`) and reused
   by later calls with the same bundle and config;
3. allocates this call's share of the day's budget (`service.budget_per_item` * items, less the
   impressions so far, over the calls left: `service.rounds`, `service.round`) with the
   engagement seen so far (`service.engagement`, JSONL of {"item_id", "impressions",
   "clicks"}; none: a fresh day);
4. writes one row per item: item_id, impressions (new today), p_discoverable (at its total
   traffic after them), to WORKDIR/coldstart/allocation.jsonl (or .csv), and a summary JSON.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import time
from typing import NamedTuple

import ml_collections
import numpy as np

from gemb.proj.coldstart import (allocation, catalogue, content, discoverability, embedder,
                                 report, simulator, tuning)


def read_engagement(path: str, ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
  """(impressions [N], clicks [N]) int64 from the engagement JSONL; errors name the line."""
  impressions = np.zeros(len(ids), np.int64)
  clicks = np.zeros(len(ids), np.int64)
  if not path:
    return impressions, clicks
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        record = json.loads(raw)
        item = ids[record["item_id"]]
        shown, engaged = int(record["impressions"]), int(record["clicks"])
        if not 0 <= engaged <= shown:
          raise ValueError(f"needs 0 <= clicks <= impressions, got {engaged} and {shown}")
      except KeyError as e:
        raise catalogue.CatalogueError(f"{path}:{number}: {e} is missing or not in the "
                                       "catalogue") from None
      except (ValueError, TypeError) as e:
        raise catalogue.CatalogueError(f"{path}:{number}: {e}") from None
      impressions[item], clicks[item] = shown, engaged
  return impressions, clicks


class Fitted(NamedTuple):
  """What the service allocates with: the discoverability model, what it reads of an embedding
  (a Matryoshka prefix, `embedding_dims`; then a content score if `scorer`), the allocation's
  tuned settings, and how the fit measured."""
  model: discoverability.DiscoverabilityModel
  scorer: discoverability.ContentScorer | None
  embedding_dims: int
  settings: dict
  metrics: dict

  def features(self, embeddings: np.ndarray) -> np.ndarray:
    inputs = report.model_input(embeddings, self.embedding_dims)
    if self.scorer is None:
      return inputs
    return self.scorer(inputs)[:, None].astype(np.float32)


def service_config(config) -> ml_collections.ConfigDict:
  """The config the service fits with: config.service.model over config.model, and one world of
  `service.history_items` logged past items (day 0) and `service.tuning_items` items (day 1) on
  which the allocation's settings (`service.allocation_tuning`) are chosen at the service's budget
  (`service.budget_per_item`) spent in `service.rounds` rounds, as the service spends it."""
  sc = config.service
  fit_config = copy.deepcopy(config)
  with fit_config.unlocked():
    fit_config.model.update(sc.model.to_dict())
    fit_config.world.history_days, fit_config.world.tuning_days = 1, 1
    fit_config.exploration.budget_per_item = (sc.budget_per_item,)
    fit_config.exploration.num_rounds = sc.rounds
    fit_config.allocation_tuning = dict(sc.allocation_tuning)
  return fit_config


def fit_key(config, encoder: embedder.ItemEncoder) -> str:
  """A digest of everything the fit depends on: a saved fit with another key is not reused."""
  sc = config.service
  parts = {"encoder": encoder.fingerprint, "combine": config.embedder.combine,
           **{block: config[block].to_dict() for block in ("world", "model", "history",
                                                           "recommender", "allocation")},
           "service": {k: sc[k] for k in ("budget_per_item", "rounds", "history_items",
                                          "tuning_items", "model", "allocation_tuning")}}
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def fit_on_simulated_platform(config, encoder: embedder.ItemEncoder, cache_dir: str) -> Fitted:
  """The model trained on logs of `service.history_items` past ToyWorld items embedded by
  `encoder`, with quality from the simulated users' taste, and the allocation's settings tuned on
  `service.tuning_items` more (report.train_model and tuning.tune_allocation, as in the study).
  A platform with its own exploration logs would fit on those."""
  fit_config = service_config(config)
  sc = config.service
  items = content.toyworld_catalogue(config, sc.history_items + sc.tuning_items, seed_offset=1)
  embeddings = embedder.embed_items(encoder, items, batch_size=config.embedder.batch_size,
                                    combine=config.embedder.combine, cache_dir=cache_dir)
  quality = content.scene_quality(config, [item.scene for item in items],
                                  np.random.default_rng(config.world.seed))
  day = (np.arange(len(items)) >= sc.history_items).astype(np.int32)
  inputs, scorer = report.content_features(fit_config, simulator.World(embeddings, quality, day),
                                           embeddings)
  world = simulator.World(inputs, quality, day)
  model, metrics, _ = report.train_model(fit_config, world)
  tuned = tuning.tune_allocation(fit_config, world, {"service": model}, {"service": inputs})
  settings = tuned.get(sc.budget_per_item, {}).get("service", {})
  metrics = {**{k: metrics[k] for k in ("ece", "auc", "history_items")},
             "tuning_items": int(sc.tuning_items)}
  return Fitted(model, scorer, int(fit_config.model.get("embedding_dims", 0)), settings, metrics)


def save_fitted(fitted: Fitted, directory: str, key: str) -> None:
  """Writes the fit to `directory`: model.npz, content_scorer.npz (with a score) and
  service_model.json (its key, shapes, settings and metrics), the manifest last."""
  os.makedirs(directory, exist_ok=True)
  manifest_path = os.path.join(directory, "service_model.json")
  if os.path.exists(manifest_path):  # no manifest of an old fit beside a half-written new one
    os.remove(manifest_path)
  discoverability.save_model(fitted.model, os.path.join(directory, "model.npz"))
  if fitted.scorer is not None:
    np.savez(os.path.join(directory, "content_scorer.npz"), coef=fitted.scorer.coef,
             intercept=fitted.scorer.intercept)
  model = fitted.model
  input_dim = int(model.feature_mean.shape[0]) - discoverability.NUM_ENGAGEMENT_FEATURES
  manifest = {"key": key, "input_dim": input_dim,
              "hidden_dims": [layer.out_features for layer in model.hidden],
              "embedding_dims": fitted.embedding_dims, "content_score": fitted.scorer is not None,
              "allocation_settings": fitted.settings, "metrics": fitted.metrics}
  partial = os.path.join(directory, "service_model.json.partial")
  with open(partial, "w") as f:
    json.dump(manifest, f, indent=2, default=list)
  os.replace(partial, manifest_path)


def load_fitted(directory: str, key: str) -> Fitted | None:
  """The fit `save_fitted` wrote to `directory` if its key is `key`; None if there is none or it
  was fitted for another bundle or config."""
  path = os.path.join(directory, "service_model.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("key") != key:
    return None
  model = discoverability.load_model(os.path.join(directory, "model.npz"), manifest["input_dim"],
                                     manifest["hidden_dims"])
  scorer = None
  if manifest["content_score"]:
    with np.load(os.path.join(directory, "content_scorer.npz")) as saved:
      scorer = discoverability.ContentScorer(saved["coef"], float(saved["intercept"]))
  return Fitted(model, scorer, manifest["embedding_dims"], manifest["allocation_settings"],
                manifest["metrics"])


def _check_round(service_config) -> tuple[int, int]:
  rounds, index = int(service_config.rounds), int(service_config.round)
  if rounds < 1 or not 0 <= index < rounds:
    raise ValueError(f"config.service.round={index} with config.service.rounds={rounds}: need "
                     "rounds >= 1 and 0 <= round < rounds")
  return rounds, index


def call_budget(day_budget: int, spent: int, service_config) -> int:
  """This call's budget: what is left of the day's after `spent` impressions, over the calls
  left (the last call gets all of it), as simulator.explore splits a day into rounds."""
  rounds, index = _check_round(service_config)
  remaining = max(day_budget - spent, 0)
  return remaining if index == rounds - 1 else remaining // (rounds - index)


def write_allocation(path: str, ids, impressions: np.ndarray, p_discoverable: np.ndarray) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = path + ".partial"
  with open(partial, "w", newline="") as f:
    if path.endswith(".csv"):
      writer = csv.writer(f)
      writer.writerow(["item_id", "impressions", "p_discoverable"])
      writer.writerows((i, int(n), f"{p:.6f}") for i, n, p in zip(ids, impressions, p_discoverable))
    else:
      for i, n, p in zip(ids, impressions, p_discoverable):
        f.write(json.dumps({"item_id": i, "impressions": int(n),
                            "p_discoverable": round(float(p), 6)}) + "\n")
  os.replace(partial, path)


def run(config, workdir: str) -> dict:
  """The service path (see the module docstring); returns the summary it writes."""
  start = time.perf_counter()
  _check_round(config.service)  # before anything is embedded or fitted
  items = catalogue.read_catalogue(config.catalogue)
  embedder_config = copy.deepcopy(config.embedder)
  with embedder_config.unlocked():
    embedder_config.bundle = config.bundle or embedder_config.bundle
  if not embedder_config.bundle:
    raise ValueError("the service path (config.catalogue) embeds through a serving bundle: set "
                     "config.bundle=DIR (python -m launch.main --mode=export writes one)")
  encoder = embedder.item_encoder(embedder_config, "trained")
  cache_dir = content.cache_dir(config, workdir)
  embeddings = embedder.embed_items(encoder, items, batch_size=config.embedder.batch_size,
                                    combine=config.embedder.combine, cache_dir=cache_dir)
  embedded = time.perf_counter()
  model_dir = config.service.model_dir or os.path.join(workdir, "coldstart", "service_model")
  key = fit_key(config, encoder)
  fitted = load_fitted(model_dir, key)
  reused = fitted is not None
  if fitted is None:
    fitted = fit_on_simulated_platform(config, encoder, cache_dir)
    save_fitted(fitted, model_dir, key)
  trained = time.perf_counter()
  ids = [item.item_id for item in items]
  impressions, clicks = read_engagement(config.service.engagement,
                                        {i: k for k, i in enumerate(ids)})
  day_budget = int(config.service.budget_per_item * len(items))
  budget = call_budget(day_budget, int(impressions.sum()), config.service)
  curves = discoverability.predict_curves(fitted.model, fitted.features(embeddings), impressions,
                                          clicks)
  increments, state = allocation.allocate_round(curves, impressions, budget,
                                                tuning.allocation_config(config, fitted.settings))
  p_discoverable = discoverability.discoverability(curves, impressions + increments)
  allocated = time.perf_counter()
  out_dir = os.path.join(workdir, "coldstart")
  output = config.service.output or os.path.join(out_dir, "allocation.jsonl")
  write_allocation(output, ids, increments, p_discoverable)
  summary = {
      "items": len(items), "day_budget": day_budget, "round": int(config.service.round),
      "rounds": int(config.service.rounds), "budget": budget, "allocated": int(increments.sum()),
      "funded_items": int((increments > 0).sum()),
      "expected_discoverable": float(p_discoverable.sum()), "item_states": state,
      "output": os.path.abspath(output), "bundle": os.path.abspath(embedder_config.bundle),
      "model": {**fitted.metrics, "directory": os.path.abspath(model_dir), "reused": reused},
      "allocation_settings": fitted.settings,
      "seconds": {"embed": embedded - start, "fit_or_load_model": trained - embedded,
                  "allocate": allocated - trained},
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "service.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"[coldstart service] {summary['allocated']}/{budget} impressions to "
        f"{summary['funded_items']} of {len(items)} items, expected discoverable "
        f"{summary['expected_discoverable']:.0f}; wrote {output}", flush=True)
  return summary
