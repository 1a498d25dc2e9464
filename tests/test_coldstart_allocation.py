"""The discoverability allocation: budget, the brute-force optimum with an oracle model, stopping
rules."""
import itertools
import time

import ml_collections
import numpy as np
import pytest
from flax import nnx

from gemb.proj.coldstart import allocation, discoverability, simulator

RECOMMENDER = ml_collections.ConfigDict(dict(prior_rate=0.05, prior_impressions=20.0,
                                             threshold=0.12, serve_step=25, min_served=100))


def _allocation_config(**overrides):
  values = dict(confidence=0.7, max_traffic_per_item=400, hopeless_probability=0.01,
                steps=(5, 10, 20, 40, 80, 160), max_passes=16)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def _oracle_curves(required: np.ndarray) -> discoverability.Curves:
  """A perfect model of deterministic items: P = 1 from `required` [N] impressions on, 0 before."""
  slope = np.full(len(required), 1e4)
  return discoverability.Curves(offset=-slope * np.log1p(required - 0.5), slope=slope)


def _random_curves(rng, n):
  return discoverability.Curves(offset=rng.normal(-6, 2, n), slope=rng.uniform(0.2, 2.0, n))


def test_fund_by_priority_matches_a_python_loop():
  rng = np.random.default_rng(0)
  for _ in range(50):
    n = int(rng.integers(1, 30))
    priority = rng.random(n)
    need = rng.integers(-2, 20, n)
    budget = int(rng.integers(0, 200))
    reference = np.zeros(n, np.int64)
    left = budget
    for i in sorted(range(n), key=lambda i: -priority[i]):
      reference[i] = min(max(need[i], 0), left)
      left -= reference[i]
    np.testing.assert_array_equal(allocation.fund_by_priority(priority, need, budget), reference)


def test_allocator_never_exceeds_the_budget_or_the_item_cap():
  rng = np.random.default_rng(1)
  config = _allocation_config()
  for budget in [0, 1, 7, 999, 50_000, 10**9]:
    curves = _random_curves(rng, 2000)
    impressions = rng.integers(0, 400, 2000)
    increments, _ = allocation.allocate_round(curves, impressions, budget, config)
    assert increments.min() >= 0
    assert increments.sum() <= budget
    assert (impressions + increments)[increments > 0].max(initial=0) <= config.max_traffic_per_item


def test_allocator_never_exceeds_the_budget_over_rounds():
  rng = np.random.default_rng(2)
  curves = _random_curves(rng, 3000)
  policy = lambda r, impressions, clicks, round_budget, rng: allocation.allocate_round(
      curves, impressions, round_budget, _allocation_config())[0]
  quality = rng.uniform(0.01, 0.3, 3000)
  for budget in [0, 10, 12_345, 10**7]:
    out = simulator.explore(np.random.default_rng(0), quality, policy, budget, 5, RECOMMENDER)
    assert out.impressions.sum() <= budget


def _brute_force_optimum(required, budget, cap):
  """Most items whose required traffic fits the budget together, by trying every subset."""
  best = 0
  for size in range(len(required) + 1):
    for subset in itertools.combinations(range(len(required)), size):
      if sum(required[i] for i in subset) <= budget and all(required[i] <= cap for i in subset):
        best = max(best, size)
  return best


@pytest.mark.parametrize("num_rounds", [1, 3])
def test_oracle_model_reaches_the_brute_force_optimum(num_rounds):
  rng = np.random.default_rng(3)
  config = _allocation_config(max_traffic_per_item=120)
  for _ in range(30):
    required = rng.integers(1, 150, int(rng.integers(3, 9)))  # some beyond the cap of 120
    budget = int(rng.integers(0, required.sum() + 1))
    curves = _oracle_curves(required.astype(np.float64))
    policy = lambda r, impressions, clicks, round_budget, rng: allocation.allocate_round(
        curves, impressions, round_budget, config)[0]
    out = simulator.explore(np.random.default_rng(0), np.full(len(required), 0.1), policy, budget,
                            num_rounds, RECOMMENDER)
    discovered = int((out.impressions >= required).sum())
    assert discovered == _brute_force_optimum(required.tolist(), budget,
                                              config.max_traffic_per_item)


def test_graduated_and_hopeless_items_get_no_more_traffic():
  config = _allocation_config(confidence=0.7, hopeless_probability=0.05, max_traffic_per_item=400)
  # item 0: P(now = 50) = sigmoid(-1 + 0.5 log 51) ~ 0.82 >= 0.7 -> graduated.
  # item 1: P(400) = sigmoid(-12 + 0.5 log 401) ~ 0.0025 < 0.05 -> hopeless.
  # item 2: needs X = exp((logit 0.7 + 9) / 1.5) - 1 ~ 709 > the cap of 400, and it has had the
  #         400 (P ~ 0.50 < 0.7) -> hopeless.
  # item 3: needs X ~ 95 and has had nothing: open; it takes the whole budget of 5.
  curves = discoverability.Curves(offset=np.array([-1.0, -12.0, -9.0, -6.0]),
                                  slope=np.array([0.5, 0.5, 1.5, 1.5]))
  impressions = np.array([50, 0, 400, 0])
  increments, state = allocation.allocate_round(curves, impressions, 5, config)
  np.testing.assert_array_equal(increments[:3], 0)
  assert increments[3] == 5
  assert state == {"graduated": 1, "hopeless": 2, "funded": 1}


def test_discoverability_policy_rejects_nan_embeddings():
  model = discoverability.DiscoverabilityModel(2, (4,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="NaN or infinite"):
    allocation.discoverability_policy(model, np.array([[0.0, 1.0], [np.inf, 0.0]]),
                                      _allocation_config())


def test_negative_round_budget_is_an_error():
  with pytest.raises(ValueError, match="round budget must be >= 0"):
    allocation.allocate_round(_random_curves(np.random.default_rng(0), 3), np.zeros(3, np.int64),
                              -5, _allocation_config())


@pytest.mark.slow
def test_a_round_for_a_million_items_takes_seconds():
  rng = np.random.default_rng(4)
  curves = _random_curves(rng, 1_000_000)
  impressions = rng.integers(0, 100, 1_000_000)
  start = time.perf_counter()
  increments, _ = allocation.allocate_round(curves, impressions, 2_000_000, _allocation_config())
  assert time.perf_counter() - start < 10.0
  assert increments.sum() <= 2_000_000
