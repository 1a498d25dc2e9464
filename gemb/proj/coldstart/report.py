"""The cold-start report: the discoverability allocation against the baselines over budget levels; JSON and plot.

  run(config, workdir) -> report dict, written to workdir/coldstart/report.json (+ coldstart.png)

Steps: build the world; log past days with randomised traffic and train the discoverability model
on them (ECE on held-out past items); pick each bandit's chunk size on the tuning day; then every
policy explores every evaluation day at every budget level with the same budget, rounds, feedback
and engagement seed, and exploitation decides which items became discoverable.
"""
import json
import os
import time

import jax
import numpy as np
from sklearn import metrics

from gemb.proj.coldstart import allocation, baselines, discoverability, simulator

POLICIES = ("discoverability", "uniform", "random", "thompson", "ucb")
CHUNKED = ("random", "thompson", "ucb")  # the baselines that spend in chunks (size tuned)


def _check_config(config):
  ec = config.exploration
  if not ec.budget_per_item:
    raise ValueError("exploration.budget_per_item is empty; give at least one budget level.")
  if min(ec.budget_per_item) < 0:
    raise ValueError(f"exploration.budget_per_item must be >= 0; got {list(ec.budget_per_item)}.")
  if ec.default_budget_per_item not in ec.budget_per_item:
    raise ValueError(f"exploration.default_budget_per_item={ec.default_budget_per_item} must be one of "
                     f"exploration.budget_per_item={list(ec.budget_per_item)}.")
  wc = config.world
  if wc.items_per_day < 1 or wc.history_days < 1 or wc.tuning_days < 1 or wc.eval_days < 1:
    raise ValueError("world.items_per_day, history_days, tuning_days and eval_days must all be >= 1; got "
                     f"{wc.items_per_day}, {wc.history_days}, {wc.tuning_days}, {wc.eval_days}.")


def train_model(config, world: simulator.World):
  """Trains the discoverability model on the history days; returns (model, metrics dict, prior rate)."""
  past = world.day < config.world.history_days
  history = simulator.log_history(np.random.default_rng(config.history.seed), world.quality[past], config)
  rows = discoverability.training_rows(history, world.embeddings[past])
  train_rows, validation_rows = discoverability.split_rows(rows, config.model.validation_fraction,
                                                           config.model.seed)
  model, losses = discoverability.train(train_rows, config.model)
  curves = discoverability.predict_curves(model, validation_rows.embeddings, validation_rows.impressions,
                                          validation_rows.clicks)
  probabilities = discoverability.discoverability(curves, validation_rows.traffic)
  labels = validation_rows.labels
  model_metrics = {
      "ece": discoverability.expected_calibration_error(probabilities, labels, config.model.ece_bins),
      "auc": float(metrics.roc_auc_score(labels, probabilities)) if 0 < labels.mean() < 1 else None,
      "log_loss": float(metrics.log_loss(labels, probabilities, labels=[0, 1])),
      "reliability": discoverability.reliability(probabilities, labels, config.model.ece_bins),
      "train_loss_per_epoch": losses,
      "train_rows": int(len(train_rows.labels)), "validation_rows": int(len(labels)),
      "history_items": int(past.sum()),
      "history_discoverable_fraction": float(history.discoverable.mean()),
  }
  # The Thompson prior's mean: the pooled engagement rate of the past days' exploration.
  prior_rate = float(history.checkpoint_clicks[:, -1].sum() / max(history.checkpoint_impressions[:, -1].sum(), 1))
  return model, model_metrics, prior_rate


def _explore(config, quality, policy, budget, seed_key) -> simulator.Exploration:
  rng = np.random.default_rng([config.exploration.seed, *seed_key])
  return simulator.explore(rng, quality, policy, budget, config.exploration.num_rounds, config.recommender)


def tune_chunks(config, world: simulator.World, prior_rate: float) -> dict:
  """Each chunked baseline's best chunk size per budget level, measured on the tuning day(s)."""
  tuning = (world.day >= config.world.history_days) & (
      world.day < config.world.history_days + config.world.tuning_days)
  quality = world.quality[tuning]
  chosen = {}
  for level, budget_per_item in enumerate(config.exploration.budget_per_item):
    budget = budget_per_item * len(quality)
    chosen[budget_per_item] = {}
    for name in CHUNKED:
      found = {chunk: int(_explore(config, quality, baselines.make_policy(name, config.baselines, chunk, prior_rate),
                                   budget, (1, level)).discoverable.sum())
               for chunk in config.baselines.chunk_choices}
      chosen[budget_per_item][name] = max(found, key=lambda chunk: (found[chunk], -chunk))
  return chosen


def evaluate(config, world: simulator.World, model, prior_rate: float, chunks: dict) -> list[dict]:
  """Every policy on the evaluation days at every budget level: discoverable items and spend."""
  first_eval_day = config.world.history_days + config.world.tuning_days
  levels = []
  for level, budget_per_item in enumerate(config.exploration.budget_per_item):
    results = {name: {"discoverable": 0, "spent": 0, "budget": 0} for name in POLICIES}
    calibration = {"probabilities": [], "labels": []}
    for day in range(first_eval_day, first_eval_day + config.world.eval_days):
      cohort = world.day == day
      quality, embeddings = world.quality[cohort], world.embeddings[cohort]
      budget = budget_per_item * len(quality)
      for name in POLICIES:
        if name == "discoverability":
          policy = allocation.discoverability_policy(model, embeddings, config.allocation)
        else:
          policy = baselines.make_policy(name, config.baselines, chunks[budget_per_item].get(name, 0), prior_rate)
        outcome = _explore(config, quality, policy, budget, (2, level, day))  # same seed for every policy
        if name == "discoverability":  # calibration where the model is used: its own adaptive allocations
          curves = discoverability.predict_curves(model, embeddings, outcome.impressions, outcome.clicks)
          calibration["probabilities"].append(discoverability.discoverability(curves, outcome.impressions))
          calibration["labels"].append(outcome.discoverable)
        results[name]["discoverable"] += int(outcome.discoverable.sum())
        results[name]["spent"] += int(outcome.impressions.sum())
        results[name]["budget"] += budget
    for result in results.values():
      result["impressions_per_discoverable"] = result["spent"] / max(result["discoverable"], 1)
    explored = np.concatenate(calibration["labels"])
    levels.append({"budget_per_item": budget_per_item, "policies": results,
                   "model_ece_after_exploration": discoverability.expected_calibration_error(
                       np.concatenate(calibration["probabilities"]), explored, config.model.ece_bins)})
  return levels


def benchmark_allocation(config, model, dim: int) -> dict:
  """Seconds for one discoverability round (re-score + allocate) on `exploration.benchmark_items` synthetic items."""
  num_items = config.exploration.benchmark_items
  rng = np.random.default_rng(0)
  embeddings = simulator.synthetic_embeddings(rng, num_items, dim, config.world.num_clusters,
                                              config.world.cluster_spread)
  impressions = rng.integers(0, config.allocation.max_traffic_per_item // 4, num_items)
  clicks = rng.binomial(impressions, rng.uniform(0.0, 0.3, num_items))
  budget = config.exploration.default_budget_per_item * num_items // config.exploration.num_rounds
  warm = slice(0, min(num_items, 65536))  # one full scoring batch compiles the forward pass
  discoverability.predict_curves(model, embeddings[warm], impressions[warm], clicks[warm])
  start = time.perf_counter()
  curves = discoverability.predict_curves(model, embeddings, impressions, clicks)
  scored = time.perf_counter()
  allocation.allocate_round(curves, impressions, budget, config.allocation)
  done = time.perf_counter()
  return {"items": num_items, "round_budget": budget, "score_seconds": scored - start,
          "allocate_seconds": done - scored, "round_seconds": done - start}


def plot_report(report: dict, path: str) -> None:
  """Discoverable items and exploration cost per budget level for every policy, and the model's calibration."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  levels = report["budget_levels"]
  x = [level["budget_per_item"] for level in levels]
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  for name in POLICIES:
    style = dict(marker="o", linewidth=2.5 if name == "discoverability" else 1.2)
    axes[0].plot(x, [level["policies"][name]["discoverable"] for level in levels], label=name, **style)
    axes[1].plot(x, [level["policies"][name]["impressions_per_discoverable"] for level in levels],
                 label=name, **style)
  axes[0].set(xscale="log", xlabel="exploration budget (impressions per fresh item)",
              ylabel="discoverable items", title="Discoverable items at equal budget")
  axes[1].set(xscale="log", xlabel="exploration budget (impressions per fresh item)",
              ylabel="exploration impressions spent per discoverable item", title="Exploration cost")
  for ax in axes[:2]:
    ax.minorticks_off()
    ax.set_xticks(x, [str(v) for v in x])
    ax.grid(alpha=0.3)
    ax.legend()
  rel = report["model"]["reliability"]
  seen = [i for i, count in enumerate(rel["count"]) if count > 0]
  axes[2].plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
  axes[2].plot([rel["predicted"][i] for i in seen], [rel["observed"][i] for i in seen], marker="o")
  axes[2].set(xlabel="predicted P(discoverable)", ylabel="observed frequency",
              title=f"Discoverability model calibration (ECE {report['model']['ece']:.4f})")
  axes[2].grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _print_table(report: dict) -> None:
  print("budget/item " + "".join(f"{name:>10}" for name in POLICIES) + "   disc./uniform")
  for level in report["budget_levels"]:
    counts = [level["policies"][name]["discoverable"] for name in POLICIES]
    ratio = counts[0] / max(counts[1], 1)
    print(f"{level['budget_per_item']:>11} " + "".join(f"{c:>10}" for c in counts) + f"   {ratio:.2f}x")
  print(f"discoverability model ECE {report['model']['ece']:.4f}, AUC {report['model']['auc']}")


def run(config, workdir: str) -> dict:
  """Runs the whole cold-start study; writes workdir/coldstart/report.json and coldstart.png."""
  import matplotlib

  _check_config(config)
  start = time.perf_counter()
  seconds = {}
  world = simulator.make_world(config)
  model, model_metrics, prior_rate = train_model(config, world)
  seconds["train_model"] = time.perf_counter() - start
  chunks = tune_chunks(config, world, prior_rate)
  seconds["tune_bandits"] = time.perf_counter() - start - seconds["train_model"]
  levels = evaluate(config, world, model, prior_rate, chunks)
  seconds["evaluate"] = time.perf_counter() - start - seconds["train_model"] - seconds["tune_bandits"]
  benchmark = (benchmark_allocation(config, model, world.embeddings.shape[1])
               if config.exploration.benchmark_items else None)

  default = next(level for level in levels
                 if level["budget_per_item"] == config.exploration.default_budget_per_item)
  discoverable = {name: default["policies"][name]["discoverable"] for name in POLICIES}
  best_bandit = max(("thompson", "ucb"), key=lambda name: discoverable[name])
  best_baseline = max(("uniform", "random", "thompson", "ucb"), key=lambda name: discoverable[name])
  eval_items = int(config.world.items_per_day * config.world.eval_days)
  report = {
      "discoverable": discoverable,
      "ratio_to_uniform": {name: discoverable[name] / max(discoverable["uniform"], 1) for name in POLICIES},
      "ratio_to_best_bandit": discoverable["discoverability"] / max(discoverable[best_bandit], 1),
      "best_bandit": best_bandit,
      "ratio_to_best_baseline": discoverable["discoverability"] / max(discoverable[best_baseline], 1),
      "best_baseline": best_baseline,
      "default_budget_per_item": config.exploration.default_budget_per_item,
      "eval_items": eval_items,
      "eval_items_with_quality_above_threshold": int(
          (world.quality[world.day >= config.world.history_days + config.world.tuning_days]
           >= config.recommender.threshold).sum()),
      "budget_levels": levels,
      "bandit_chunk": {str(k): v for k, v in chunks.items()},
      "thompson_prior_rate": prior_rate,
      "model": model_metrics,
      "ece": model_metrics["ece"],
      "allocation_benchmark": benchmark,
      "seconds": {**seconds, "total": time.perf_counter() - start},
      "versions": {"jax": jax.__version__, "numpy": np.__version__, "matplotlib": matplotlib.__version__},
      "config": config.to_dict(),
  }
  out_dir = os.path.join(workdir, "coldstart")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2, default=lambda value: list(value) if isinstance(value, tuple) else str(value))
  plot_report(report, os.path.join(out_dir, "coldstart.png"))
  _print_table(report)
  return report
