"""The service path: a platform's catalogue in, a day's exploration traffic per item out.

  python -m launch.main --config=configs/proj/coldstart.py --workdir=DIR \\
      --config.items=catalogue.jsonl --config.bundle=BUNDLE

1. reads the catalogue (catalogue.py) and embeds it through the serving bundle (cached by id);
2. trains the discoverability model on logs of the simulated ToyWorld platform whose past items
   the same bundle embeds (a platform with its own exploration logs would train on those);
3. allocates the day's budget (`service.budget_per_item` * items) with the engagement seen so far
   (`service.engagement`, JSONL of {"item_id", "impressions", "clicks"}; none: a fresh day);
4. writes one row per item: item_id, impressions (new today), p_discoverable (at its total
   traffic after them), to WORKDIR/coldstart/allocation.jsonl (or .csv), and a summary JSON.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import time

import numpy as np

from gemb.proj.coldstart import (allocation, catalogue, content, discoverability, embedder,
                                 report, simulator)


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


def train_on_simulated_logs(config, encoder: embedder.ItemEncoder, cache_dir: str):
  """The discoverability model trained on `service.history_items` past ToyWorld items embedded
  by `encoder`, with quality from the simulated users' taste: (model, metrics, features), where
  features maps the catalogue's embeddings to what the model reads (config.model.embedding_dims
  and config.model.content, as in the study)."""
  items = content.toyworld_catalogue(config, config.service.history_items, seed_offset=1)
  embeddings = embedder.embed_items(encoder, items, batch_size=config.embedder.batch_size,
                                    combine=config.embedder.combine, cache_dir=cache_dir)
  quality = content.scene_quality(config, [item.scene for item in items],
                                  np.random.default_rng(config.world.seed))
  history_config = copy.deepcopy(config)
  with history_config.unlocked():
    history_config.world.history_days = 1
  dims = int(config.model.get("embedding_dims", 0))
  embeddings = report.model_input(embeddings, dims)
  features = lambda e: report.model_input(e, dims)
  if config.model.get("content", "embedding") == "score":
    history = simulator.log_history(np.random.default_rng(config.history.seed), quality, history_config)
    scorer = discoverability.fit_content_scorer(embeddings, history)
    embeddings = discoverability.content_scores(embeddings, np.ones(len(items), bool), history,
                                                seed=config.model.seed)
    features = lambda e: scorer(report.model_input(e, dims))[:, None].astype(np.float32)
  world = simulator.World(embeddings, quality, np.zeros(len(items), np.int32))
  model, model_metrics, _ = report.train_model(history_config, world)
  return model, model_metrics, features


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
        f.write(json.dumps({"item_id": i, "impressions": int(n), "p_discoverable": round(float(p), 6)}) + "\n")
  os.replace(partial, path)


def run(config, workdir: str) -> dict:
  """The service path (see the module docstring); returns the summary it writes."""
  start = time.perf_counter()
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
  model, model_metrics, features = train_on_simulated_logs(config, encoder, cache_dir)
  embeddings = features(embeddings)
  trained = time.perf_counter()
  ids = [item.item_id for item in items]
  impressions, clicks = read_engagement(config.service.engagement, {i: k for k, i in enumerate(ids)})
  budget = int(config.service.budget_per_item * len(items))
  curves = discoverability.predict_curves(model, embeddings, impressions, clicks)
  increments, state = allocation.allocate_round(curves, impressions, budget, config.allocation)
  p_discoverable = discoverability.discoverability(curves, impressions + increments)
  allocated = time.perf_counter()
  out_dir = os.path.join(workdir, "coldstart")
  output = config.service.output or os.path.join(out_dir, "allocation.jsonl")
  write_allocation(output, ids, increments, p_discoverable)
  summary = {
      "items": len(items), "budget": budget, "allocated": int(increments.sum()),
      "funded_items": int((increments > 0).sum()), "expected_discoverable": float(p_discoverable.sum()),
      "item_states": state, "output": os.path.abspath(output), "bundle": os.path.abspath(embedder_config.bundle),
      "model": {k: model_metrics[k] for k in ("ece", "auc", "history_items")},
      "seconds": {"embed": embedded - start, "train_model": trained - embedded,
                  "allocate": allocated - trained},
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "service.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"[coldstart service] {summary['allocated']}/{budget} impressions to "
        f"{summary['funded_items']} of {len(items)} items, expected discoverable "
        f"{summary['expected_discoverable']:.0f}; wrote {output}", flush=True)
  return summary
