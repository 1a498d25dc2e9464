"""The cold-start simulator: engagement, the exploitation recommender, determinism, bad input."""
import ml_collections
import numpy as np
import pytest

from configs.proj import coldstart
from gemb.proj.coldstart import baselines, simulator


def _recommender(**overrides):
  values = dict(prior_rate=0.05, prior_impressions=20.0, threshold=0.12, serve_step=25,
                min_served=100)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def test_click_rate_matches_quality():
  rng = np.random.default_rng(0)
  quality = np.array([0.02, 0.1, 0.4])
  impressions = np.full(3, 200_000)
  clicks = simulator.engage(rng, quality, impressions)
  rate = clicks / impressions
  tolerance = 5 * np.sqrt(quality * (1 - quality) / impressions)  # 5 binomial standard errors
  np.testing.assert_array_less(np.abs(rate - quality), tolerance)


def test_exploitation_follows_the_threshold_rule_by_hand():
  recommender = _recommender()
  # Estimates (clicks + 1) / (impressions + 20) by hand:
  #   item 0: no data, 1/20 = 0.05 < 0.12 -> never served.
  #   item 1: 10/20 -> 11/40 = 0.275 >= 0.12; quality 1 keeps it served for 4 steps of 25 -> 100.
  #   item 2: 10/20 -> served once (25); quality 0 -> 11/65 = 0.169 still >= 0.12 -> served again;
  #           11/90 = 0.122 -> served a third time; 11/115 = 0.096 < 0.12 -> stops at 75.
  quality = np.array([1.0, 1.0, 0.0])
  impressions = np.array([0, 20, 20])
  clicks = np.array([0, 10, 10])
  served, discoverable = simulator.exploit(np.random.default_rng(0), quality, impressions, clicks,
                                           recommender)
  np.testing.assert_array_equal(served, [0, 100, 75])
  np.testing.assert_array_equal(discoverable, [False, True, False])


def test_estimated_quality_is_beta_posterior_mean():
  recommender = _recommender(prior_rate=0.1, prior_impressions=10.0)
  estimate = simulator.estimated_quality(np.array([0, 30]), np.array([0, 9]), recommender)
  np.testing.assert_allclose(estimate, [1.0 / 10.0, (9 + 1) / (30 + 10)])


def test_content_explains_the_configured_share_of_quality():
  # logit(quality) = base + c * z + n * eps with z linear in the embedding and standardised, so a
  # least-squares fit of the logit on the embedding explains R^2 = c^2 / (c^2 + n^2) of its
  # variance.
  rng = np.random.default_rng(0)
  embeddings = simulator.synthetic_embeddings(rng, 50_000, dim=16, num_clusters=8,
                                              cluster_spread=1.0)
  quality = simulator.latent_quality(np.random.default_rng(1), embeddings, -2.0, 0.8, 0.6)
  logits = np.log(quality / (1 - quality))
  design = np.concatenate([embeddings, np.ones((len(logits), 1))], axis=1)
  fitted = design @ np.linalg.lstsq(design, logits, rcond=None)[0]
  r_squared = 1 - np.var(logits - fitted) / np.var(logits)
  assert r_squared == pytest.approx(0.8**2 / (0.8**2 + 0.6**2), abs=0.01)


def test_explore_is_deterministic_given_the_seed():
  quality = np.random.default_rng(0).uniform(0.01, 0.3, 500)
  runs = [simulator.explore(np.random.default_rng(7), quality,
                            baselines.thompson_policy(5, 0.1, 20.0), 3000, 4, _recommender())
          for _ in range(2)]
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a, b)


def test_explore_recycles_unspent_budget_and_rejects_overspending():
  quality = np.full(10, 0.1)
  budgets = []

  def lazy_then_greedy(round_index, impressions, clicks, round_budget, rng):
    budgets.append(round_budget)
    spend = 0 if round_index < 2 else round_budget
    return np.bincount([0], minlength=10).astype(np.int64) * spend

  out = simulator.explore(np.random.default_rng(0), quality, lazy_then_greedy, 90, 3,
                          _recommender())
  assert budgets == [30, 45, 90]  # remaining / rounds left; the last round gets all that is left
  assert out.impressions.sum() == 90

  def overspend(round_index, impressions, clicks, round_budget, rng):
    return np.full(10, round_budget, np.int64)

  with pytest.raises(ValueError, match="overspent"):
    simulator.explore(np.random.default_rng(0), quality, overspend, 90, 3, _recommender())


def test_bad_input_gets_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="NaN"):
    simulator.check_embeddings(np.array([[0.1, np.nan], [0.2, 0.3]]))
  with pytest.raises(ValueError, match="empty corpus"):
    simulator.check_embeddings(np.zeros((0, 4)))
  with pytest.raises(ValueError, match="2-D"):
    simulator.check_embeddings(np.zeros(4))
  with pytest.raises(ValueError, match="budget must be >= 0"):
    simulator.explore(np.random.default_rng(0), np.full(3, 0.1), baselines.uniform_policy(), -1, 2,
                      _recommender())
  with pytest.raises(ValueError, match="cohort is empty"):
    simulator.explore(np.random.default_rng(0), np.zeros(0), baselines.uniform_policy(), 10, 2,
                      _recommender())

  config = coldstart.get_config("tiny")
  path = tmp_path / "items.npy"
  embeddings = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
  np.save(path, embeddings)
  config.world.embeddings_path = str(path)
  with pytest.raises(ValueError, match="lower world.items_per_day"):
    simulator.make_world(config)
  embeddings[3, 1] = np.nan
  np.save(path, embeddings)
  with pytest.raises(ValueError, match="NaN"):
    simulator.make_world(config)


def test_world_reads_embeddings_from_a_file(tmp_path):
  config = coldstart.get_config("tiny")
  config.world.items_per_day = 40
  days = config.world.history_days + config.world.tuning_days + config.world.eval_days
  rows = config.world.items_per_day * days + 7
  embeddings = np.random.default_rng(0).standard_normal((rows, 5)).astype(np.float32)
  np.save(tmp_path / "items.npy", embeddings)
  config.world.embeddings_path = str(tmp_path / "items.npy")
  world = simulator.make_world(config)
  assert world.embeddings.shape == (config.world.items_per_day * days, 5)
  # Every world item is one of the file's rows, none twice.
  matches = (world.embeddings[:, None, :] == embeddings[None, :, :]).all(-1)
  np.testing.assert_array_equal(matches.sum(1), 1)
  assert len(np.unique(matches.argmax(1))) == len(world.embeddings)
  assert ((world.quality > 0) & (world.quality < 1)).all()
