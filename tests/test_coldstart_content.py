"""The content world end to end: ToyWorld items embedded by an encoder, the report's keys, the
service path through a serving bundle, and a real (tiny, random-init) gemb encoder."""
import csv
import json

import ml_collections
import numpy as np
import pytest

from configs.proj import coldstart
from gemb.data import features
from gemb.proj.coldstart import catalogue, content, embedder, report
from gemb.proj.coldstart import service as service_lib
from tests import serve_helpers, tiny_config

TINY_FEATURES = features.FeatureConfig.from_config(tiny_config.get_config().model)


def _pixel_encoder(embedder_config, variant):
  """A cheap stand-in model: the image's brightest colour per channel ('trained' sees colour;
  'random_init' sees it through a fixed random mixing plus noise)."""
  del embedder_config
  mixing = np.random.default_rng(0).standard_normal((4, 4))

  def embed_fn(inputs):
    rows = []
    for parts in inputs:
      image = next(part["image"] for part in parts if "image" in part)
      row = np.concatenate([image.reshape(-1, 3).max(0) / 255.0, [1.0]])
      rows.append(row if variant == "trained" else np.tanh(mixing @ row))
    return np.asarray(rows, np.float32)
  return embedder.ItemEncoder(variant, f"pixels-{variant}", embed_fn, TINY_FEATURES)


@pytest.fixture(scope="module")
def toyworld_report(tmp_path_factory):
  patch = pytest.MonkeyPatch()
  patch.setattr(embedder, "item_encoder", _pixel_encoder)
  workdir = tmp_path_factory.mktemp("coldstart_toyworld")
  config = coldstart.get_config("toyworld_tiny")
  config.seeds = (0, 1)
  try:
    result = report.run(config, str(workdir))
  finally:
    patch.undo()
  return config, workdir, result


def test_report_has_every_variant_and_baseline_with_mean_and_std(toyworld_report):
  config, workdir, result = toyworld_report
  expected = {"discoverability/trained", "discoverability/random_init",
              "discoverability/no_content", "discoverability/oracle", "uniform", "random",
              "thompson", "ucb"}
  with open(workdir / "coldstart" / "report.json") as f:
    written = json.load(f)
  assert set(written["discoverable"]) == expected == set(written["discoverable_std"])
  assert written["seeds"] == [0, 1] and len(written["per_seed"]) == 2
  for level in written["budget_levels"]:
    for name, outcome in level["policies"].items():
      per_seed = outcome["discoverable_per_seed"]
      assert outcome["discoverable"] == pytest.approx(np.mean(per_seed))
      assert outcome["discoverable_std"] == pytest.approx(np.std(per_seed))
      assert outcome["spent"] <= outcome["budget"], name
    paired = level["paired_difference"]
    first = level["policies"][paired["policy"]]["discoverable_per_seed"]
    for name, difference in paired["minus"].items():
      per_seed = np.subtract(first, level["policies"][name]["discoverable_per_seed"])
      assert difference["mean"] == pytest.approx(per_seed.mean())
      assert difference["std"] == pytest.approx(per_seed.std())
      assert difference["wins"] == (per_seed > 0).sum() and difference["seeds"] == 2
  assert (workdir / "coldstart" / "coldstart.png").exists()
  # The oracle reads the taste in the world's item order: its model ranks items by quality
  # better than engagement alone, on every seed.
  for seed in written["per_seed"]:
    assert seed["auc"]["discoverability/oracle"] > seed["auc"]["discoverability/no_content"] + 0.01
  probed = {"discoverability/trained", "discoverability/random_init"}
  assert set(written["taste_probe_r2"]) == probed
  assert all(set(seed["taste_probe_r2"]) == probed for seed in written["per_seed"])
  assert written["content_headroom_captured"]  # the oracle adds over engagement at some budget
  for level in written["budget_levels"]:
    found = {name: result["discoverable"] for name, result in level["policies"].items()}
    gap = found["discoverability/oracle"] - found["discoverability/no_content"]
    if gap > 0:
      share = written["content_headroom_captured"][str(level["budget_per_item"])]
      assert set(share) == {"discoverability/trained", "discoverability/random_init"}
      assert share["discoverability/trained"] == pytest.approx(
          (found["discoverability/trained"] - found["discoverability/no_content"]) / gap)


def test_seeds_change_the_world_but_not_the_catalogue(toyworld_report):
  config, workdir, result = toyworld_report
  items = content.toyworld_catalogue(config)
  sets = {"discoverability/trained": np.ones((len(items), 2), np.float32)}
  worlds = [content.make_world(report.seeded(config, seed), items, sets)[0] for seed in (0, 1)]
  assert not np.allclose(worlds[0].quality, worlds[1].quality)
  again = content.make_world(report.seeded(config, 0), items, sets)[0]
  np.testing.assert_array_equal(worlds[0].quality, again.quality)
  # The cache holds both variants' rows of every item: a rerun embeds nothing.
  cached = sorted(p.name for p in (workdir / "coldstart" / "embedding_cache").iterdir())
  assert cached == ["pixels-random_init-joint.npz", "pixels-trained-joint.npz"]


def test_content_predicts_quality_through_the_trained_embedding(toyworld_report):
  # The stand-in 'trained' model sees colour, one of the taste's attributes: with only colour in
  # the taste, the discoverability model reads quality from content (AUC above no_content's).
  config = coldstart.get_config("toyworld_tiny")
  config.world.taste.attributes = dict(colour=1.0)
  config.world.noise_scale = 0.3
  items = content.toyworld_catalogue(config)
  sets = {name: np.asarray(embedder.embed_items(_pixel_encoder(None, variant), items,
                                                batch_size=256, combine="joint",
                                                log=lambda line: None))
          for name, variant in (("trained", "trained"),)}
  sets["no_content"] = np.zeros((len(items), 1), np.float32)
  world, ordered = content.make_world(config, items, sets)
  auc = {name: report.train_model(config, world, ordered[name])[1]["auc"] for name in ordered}
  assert auc["trained"] > auc["no_content"] + 0.02


def _service_config(tmp_path, num_items: int, seed: int):
  """The toyworld_tiny config on the service path: a catalogue of `num_items` ToyWorld items
  (ids toyworld-SEED-i) and a tiny serving bundle."""
  path = str(tmp_path / "shop" / "catalogue.jsonl")
  (tmp_path / "shop").mkdir()
  catalogue.write_catalogue(path, catalogue.toyworld_items(num_items, seed=seed, split="train",
                                                           world_config=None))
  config = coldstart.get_config("toyworld_tiny")
  config.catalogue, config.bundle = path, serve_helpers.tiny_bundle(str(tmp_path / "bundle"))
  return config


def test_service_writes_per_item_impressions_within_the_budget(tmp_path):
  config = _service_config(tmp_path, 40, seed=9)
  config.service.history_items = 200
  config.service.budget_per_item = 5
  summary = report.run(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "coldstart" / "allocation.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [row["item_id"] for row in rows] == [f"toyworld-9-{i}" for i in range(40)]
  impressions = np.array([row["impressions"] for row in rows])
  assert impressions.min() >= 0 and 0 < impressions.sum() <= 5 * 40 == summary["budget"]
  assert impressions.max() <= config.allocation.max_traffic_per_item
  assert all(0.0 <= row["p_discoverable"] <= 1.0 for row in rows)
  # The fit is saved, its allocation settings tuned from config.service.allocation_tuning.
  assert (not summary["model"]["reused"]
          and summary["allocation_settings"]["confidence"] in (0.5, 0.8))
  saved = json.loads(
      (tmp_path / "run" / "coldstart" / "service_model" / "service_model.json").read_text())
  assert saved["allocation_settings"] == summary["allocation_settings"]
  # With engagement so far and a CSV output; the cache means nothing is embedded again, and the
  # saved fit is reused.
  engagement = tmp_path / "today.jsonl"
  engagement.write_text(json.dumps({"item_id": "toyworld-9-3", "impressions": 50, "clicks": 20})
                        + "\n")
  config.service.engagement, config.service.output = str(engagement), str(tmp_path / "out.csv")
  summary = report.run(config, str(tmp_path / "run"))
  with open(tmp_path / "out.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 40 and sum(int(row["impressions"]) for row in table) <= summary["budget"]
  assert summary["model"]["reused"]
  engagement.write_text(json.dumps({"item_id": "toyworld-9-3", "impressions": 5, "clicks": 9})
                        + "\n")
  with pytest.raises(catalogue.CatalogueError,
                     match=r"today.jsonl:1: needs 0 <= clicks <= impressions"):
    report.run(config, str(tmp_path / "run"))


def test_random_init_encoder_embeds_items_through_gemb(tmp_path):
  config = coldstart.get_config("toyworld_tiny")
  config.embedder.model_config = "tests/tiny_config.py"
  items = catalogue.toyworld_items(5, seed=0, split="train", world_config=dict(audio_seconds=0.64))
  encoder = embedder.item_encoder(config.embedder, "random_init")
  rows = embedder.embed_items(encoder, items, batch_size=4, combine="joint",
                              cache_dir=str(tmp_path))
  assert rows.shape == (5, 32)
  np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
  assert np.abs(rows[0] - rows[1]).max() > 1e-4  # different items, different rows
  config.embedder.random_init_seed = 1
  assert embedder.item_encoder(config.embedder, "random_init").fingerprint != encoder.fingerprint
  with pytest.raises(ValueError, match="config.embedder needs a model"):
    embedder.item_encoder(config.embedder, "trained")


def test_service_reuses_its_saved_fit_only_for_the_same_bundle_and_config(tmp_path):
  config = _service_config(tmp_path, 30, seed=4)
  config.service.history_items, config.service.tuning_items = 200, 100
  first = report.run(config, str(tmp_path / "run"))
  rows = (tmp_path / "run" / "coldstart" / "allocation.jsonl").read_text()
  # A fresh process's view: the model and content scorer loaded from disk allocate identically.
  again = report.run(config, str(tmp_path / "run"))
  assert again["model"]["reused"] and not first["model"]["reused"]
  assert (tmp_path / "run" / "coldstart" / "allocation.jsonl").read_text() == rows
  assert again["allocation_settings"] == first["allocation_settings"]
  # Another budget (or bundle, or model config) is another fit.
  config.service.budget_per_item = 3
  assert not report.run(config, str(tmp_path / "run"))["model"]["reused"]


def test_service_spends_the_days_budget_over_its_calls():
  service = ml_collections.ConfigDict(dict(rounds=3, round=0))
  assert service_lib.call_budget(300, 0, service) == 100
  service.round = 1
  assert service_lib.call_budget(300, 70, service) == 115  # (300 - 70) over the 2 calls left
  service.round = 2
  assert service_lib.call_budget(300, 170, service) == 130  # the last call: all that is left
  assert service_lib.call_budget(300, 400, service) == 0
  for rounds, index in ((3, 3), (3, -1), (0, 0)):
    service.rounds, service.round = rounds, index
    with pytest.raises(ValueError, match=f"config.service.round={index} with "
                                         f"config.service.rounds={rounds}"):
      service_lib.call_budget(300, 0, service)


def test_taste_probe_scores_how_much_of_the_taste_an_embedding_carries_per_content_type():
  config = coldstart.get_config("toyworld_tiny")
  items = catalogue.toyworld_items(400, seed=5, split="train", world_config=None,
                                   content_types=(("text",), ("image", "audio")))
  taste = content.scene_taste(config, [item.scene for item in items])
  rng = np.random.default_rng(0)
  informative = np.stack([taste, -2.0 * taste + 1.0, rng.standard_normal(400)], 1)
  sets = {"discoverability/trained": informative + 0.05 * rng.standard_normal((400, 3)),
          "discoverability/random_init": rng.standard_normal((400, 3)),
          "discoverability/no_content": np.zeros((400, 1)), "discoverability/oracle": None}
  probe = content.taste_probe(config, items, sets)
  assert set(probe) == {"discoverability/trained", "discoverability/random_init"}
  assert set(probe["discoverability/trained"]) == {"all", "text", "image+audio"}
  assert min(probe["discoverability/trained"].values()) > 0.95
  assert max(probe["discoverability/random_init"].values()) < 0.1
