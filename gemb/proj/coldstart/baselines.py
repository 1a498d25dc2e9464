"""Baseline exploration policies with the same budget, rounds and engagement feedback as the
discoverability allocation.

All are `simulator.RoundPolicy` functions: (round_index, impressions [N], clicks [N], round_budget,
rng) -> new impressions [N] int64 summing to the round budget.
  uniform:  every item gets an equal share of the round (the remainder to random items).
  random:   the round's budget in chunks of `chunk` impressions, each to a uniformly random item.
  thompson: Beta-Bernoulli Thompson sampling on the engagement rate, batched: one posterior draw per
            item and round, chunks to the items with the highest draws.
  ucb:      UCB1 on the engagement rate, chunks to the items with the highest upper bounds.
The bandits maximise engagement and know nothing of content; their Beta prior (Thompson) is
centred on the pooled engagement rate of past days, the same logs the discoverability model learns
from.
"""
import numpy as np

from gemb.proj.coldstart import simulator


def _chunks_to_top(index: np.ndarray, round_budget: int, chunk: int,
                   rng: np.random.Generator) -> np.ndarray:
  """Spends `round_budget` in chunks on the items with the highest `index` [N] (ties at random).

  With more chunks than items every item gets the same number of chunks and the highest-index items
  one more; impressions left over (budget not a multiple of `chunk`) go to the top item.
  """
  if chunk < 1:
    raise ValueError(f"baselines.chunk must be >= 1 impression; got {chunk}.")
  num_items = len(index)
  order = np.lexsort((rng.random(num_items), -index))  # by index descending, random among ties
  units, leftover = divmod(round_budget, chunk)
  per_item, extra = divmod(units, num_items)
  increments = np.full(num_items, per_item * chunk, np.int64)
  increments[order[:extra]] += chunk
  increments[order[0]] += leftover
  return increments


def uniform_policy() -> simulator.RoundPolicy:
  def round_policy(round_index, impressions, clicks, round_budget, rng):
    num_items = len(impressions)
    per_item, extra = divmod(round_budget, num_items)
    increments = np.full(num_items, per_item, np.int64)
    increments[rng.choice(num_items, size=extra, replace=False)] += 1
    return increments
  return round_policy


def random_policy(chunk: int) -> simulator.RoundPolicy:
  def round_policy(round_index, impressions, clicks, round_budget, rng):
    units, leftover = divmod(round_budget, chunk)
    num_items = len(impressions)
    increments = np.bincount(rng.integers(num_items, size=units),
                             minlength=num_items).astype(np.int64) * chunk
    increments[rng.integers(num_items)] += leftover
    return increments
  return round_policy


def thompson_policy(chunk: int, prior_rate: float,
                    prior_impressions: float) -> simulator.RoundPolicy:
  """Beta(prior_rate * s, (1 - prior_rate) * s) prior with strength s = prior_impressions."""
  alpha0, beta0 = prior_rate * prior_impressions, (1.0 - prior_rate) * prior_impressions

  def round_policy(round_index, impressions, clicks, round_budget, rng):
    draws = rng.beta(alpha0 + clicks, beta0 + impressions - clicks)
    return _chunks_to_top(draws, round_budget, chunk, rng)
  return round_policy


def ucb_policy(chunk: int, exploration: float) -> simulator.RoundPolicy:
  """UCB1: mean + exploration * sqrt(2 log(total impressions) / impressions); unseen items first."""
  def round_policy(round_index, impressions, clicks, round_budget, rng):
    total = max(int(impressions.sum()), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
      index = clicks / impressions + exploration * np.sqrt(2.0 * np.log(total) / impressions)
    index = np.where(impressions > 0, index, np.inf)
    return _chunks_to_top(index, round_budget, chunk, rng)
  return round_policy


def make_policy(name: str, baselines_config, chunk: int,
                prior_rate: float) -> simulator.RoundPolicy:
  """The baseline called `name` ('uniform', 'random', 'thompson' or 'ucb')."""
  if name == "uniform":
    return uniform_policy()
  if name == "random":
    return random_policy(chunk)
  if name == "thompson":
    return thompson_policy(chunk, prior_rate, baselines_config.thompson_prior_impressions)
  if name == "ucb":
    return ucb_policy(chunk, baselines_config.ucb_exploration)
  raise ValueError(f"unknown baseline {name!r}; choose one of 'uniform', 'random', 'thompson', "
                   "'ucb'.")
