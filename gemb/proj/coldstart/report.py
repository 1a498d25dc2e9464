"""The cold-start report: the discoverability allocation against the baselines over budget levels;
JSON and plot.

  run(config, workdir) -> report dict, written to workdir/coldstart/report.json (+ coldstart.png)

Steps: build the world; log past days with randomised traffic and train the discoverability model
on them (ECE on held-out past items), one model per embedding set; on the tuning days pick each
bandit's settings and each discoverability policy's allocation settings per budget level
(tuning.py); then every policy explores every evaluation day at every budget level with the
same budget, rounds, feedback and engagement seed, and exploitation decides which items became
discoverable. The model reads the embedding, a Matryoshka prefix of it
(config.model.embedding_dims) or one ridge content score fitted on the history
(config.model.content='score'). Synthetic worlds have one discoverability policy
('discoverability'); a ToyWorld content world (content.py) one per embedding variant
('discoverability/trained', ...). With config.seeds = (s0, s1, ...) the study runs once per seed
and reports mean and std.
"""
import copy
import json
import os
import time

import jax
import numpy as np
from sklearn import metrics

from gemb.proj.coldstart import allocation, content, discoverability, simulator, tuning

BASELINES = ("uniform", "random", "thompson", "ucb")
POLICIES = ("discoverability", *BASELINES)  # a synthetic world's policies


def _check_config(config):
  ec = config.exploration
  if not ec.budget_per_item:
    raise ValueError("exploration.budget_per_item is empty; give at least one budget level.")
  if min(ec.budget_per_item) < 0:
    raise ValueError(f"exploration.budget_per_item must be >= 0; got {list(ec.budget_per_item)}.")
  if ec.default_budget_per_item not in ec.budget_per_item:
    raise ValueError(f"exploration.default_budget_per_item={ec.default_budget_per_item} must be "
                     f"one of exploration.budget_per_item={list(ec.budget_per_item)}.")
  content_input = config.model.get("content", "embedding")
  if content_input not in ("embedding", "score"):
    raise ValueError(f"config.model.content={content_input!r}; use 'embedding' or 'score'")
  wc = config.world
  if wc.items_per_day < 1 or wc.history_days < 1 or wc.tuning_days < 1 or wc.eval_days < 1:
    raise ValueError("world.items_per_day, history_days, tuning_days and eval_days must all be "
                     f">= 1; got {wc.items_per_day}, {wc.history_days}, {wc.tuning_days}, "
                     f"{wc.eval_days}.")


def past_history(config, world: simulator.World) -> tuple[np.ndarray, simulator.History]:
  """(mask [N] of the history days' items, their logs with randomised traffic): what the model and
  the content score are fitted on (rng config.history.seed)."""
  past = world.day < config.world.history_days
  return past, simulator.log_history(np.random.default_rng(config.history.seed),
                                     world.quality[past], config)


def train_model(config, world: simulator.World, embeddings: np.ndarray | None = None):
  """Trains the discoverability model on the history days; returns (model, metrics dict, prior
  rate).

  `embeddings` [N, D] (default world.embeddings) are the items' content features for the model.
  """
  embeddings = world.embeddings if embeddings is None else embeddings
  past, history = past_history(config, world)
  rows = discoverability.training_rows(history, embeddings[past])
  train_rows, validation_rows = discoverability.split_rows(rows, config.model.validation_fraction,
                                                           config.model.seed)
  model, losses = discoverability.train(train_rows, config.model)
  curves = discoverability.predict_curves(model, validation_rows.embeddings,
                                          validation_rows.impressions, validation_rows.clicks)
  probabilities = discoverability.discoverability(curves, validation_rows.traffic)
  labels = validation_rows.labels
  model_metrics = {
      "ece": discoverability.expected_calibration_error(probabilities, labels,
                                                        config.model.ece_bins),
      "auc": float(metrics.roc_auc_score(labels, probabilities)) if 0 < labels.mean() < 1 else None,
      "log_loss": float(metrics.log_loss(labels, probabilities, labels=[0, 1])),
      "reliability": discoverability.reliability(probabilities, labels, config.model.ece_bins),
      "train_loss_per_epoch": losses,
      "train_rows": int(len(train_rows.labels)), "validation_rows": int(len(labels)),
      "history_items": int(past.sum()),
      "history_discoverable_fraction": float(history.discoverable.mean()),
  }
  # The Thompson prior's mean: the pooled engagement rate of the past days' exploration.
  prior_rate = float(history.checkpoint_clicks[:, -1].sum()
                     / max(history.checkpoint_impressions[:, -1].sum(), 1))
  return model, model_metrics, prior_rate


def evaluate(config, world: simulator.World, models: dict, prior_rate: float, bandits: dict,
             embedding_sets: dict | None = None, allocations: dict | None = None) -> list[dict]:
  """Every policy on the evaluation days at every budget level: discoverable items and spend.

  `models` maps each discoverability policy's name to its model; its embeddings are
  `embedding_sets[name]` (default world.embeddings). `bandits` {budget_per_item: {bandit:
  settings}} (tune_bandits); `allocations` {budget_per_item: {policy: settings}}
  (tune_allocation; default config.allocation's).
  """
  embedding_sets = embedding_sets or {name: world.embeddings for name in models}
  policies = (*models, *BASELINES)
  first_eval_day = config.world.history_days + config.world.tuning_days
  levels = []
  for level, budget_per_item in enumerate(config.exploration.budget_per_item):
    results = {name: {"discoverable": 0, "spent": 0, "budget": 0} for name in policies}
    calibration = {name: {"probabilities": [], "labels": []} for name in models}
    for day in range(first_eval_day, first_eval_day + config.world.eval_days):
      cohort = world.day == day
      quality = world.quality[cohort]
      budget = budget_per_item * len(quality)
      for name in policies:
        if name in models:
          embeddings = embedding_sets[name][cohort]
          settings = (allocations or {}).get(budget_per_item, {}).get(name)
          policy = allocation.discoverability_policy(models[name], embeddings,
                                                     tuning.allocation_config(config, settings))
        else:
          policy = tuning.bandit_policy(config, name, bandits[budget_per_item].get(name, {}),
                                  prior_rate)
        # same seed for every policy
        outcome = tuning.explore(config, quality, policy, budget, (2, level, day))
        if name in models:  # calibration where the model is used: its own adaptive allocations
          curves = discoverability.predict_curves(models[name], embeddings, outcome.impressions,
                                                  outcome.clicks)
          calibration[name]["probabilities"].append(
              discoverability.discoverability(curves, outcome.impressions))
          calibration[name]["labels"].append(outcome.discoverable)
        results[name]["discoverable"] += int(outcome.discoverable.sum())
        results[name]["spent"] += int(outcome.impressions.sum())
        results[name]["budget"] += budget
    for result in results.values():
      result["impressions_per_discoverable"] = result["spent"] / max(result["discoverable"], 1)
    ece = {name: discoverability.expected_calibration_error(
        np.concatenate(c["probabilities"]), np.concatenate(c["labels"]), config.model.ece_bins)
           for name, c in calibration.items()}
    levels.append({"budget_per_item": budget_per_item, "policies": results,
                   "model_ece_after_exploration": ece[next(iter(models))],
                   "model_ece_after_exploration_per_policy": ece})
  return levels


def benchmark_allocation(config, model, dim: int, num_items: int | None = None) -> dict:
  """Seconds for one discoverability round (re-score + allocate) on `num_items` synthetic items
  (default `exploration.benchmark_items`), and the items per second that makes."""
  num_items = num_items or config.exploration.benchmark_items
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
          "allocate_seconds": done - scored, "round_seconds": done - start,
          "items_per_second": num_items / (done - start)}


def plot_report(report: dict, path: str) -> None:
  """Discoverable items and exploration cost per budget level for every policy (mean +- std over
  seeds where there are several), and the first discoverability model's calibration."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  levels = report["budget_levels"]
  x = [level["budget_per_item"] for level in levels]
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  for name in report["policies"]:
    style = dict(marker="o", linewidth=2.5 if name.startswith("discoverability") else 1.2)
    if name.endswith("/oracle"):  # a reference (perfect content), not a policy one can deploy
      style.update(linestyle="--", linewidth=1.2, color="gray")
    counts = [level["policies"][name]["discoverable"] for level in levels]
    spread = [level["policies"][name].get("discoverable_std", 0.0) for level in levels]
    axes[0].errorbar(x, counts, yerr=spread if any(spread) else None, label=name, capsize=3,
                     **style)
    axes[1].plot(x, [level["policies"][name]["impressions_per_discoverable"] for level in levels],
                 label=name, **style)
  seeds = report.get("seeds") or []
  axes[0].set(xscale="log", xlabel="exploration budget (impressions per fresh item)",
              ylabel="discoverable items" + (f" (mean +- std, {len(seeds)} seeds)"
                                             if len(seeds) > 1 else ""),
              title="Discoverable items at equal budget")
  axes[1].set(xscale="log", xlabel="exploration budget (impressions per fresh item)",
              ylabel="exploration impressions spent per discoverable item",
              title="Exploration cost")
  for ax in axes[:2]:
    ax.minorticks_off()
    ax.set_xticks(x, [str(v) for v in x])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  rel = report["model"]["reliability"]
  seen = [i for i, count in enumerate(rel["count"]) if count > 0]
  axes[2].plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
  axes[2].plot([rel["predicted"][i] for i in seen], [rel["observed"][i] for i in seen], marker="o")
  axes[2].set(xlabel="predicted P(discoverable)", ylabel="observed frequency",
              title=f"{report['policies'][0]} model calibration (ECE {report['model']['ece']:.4f})")
  axes[2].grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _print_table(report: dict) -> None:
  policies = report["policies"]
  widths = [max(10, len(name) + 2) for name in policies]
  print("budget/item " + "".join(f"{name:>{w}}" for name, w in zip(policies, widths))
        + "   first/uniform")
  for level in report["budget_levels"]:
    cells, counts = [], []
    for name in policies:
      result = level["policies"][name]
      counts.append(result["discoverable"])
      std = f"+-{result['discoverable_std']:.0f}" if "discoverable_std" in result else ""
      cells.append(f"{result['discoverable']:.0f}{std}")
    ratio = counts[0] / max(level["policies"]["uniform"]["discoverable"], 1)
    print(f"{level['budget_per_item']:>11} " + "".join(f"{c:>{w}}" for c, w in zip(cells, widths))
          + f"   {ratio:.2f}x")
  print(f"{policies[0]} model ECE {report['model']['ece']:.4f}, AUC {report['model']['auc']}")
  for level in report["budget_levels"]:
    if "paired_difference" in level:
      paired = level["paired_difference"]
      print(f"{paired['policy']} minus, paired by seed at {level['budget_per_item']}/item: "
            + ", ".join(f"{name} {d['mean']:+.0f}+-{d['std']:.0f} ({d['wins']}/{d['seeds']} "
                        "seeds ahead)" for name, d in paired["minus"].items()))
  for name, scores in (report.get("taste_probe_r2") or {}).items():
    print(f"taste probe (held-out ridge R^2) of {name}: "
          + ", ".join(f"{kind} {r2:.2f}" for kind, r2 in scores.items()))
  for budget, shares in report.get("content_headroom_captured", {}).items():
    print(f"content headroom captured at {budget}/item (oracle - no_content = 1): "
          + ", ".join(f"{name} {share:.2f}" for name, share in shares.items()))
  for budget, chosen in report.get("allocation_settings", {}).items():
    print(f"allocation tuned at {budget}/item: "
          + "; ".join(f"{name} {settings}" for name, settings in chosen.items()))


def content_headroom(levels: list[dict]) -> dict:
  """{budget_per_item: {policy: (its discoverable - no content's) / (oracle's - no content's)}}:
  the share of what perfect content adds over engagement alone that each embedding's policy
  gets; {} without the no_content and oracle variants."""
  none, oracle = "discoverability/no_content", "discoverability/oracle"
  shares = {}
  for level in levels:
    found = {name: result["discoverable"] for name, result in level["policies"].items()}
    if none not in found or oracle not in found or found[oracle] <= found[none]:
      continue
    shares[str(level["budget_per_item"])] = {
        name: (count - found[none]) / (found[oracle] - found[none]) for name, count in found.items()
        if name.startswith("discoverability/") and name not in (none, oracle)}
  return shares


def seeded(config, seed: int):
  """The config of seed `seed` of a multi-seed study: world, history, exploration and model seeds
  moved by 1000 * seed (seed 0 is the config itself)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for block in ("world", "history", "exploration", "model"):
      config[block].seed = config[block].seed + 1000 * int(seed)
  return config


def model_input(embeddings: np.ndarray, dims: int) -> np.ndarray:
  """What the discoverability model reads of an embedding [N, D]: all of it (dims 0, or dims >= D),
  or its first `dims` coordinates (a Matryoshka prefix) re-normalised to unit length."""
  if dims < 0:
    raise ValueError(f"config.model.embedding_dims={dims}; use 0 (all) or a prefix length >= 1")
  if not dims or dims >= embeddings.shape[1]:
    return embeddings
  prefix = np.asarray(embeddings[:, :dims], np.float64)
  norm = np.linalg.norm(prefix, axis=1, keepdims=True)
  return (prefix / np.maximum(norm, 1e-12)).astype(np.float32)


def content_features(config, world: simulator.World, embeddings: np.ndarray
                     ) -> tuple[np.ndarray, discoverability.ContentScorer | None]:
  """What the discoverability model reads of `embeddings` [N, D] in `world`, and the ridge scorer
  behind it (None without one): model_input's prefix (config.model.embedding_dims), then with
  config.model.content='score' one content feature, the engagement logit a ridge regression
  predicts from it (fitted on the history days' logs, out of fold there;
  discoverability.content_scores). A one-column input (no content's constant, the oracle's
  taste) is read as it is."""
  inputs = model_input(embeddings, int(config.model.get("embedding_dims", 0)))
  if (config.model.get("content", "embedding") != "score" or inputs.shape[1] == 1
      or np.ptp(inputs, axis=0).max() == 0):
    return inputs, None
  past, history = past_history(config, world)
  return discoverability.content_scores(inputs, past, history, seed=config.model.seed)


def study(config, world: simulator.World, embedding_sets: dict) -> dict:
  """One world: a discoverability model per embedding set, the bandits' settings and the
  allocation's (each tuned on the tuning days), every policy's outcomes at every budget level."""
  start = time.perf_counter()
  embedding_sets = {name: content_features(config, world, e)[0]
                    for name, e in embedding_sets.items()}
  models, model_metrics = {}, {}
  for name, embeddings in embedding_sets.items():
    models[name], model_metrics[name], prior_rate = train_model(config, world, embeddings)
  seconds = {"train_model": time.perf_counter() - start}
  chunks = tuning.tune_bandits(config, world, prior_rate)
  seconds["tune_bandits"] = time.perf_counter() - start - seconds["train_model"]
  allocations = tuning.tune_allocation(config, world, models, embedding_sets)
  seconds["tune_allocation"] = time.perf_counter() - start - sum(seconds.values())
  levels = evaluate(config, world, models, prior_rate, chunks, embedding_sets, allocations)
  seconds["evaluate"] = time.perf_counter() - start - sum(seconds.values())
  first_eval_day = config.world.history_days + config.world.tuning_days
  return {"levels": levels, "models": models, "model_metrics": model_metrics,
          "prior_rate": prior_rate, "chunks": chunks, "allocations": allocations,
          "seconds": seconds,
          "eval_items_with_quality_above_threshold": int(
              (world.quality[world.day >= first_eval_day] >= config.recommender.threshold).sum())}


def _aggregate_levels(per_seed: list[list[dict]]) -> list[dict]:
  """Budget levels with each policy's mean over seeds, its std and the per-seed counts, and the
  first policy's paired differences to each other one (seed by seed: the same world, days and
  engagement draws), their mean, std and the seeds it found more items on."""
  levels = []
  for at_level in zip(*per_seed):
    policies = {}
    names = list(at_level[0]["policies"])
    counts = {name: np.array([level["policies"][name]["discoverable"] for level in at_level],
                             np.float64) for name in names}
    paired = {}
    for name in names[1:]:
      difference = counts[names[0]] - counts[name]
      paired[name] = {"mean": float(difference.mean()), "std": float(difference.std()),
                      "wins": int((difference > 0).sum()), "seeds": len(difference)}
    for name in names:
      found = counts[name]
      spent = np.array([level["policies"][name]["spent"] for level in at_level], np.float64)
      policies[name] = {"discoverable": float(found.mean()), "discoverable_std": float(found.std()),
                        "discoverable_per_seed": found.astype(int).tolist(),
                        "spent": float(spent.mean()),
                        "budget": at_level[0]["policies"][name]["budget"],
                        "impressions_per_discoverable": float(spent.mean()
                                                              / max(found.mean(), 1.0))}
    levels.append({"budget_per_item": at_level[0]["budget_per_item"], "policies": policies,
                   "paired_difference": {"policy": names[0], "minus": paired},
                   "model_ece_after_exploration": float(np.mean(
                       [level["model_ece_after_exploration"] for level in at_level]))})
  return levels


def _worlds(config, workdir: str):
  """(make, probe) for the configured world source: make(config) -> (World, {policy name:
  embeddings}); probe(config) -> content.taste_probe of a content world's embeddings, or None."""
  source = config.world.get("source", "synthetic")
  if source == "toyworld":
    items = content.toyworld_catalogue(config)
    sets = content.embedding_sets(config, items, workdir)
    return (lambda c: content.make_world(c, items, sets),
            lambda c: content.taste_probe(c, items, sets))
  if source != "synthetic":
    raise ValueError(f"config.world.source={source!r}; use 'synthetic' or 'toyworld'")

  def make(c):
    world = simulator.make_world(c)
    return world, {"discoverability": world.embeddings}
  return make, lambda c: None


def _mean_probe(probes: list[dict | None]) -> dict | None:
  """{name: {kind: mean R^2 over seeds}} of per-seed taste probes (None for synthetic worlds)."""
  if probes[0] is None:
    return None
  return {name: {kind: float(np.mean([p[name][kind] for p in probes])) for kind in scores}
          for name, scores in probes[0].items()}


def run(config, workdir: str) -> dict:
  """Runs the whole cold-start study; writes workdir/coldstart/report.json and coldstart.png."""
  import matplotlib

  _check_config(config)
  # the service path: allocate a day's traffic to a platform's catalogue
  if config.get("catalogue"):
    from gemb.proj.coldstart import service  # pylint: disable=g-import-not-at-top
    return service.run(config, workdir)
  start = time.perf_counter()
  make, probe = _worlds(config, workdir)
  seconds = {"embed": time.perf_counter() - start}
  seeds = tuple(config.get("seeds") or ())
  studies = []
  for seed in seeds or (None,):
    seed_config = config if seed is None else seeded(config, seed)
    world, embedding_sets = make(seed_config)
    studies.append(study(seed_config, world, embedding_sets))
    studies[-1]["taste_probe"] = probe(seed_config)
    if seed is not None:
      print(f"[coldstart] seed {seed}: " + ", ".join(
          f"{name} {result['discoverable']}" for name, result in next(
              level for level in studies[-1]["levels"] if level["budget_per_item"] ==
              config.exploration.default_budget_per_item)["policies"].items()), flush=True)
  first = studies[0]
  policies = list(first["levels"][0]["policies"])
  main_policy = policies[0]
  for key in first["seconds"]:
    seconds[key] = sum(s["seconds"][key] for s in studies)
  benchmark = (benchmark_allocation(config, first["models"][main_policy],
                                    next(iter(embedding_sets.values())).shape[1])
               if config.exploration.benchmark_items else None)
  levels = (first["levels"] if len(studies) == 1
            else _aggregate_levels([s["levels"] for s in studies]))

  default = next(level for level in levels
                 if level["budget_per_item"] == config.exploration.default_budget_per_item)
  discoverable = {name: default["policies"][name]["discoverable"] for name in policies}
  best_bandit = max(("thompson", "ucb"), key=lambda name: discoverable[name])
  best_baseline = max(BASELINES, key=lambda name: discoverable[name])
  eval_items = int(config.world.items_per_day * config.world.eval_days)
  report = {
      "discoverable": discoverable,
      "policies": policies,
      "ratio_to_uniform": {name: discoverable[name] / max(discoverable["uniform"], 1)
                           for name in policies},
      "ratio_to_best_bandit": discoverable[main_policy] / max(discoverable[best_bandit], 1),
      "best_bandit": best_bandit,
      "ratio_to_best_baseline": discoverable[main_policy] / max(discoverable[best_baseline], 1),
      "best_baseline": best_baseline,
      "default_budget_per_item": config.exploration.default_budget_per_item,
      "eval_items": eval_items,
      "eval_items_with_quality_above_threshold": first["eval_items_with_quality_above_threshold"],
      "budget_levels": levels,
      "bandit_chunk": {str(k): {name: v["chunk"] for name, v in at.items()}
                       for k, at in first["chunks"].items()},
      "bandit_settings": {str(k): v for k, v in first["chunks"].items()},
      "allocation_settings": {str(k): v for k, v in first["allocations"].items()},
      "thompson_prior_rate": first["prior_rate"],
      "model": first["model_metrics"][main_policy],
      "models": first["model_metrics"],
      "ece": first["model_metrics"][main_policy]["ece"],
      "allocation_benchmark": benchmark,
      "content_headroom_captured": content_headroom(levels),
      "taste_probe_r2": _mean_probe([s["taste_probe"] for s in studies]),
      "seconds": {**seconds, "total": time.perf_counter() - start},
      "versions": {"jax": jax.__version__, "numpy": np.__version__,
                   "matplotlib": matplotlib.__version__},
      "config": config.to_dict(),
  }
  if seeds:
    report["seeds"] = list(seeds)
    report["discoverable_std"] = {name: default["policies"][name]["discoverable_std"]
                                  for name in policies}
    report["per_seed"] = [{"seed": seed, "budget_levels": s["levels"],
                           "ece": {name: m["ece"] for name, m in s["model_metrics"].items()},
                           "auc": {name: m["auc"] for name, m in s["model_metrics"].items()},
                           "bandit_settings": {str(k): v for k, v in s["chunks"].items()},
                           "allocation_settings": {str(k): v for k, v in s["allocations"].items()},
                           "taste_probe_r2": s["taste_probe"]}
                          for seed, s in zip(seeds, studies)]
  out_dir = os.path.join(workdir, "coldstart")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2,
              default=lambda value: list(value) if isinstance(value, tuple) else str(value))
  plot_report(report, os.path.join(out_dir, "coldstart.png"))
  _print_table(report)
  return report
