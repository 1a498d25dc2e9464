"""Choosing every policy's settings on the tuning days, never the evaluation days.

Per budget level of config.exploration.budget_per_item: each chunked bandit's chunk size and, where
config.baselines lists candidates, UCB's exploration weight and Thompson's prior strength
(`tune_bandits`); each discoverability policy's allocation settings from
config.allocation_tuning (`tune_allocation`). Each candidate explores the tuning cohort with the
same engagement seeds; the most discoverable items wins.
"""
import itertools

import ml_collections
import numpy as np

from gemb.proj.coldstart import allocation, baselines, simulator

CHUNKED = ("random", "thompson", "ucb")  # the baselines that spend in chunks (size tuned)


def explore(config, quality, policy, budget, seed_key) -> simulator.Exploration:
  """One cohort explored by `policy` within `budget`, config.exploration.num_rounds rounds, its
  engagement drawn from the rng [config.exploration.seed, *seed_key]."""
  rng = np.random.default_rng([config.exploration.seed, *seed_key])
  return simulator.explore(rng, quality, policy, budget, config.exploration.num_rounds,
                           config.recommender)


def tuning_cohort(config, world: simulator.World) -> np.ndarray:
  """Mask [N] of the tuning days' items: after the history, before every evaluation day."""
  return (world.day >= config.world.history_days) & (
      world.day < config.world.history_days + config.world.tuning_days)


def grid(choices: dict) -> list[dict]:
  """Every combination of `choices` ({setting: candidate values}; empty candidates are left out)."""
  names = [name for name, values in choices.items() if len(values)]
  if not names:
    return []
  return [dict(zip(names, values))
          for values in itertools.product(*(tuple(choices[n]) for n in names))]


def bandit_grid(config, name: str) -> list[dict]:
  """The candidate settings of bandit `name`: chunk sizes, and UCB's / Thompson's constants."""
  bc = config.baselines
  choices = {"chunk": tuple(bc.chunk_choices)}
  if name == "ucb":
    choices["ucb_exploration"] = tuple(bc.get("ucb_exploration_choices") or (bc.ucb_exploration,))
  if name == "thompson":
    choices["thompson_prior_impressions"] = tuple(
        bc.get("thompson_prior_choices") or (bc.thompson_prior_impressions,))
  return grid(choices)


def bandit_policy(config, name: str, settings: dict, prior_rate: float) -> simulator.RoundPolicy:
  """Bandit `name` with `settings` (its chunk and constants) over config.baselines."""
  baselines_config = ml_collections.ConfigDict(
      {**config.baselines.to_dict(), **{k: v for k, v in settings.items() if k != "chunk"}})
  return baselines.make_policy(name, baselines_config, settings.get("chunk", 0), prior_rate)


def tune_bandits(config, world: simulator.World, prior_rate: float) -> dict:
  """Each chunked baseline's best settings per budget level, measured on the tuning day(s) only:
  {budget_per_item: {name: {"chunk": c, ...}}}: the chunk size (baselines.chunk_choices) and, where
  candidates are given, UCB's exploration weight and Thompson's prior strength. Ties: smaller
  values."""
  quality = world.quality[tuning_cohort(config, world)]
  chosen = {}
  for level, budget_per_item in enumerate(config.exploration.budget_per_item):
    budget = budget_per_item * len(quality)
    chosen[budget_per_item] = {}
    for name in CHUNKED:
      candidates = bandit_grid(config, name)
      found = [int(explore(config, quality, bandit_policy(config, name, settings, prior_rate),
                           budget, (1, level)).discoverable.sum()) for settings in candidates]
      best = max(range(len(candidates)),
                 key=lambda i: (found[i], [-v for v in candidates[i].values()]))
      chosen[budget_per_item][name] = candidates[best]
  return chosen


def allocation_config(config, settings: dict | None = None) -> ml_collections.ConfigDict:
  """config.allocation with `settings` (tuned values) in place of its own."""
  return ml_collections.ConfigDict({**config.allocation.to_dict(), **(settings or {})})


def tune_allocation(config, world: simulator.World, models: dict, embedding_sets: dict) -> dict:
  """The discoverability allocation's best settings per budget level and policy, measured on the
  tuning day(s) only (as the bandits' chunks are): {budget_per_item: {name: {setting: value}}}.

  The candidates are config.allocation_tuning ({setting of config.allocation: values}); settings
  without candidates keep config.allocation's value; no candidates at all: {} (nothing tuned). Each
  candidate explores the tuning cohort with the seeds the bandits' tuning uses; the most
  discoverable items wins, ties to the earliest candidate.
  """
  candidates = grid(dict(config.get("allocation_tuning") or {}))
  if not candidates:
    return {}
  unknown = set(candidates[0]) - set(config.allocation)
  if unknown:
    raise ValueError(f"config.allocation_tuning names {sorted(unknown)}, which config.allocation "
                     f"does not have ({sorted(config.allocation)})")
  cohort = tuning_cohort(config, world)
  quality = world.quality[cohort]
  chosen = {}
  for level, budget_per_item in enumerate(config.exploration.budget_per_item):
    budget = budget_per_item * len(quality)
    chosen[budget_per_item] = {}
    for name, model in models.items():
      embeddings = embedding_sets[name][cohort]
      found = [int(explore(config, quality,
                           allocation.discoverability_policy(
                               model, embeddings, allocation_config(config, settings)),
                           budget, (1, level)).discoverable.sum())
               for settings in candidates]
      chosen[budget_per_item][name] = candidates[int(np.argmax(found))]
  return chosen
