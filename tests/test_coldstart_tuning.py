"""Tuning on the tuning day: the allocation's settings and the bandits' take the tuning day's best
and never look at the evaluation days; the model's input prefix."""
import numpy as np
import pytest

from configs.proj import coldstart
from gemb.proj.coldstart import allocation, discoverability, report, simulator, tuning


def _config():
  config = coldstart.get_config("tiny")
  config.world.items_per_day = 600
  config.model.epochs = 8
  config.exploration.budget_per_item = (5, 20)
  config.allocation_tuning.confidence = (0.3, 0.7, 0.95)
  config.allocation_tuning.hopeless_probability = (0.01, 0.2)
  config.baselines.chunk_choices = (5, 10)
  config.baselines.ucb_exploration_choices = (0.05, 1.0)
  return config


@pytest.fixture(scope="module")
def trained():
  config = _config()
  world = simulator.make_world(config)
  model, _, prior_rate = report.train_model(config, world)
  return config, world, {"discoverability": model}, prior_rate


def _on_tuning_day(config, world, models, settings, level):
  cohort = world.day == config.world.history_days
  quality = world.quality[cohort]
  policy = allocation.discoverability_policy(models["discoverability"], world.embeddings[cohort],
                                             tuning.allocation_config(config, settings))
  budget = config.exploration.budget_per_item[level] * len(quality)
  return int(tuning.explore(config, quality, policy, budget, (1, level)).discoverable.sum())


def _eval_days_changed(config, world):
  """The world with every evaluation day's items replaced (quality and embeddings)."""
  evaluation = world.day >= config.world.history_days + config.world.tuning_days
  rng = np.random.default_rng(7)
  quality = np.where(evaluation, rng.uniform(0.0, 0.5, len(world.quality)), world.quality)
  embeddings = np.where(evaluation[:, None], rng.standard_normal(world.embeddings.shape),
                        world.embeddings).astype(np.float32)
  return simulator.World(embeddings, quality, world.day)


def test_allocation_tuning_takes_the_tuning_days_best_and_ignores_evaluation_days(trained):
  config, world, models, _ = trained
  chosen = tuning.tune_allocation(config, world, models, {"discoverability": world.embeddings})
  grid = tuning.grid(dict(config.allocation_tuning))
  assert len(grid) == 6 and set(grid[0]) == {"confidence", "hopeless_probability"}
  assert list(chosen) == list(config.exploration.budget_per_item)
  for level, budget_per_item in enumerate(config.exploration.budget_per_item):
    found = [_on_tuning_day(config, world, models, settings, level) for settings in grid]
    assert len(set(found)) > 1  # the settings matter, so the choice is a real one
    assert chosen[budget_per_item]["discoverability"] == grid[int(np.argmax(found))]
  changed = _eval_days_changed(config, world)
  assert tuning.tune_allocation(config, changed, models,
                                {"discoverability": changed.embeddings}) == chosen


def test_evaluation_uses_the_tuned_allocation(trained):
  config, world, models, prior_rate = trained
  chunks = {b: {"random": {"chunk": 10}, "thompson": {"chunk": 10}, "ucb": {"chunk": 10}}
            for b in config.exploration.budget_per_item}
  settings = {"confidence": 0.95, "hopeless_probability": 0.2}
  tuned = report.evaluate(config, world, models, prior_rate, chunks,
                          allocations={b: {"discoverability": settings} for b in chunks})
  fixed = config.copy_and_resolve_references()
  fixed.allocation.update(settings)
  again = report.evaluate(fixed, world, models, prior_rate, chunks)
  untuned = report.evaluate(config, world, models, prior_rate, chunks)
  count = lambda levels: [level["policies"]["discoverability"]["discoverable"] for level in levels]
  assert count(tuned) == count(again) != count(untuned)


def test_bandit_tuning_takes_the_tuning_days_best_and_ignores_evaluation_days(trained):
  config, world, _, prior_rate = trained
  chosen = tuning.tune_bandits(config, world, prior_rate)
  cohort = world.day == config.world.history_days
  quality = world.quality[cohort]
  for level, budget_per_item in enumerate(config.exploration.budget_per_item):
    grid = tuning.bandit_grid(config, "ucb")
    assert len(grid) == 4
    found = [int(tuning.explore(config, quality,
                                tuning.bandit_policy(config, "ucb", s, prior_rate),
                                budget_per_item * len(quality), (1, level)).discoverable.sum())
             for s in grid]
    assert found[grid.index(chosen[budget_per_item]["ucb"])] == max(found)
    assert set(chosen[budget_per_item]["thompson"]) == {"chunk", "thompson_prior_impressions"}
  assert tuning.tune_bandits(config, _eval_days_changed(config, world), prior_rate) == chosen


def test_default_world_tunes_nothing_and_toyworld_tunes_the_allocation(trained):
  config, world, models, _ = trained
  default = coldstart.get_config()
  assert not tuning.grid(dict(default.allocation_tuning))
  assert tuning.tune_allocation(default, world, models, {"discoverability": world.embeddings}) == {}
  assert [tuning.bandit_grid(default, "ucb")[i]["ucb_exploration"] for i in range(2)] == [1.0, 1.0]
  toyworld = coldstart.get_config("toyworld")
  assert len(tuning.grid(dict(toyworld.allocation_tuning))) > 1
  config = _config()
  config.allocation_tuning.confidnce = (0.5,)
  with pytest.raises(ValueError, match="confidnce"):
    tuning.tune_allocation(config, world, models, {"discoverability": world.embeddings})


def test_model_input_is_a_renormalised_prefix():
  embeddings = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
  np.testing.assert_array_equal(report.model_input(embeddings, 0), embeddings)
  np.testing.assert_array_equal(report.model_input(embeddings, 8), embeddings)
  prefix = report.model_input(embeddings, 3)
  assert prefix.shape == (5, 3)
  np.testing.assert_allclose(np.linalg.norm(prefix, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(prefix * np.linalg.norm(embeddings[:, :3], axis=1, keepdims=True),
                             embeddings[:, :3], rtol=1e-5)
  with pytest.raises(ValueError, match="embedding_dims=-1"):
    report.model_input(embeddings, -1)


def _history(rng, num_items):
  traffic = rng.integers(0, 200, num_items)
  clicks = rng.binomial(traffic, 0.1)
  return simulator.History(traffic, np.stack([traffic // 2, traffic], 1),
                           np.stack([clicks // 2, clicks], 1), clicks > 20)


def test_content_scores_are_out_of_fold_on_the_history_and_a_full_fit_elsewhere():
  rng = np.random.default_rng(0)
  embeddings = rng.standard_normal((400, 6))
  past = np.arange(400) < 300
  history = _history(rng, 300)
  scores, scorer = discoverability.content_scores(embeddings, past, history, folds=5, seed=3)
  assert scores.shape == (400, 1) and scores.dtype == np.float32
  full = discoverability.fit_content_scorer(embeddings[:300], history)(embeddings)
  np.testing.assert_allclose(scorer(embeddings), full, rtol=1e-12)  # the one full fit
  np.testing.assert_allclose(scores[300:, 0], full[300:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(scores[:300, 0], full[:300], rtol=1e-3, atol=1e-4)
  # An item's own logs never move its own (out-of-fold) score.
  loud = history.checkpoint_clicks.copy()
  loud[7] = [loud[7, 1], 10 * loud[7, 1] + 50]
  traffic = history.traffic * np.where(np.arange(300) == 7, 20, 1)
  moved = simulator.History(traffic, history.checkpoint_impressions, loud, history.discoverable)
  again, _ = discoverability.content_scores(embeddings, past, moved, folds=5, seed=3)
  assert again[7, 0] == pytest.approx(scores[7, 0], rel=1e-5)
  assert abs(again[300:, 0] - scores[300:, 0]).max() > 1e-4  # the full fit did see it


def test_content_score_config_feeds_the_model_one_feature(trained):
  config, world, _, _ = trained
  config = config.copy_and_resolve_references()
  config.model.content = "score"
  config.exploration.budget_per_item = (10,)
  config.baselines.chunk_choices = (10,)
  config.baselines.ucb_exploration_choices = ()
  config.allocation_tuning.confidence = ()
  config.allocation_tuning.hopeless_probability = ()
  result = report.study(config, world, {"discoverability": world.embeddings,
                                        "constant": np.zeros((len(world.day), 1), np.float32)})
  assert result["models"]["discoverability"].feature_mean.shape == (1 + 3,)
  assert (result["model_metrics"]["discoverability"]["auc"]
          > result["model_metrics"]["constant"]["auc"])
  config.model.content = "scores"
  with pytest.raises(ValueError, match="model.content='scores'"):
    report.run(config, "/nonexistent")
