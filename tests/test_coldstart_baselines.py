"""Baseline exploration policies: equal budget, and each one's defining choice."""
import ml_collections
import numpy as np
import pytest

from gemb.proj.coldstart import baselines

BASELINES = ml_collections.ConfigDict(dict(thompson_prior_impressions=20.0, ucb_exploration=1.0))


@pytest.mark.parametrize("name", ["uniform", "random", "thompson", "ucb"])
@pytest.mark.parametrize("round_budget", [0, 3, 97, 1000, 12_345])
def test_baselines_spend_exactly_the_round_budget(name, round_budget):
  rng = np.random.default_rng(0)
  impressions = rng.integers(0, 50, 200)
  clicks = rng.binomial(impressions, 0.1)
  policy = baselines.make_policy(name, BASELINES, chunk=10, prior_rate=0.1)
  increments = policy(1, impressions, clicks, round_budget, rng)
  assert increments.dtype == np.int64 and increments.min() >= 0
  assert increments.sum() == round_budget


def test_uniform_shares_within_one_impression():
  increments = baselines.uniform_policy()(0, np.zeros(7, np.int64), np.zeros(7, np.int64), 30,
                                          np.random.default_rng(0))
  assert sorted(increments.tolist()) == [4, 4, 4, 4, 4, 5, 5]


def test_ucb_tries_unseen_items_first():
  impressions = np.array([100, 0, 50, 0, 10])
  clicks = np.array([90, 0, 40, 0, 9])  # seen items look great, yet the unseen come first
  increments = baselines.ucb_policy(chunk=5, exploration=1.0)(0, impressions, clicks, 10,
                                                              np.random.default_rng(0))
  np.testing.assert_array_equal(increments, [0, 5, 0, 5, 0])


def test_ucb_index_by_hand():
  # index = mean + sqrt(2 ln 250 / n), 250 impressions in all: item 0: 0.5 + 0.332 = 0.832;
  # item 1: 0.3 + 0.470 = 0.770; item 2: 0.1 + 0.332 = 0.432 -> the one chunk goes to item 0.
  impressions = np.array([100, 50, 100])
  clicks = np.array([50, 15, 10])
  increments = baselines.ucb_policy(chunk=4, exploration=1.0)(0, impressions, clicks, 4,
                                                              np.random.default_rng(0))
  np.testing.assert_array_equal(increments, [4, 0, 0])
  # With exploration 3 the less-seen item 1 wins: 0.3 + 3 * 0.470 = 1.71 > 0.5 + 3 * 0.332 = 1.50.
  increments = baselines.ucb_policy(chunk=4, exploration=3.0)(0, impressions, clicks, 4,
                                                              np.random.default_rng(0))
  np.testing.assert_array_equal(increments, [0, 4, 0])


def test_thompson_follows_the_posterior():
  # With 10^5 impressions the posteriors are sharp: the chunks go to the two best items.
  impressions = np.full(5, 100_000)
  clicks = (impressions * np.array([0.05, 0.3, 0.1, 0.25, 0.01])).astype(np.int64)
  rng = np.random.default_rng(0)
  increments = baselines.thompson_policy(chunk=3, prior_rate=0.1, prior_impressions=20.0)(
      0, impressions, clicks, 6, rng)
  np.testing.assert_array_equal(increments, [0, 3, 0, 3, 0])
  # With no data the draws come from the prior: over many rounds every item is chosen about equally.
  counts = sum(baselines.thompson_policy(1, 0.1, 20.0)(0, np.zeros(5, np.int64),
                                                       np.zeros(5, np.int64), 1, rng)
               for _ in range(5000))
  np.testing.assert_allclose(counts / 5000, 0.2, atol=0.03)


def test_random_spreads_chunks_uniformly():
  rng = np.random.default_rng(0)
  increments = baselines.random_policy(chunk=2)(0, np.zeros(10, np.int64), np.zeros(10, np.int64),
                                                200_000, rng)
  assert (increments % 2 == 0).all()
  np.testing.assert_allclose(increments / 20_000, 1.0, atol=0.03)  # 10_000 chunks each, +- 3%


def test_unknown_baseline_and_bad_chunk_are_errors():
  with pytest.raises(ValueError, match="unknown baseline"):
    baselines.make_policy("epsilon", BASELINES, chunk=5, prior_rate=0.1)
  with pytest.raises(ValueError, match="chunk must be >= 1"):
    baselines.thompson_policy(0, 0.1, 20.0)(0, np.zeros(3, np.int64), np.zeros(3, np.int64), 5,
                                            np.random.default_rng(0))
