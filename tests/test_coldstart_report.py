"""The cold-start report end to end on the tiny configuration."""
import json

import numpy as np
import pytest
from PIL import Image

from configs.proj import coldstart
from gemb.proj.coldstart import baselines, report, simulator


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("coldstart")
  config = coldstart.get_config("tiny")
  return config, workdir, report.run(config, str(workdir))


def test_report_json_and_plot_are_written(tiny_report):
  config, workdir, returned = tiny_report
  with open(workdir / "coldstart" / "report.json") as f:
    written = json.load(f)
  assert set(written["discoverable"]) == {"discoverability", "uniform", "random", "thompson", "ucb"}
  assert written["discoverable"] == returned["discoverable"]
  assert 0.0 <= written["ece"] <= 1.0
  assert ([level["budget_per_item"] for level in written["budget_levels"]]
          == list(config.exploration.budget_per_item))
  with Image.open(workdir / "coldstart" / "coldstart.png") as image:
    assert image.format == "PNG" and image.size[0] > 600


def test_every_policy_stays_within_the_same_budget(tiny_report):
  config, _, result = tiny_report
  items = config.world.items_per_day * config.world.eval_days
  for level in result["budget_levels"]:
    for name, outcome in level["policies"].items():
      assert outcome["budget"] == level["budget_per_item"] * items
      assert outcome["spent"] <= outcome["budget"], name
      assert 0 <= outcome["discoverable"] <= items
      if name != "discoverability":  # the baselines always spend all of it
        assert outcome["spent"] == outcome["budget"], name


def test_uniform_count_reproduces_from_the_simulator(tiny_report):
  config, _, result = tiny_report
  world = simulator.make_world(config)
  day = config.world.history_days + config.world.tuning_days
  quality = world.quality[world.day == day]
  level = 0
  budget = config.exploration.budget_per_item[level] * len(quality)
  rng = np.random.default_rng([config.exploration.seed, 2, level, day])
  out = simulator.explore(rng, quality, baselines.uniform_policy(), budget,
                          config.exploration.num_rounds, config.recommender)
  assert (int(out.discoverable.sum())
          == result["budget_levels"][level]["policies"]["uniform"]["discoverable"])


def test_discoverability_finds_more_items_than_uniform_on_the_tiny_world(tiny_report):
  _, _, result = tiny_report
  assert result["discoverable"]["discoverability"] > result["discoverable"]["uniform"]


def test_bad_budget_configuration_is_an_error(tmp_path):
  config = coldstart.get_config("tiny")
  config.exploration.default_budget_per_item = 7
  with pytest.raises(ValueError, match="default_budget_per_item=7 must be one of"):
    report.run(config, str(tmp_path))
  config = coldstart.get_config("tiny")
  config.exploration.budget_per_item = (-5, 10)
  with pytest.raises(ValueError, match="budget_per_item must be >= 0"):
    report.run(config, str(tmp_path))
