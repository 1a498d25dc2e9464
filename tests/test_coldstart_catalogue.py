"""Cold-start catalogues: the JSONL format's bad input, the embedding cache, the users' taste."""
import json

import numpy as np
import pytest

from gemb.data import features
from gemb.datasets import toyworld
from gemb.proj.coldstart import catalogue, embedder, taste

FEATURES = features.FeatureConfig(max_text_tokens=16, max_image_size=(32, 32), patch_size=8,
                                  n_mels=32, max_audio_frames=64, max_video_frames=8,
                                  video_size=(32, 32), vocab_size=264)


def _write(path, lines):
  path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
                  + "\n")
  return str(path)


def _good_image(tmp_path):
  catalogue.write_catalogue(str(tmp_path / "seed.jsonl"),
                            catalogue.toyworld_items(1, 0, "train", None))
  return "media/000000_1.png"  # the first item's image, beside any catalogue in tmp_path


def test_a_catalogue_file_round_trips(tmp_path):
  items = catalogue.toyworld_items(3, seed=0, split="train", world_config=None)
  path = str(tmp_path / "items.jsonl")
  catalogue.write_catalogue(path, items)
  read = catalogue.read_catalogue(path)
  assert [item.item_id for item in read] == [item.item_id for item in items]
  assert read[1].origin == f"{path}:2"
  loaded = catalogue.load_content(read[0], FEATURES)
  assert loaded[0] == items[0].content[0]  # the caption
  np.testing.assert_array_equal(loaded[1]["image"], items[0].content[1]["image"])  # PNG: lossless
  np.testing.assert_array_equal(loaded[3]["video"], items[0].content[3]["video"])  # .npy: exact


def test_toyworld_content_types_keep_a_drawn_subset_of_the_same_scene_and_renderings():
  every = catalogue.toyworld_items(40, seed=2, split="train", world_config=None)
  types = (("text",), ("image",), ("audio", "video"))
  mixed = catalogue.toyworld_items(40, seed=2, split="train", world_config=None,
                                   content_types=types)
  kinds = [tuple(name for part in item.content for name in part) for item in mixed]
  assert set(kinds) == set(types)  # every type drawn, and no other
  for full, item, kind in zip(every, mixed, kinds):
    assert item.item_id == full.item_id and item.scene == full.scene
    for part in item.content:  # the same rendering as the all-parts item's
      (name, value), = part.items()
      np.testing.assert_array_equal(value, full.content[catalogue.PARTS.index(name)][name])
  again = catalogue.toyworld_items(40, seed=2, split="train", world_config=None,
                                   content_types=types)
  assert [tuple(name for part in item.content for name in part) for item in again] == kinds
  assert catalogue.content_hash(mixed[0]) != catalogue.content_hash(every[0])  # re-embedded
  for bad in ((), (("text", "text"),), (("pictures",),), ((),)):
    with pytest.raises(ValueError, match="config.world.toyworld.content_types"):
      catalogue.toyworld_items(1, seed=2, split="train", world_config=None, content_types=bad)


@pytest.mark.parametrize("line, message", [
    ({"content": [{"text": "a red circle"}]}, r"items.jsonl:2: field 'item_id' is missing"),
    ({"item_id": "", "content": [{"text": "x"}]},
     r"items.jsonl:2: field 'item_id' must be a non-empty"),
    ({"item_id": "a", "content": [{"text": "x"}]},
     r"items.jsonl:2: duplicate item_id 'a' \(first on line 1\)"),
    ('{"item_id": "b", "content": [', r"items.jsonl:2: Expecting value"),
    ({"item_id": "b", "content": []}, r"items.jsonl:2: field 'content' must be a non-empty list"),
    ({"item_id": "b", "content": [{"smell": "x"}]},
     r"items.jsonl:2: content\[0\]: unknown modality 'smell'"),
    ({"item_id": "b", "content": [{"text": "x"}, {"image": "media/none.png"}]},
     r"items.jsonl:2 content\[1\].image: image file .*none.png' does not exist"),
])
def test_bad_lines_are_errors_naming_file_and_line(tmp_path, line, message):
  path = _write(tmp_path / "items.jsonl", [{"item_id": "a", "content": [{"text": "fine"}]}, line])
  with pytest.raises(catalogue.CatalogueError, match=message):
    catalogue.read_catalogue(path)


def test_an_unreadable_part_file_is_an_error_naming_the_line(tmp_path):
  image = _good_image(tmp_path)
  (tmp_path / "media" / "broken.png").write_bytes(b"not a png")
  path = _write(tmp_path / "items.jsonl",
                [{"item_id": "a", "content": [{"image": image}]},
                 {"item_id": "b", "content": [{"text": "t"}, {"image": "media/broken.png"}]}])
  items = catalogue.read_catalogue(path)  # the file exists: decoding is when it fails
  catalogue.load_content(items[0], FEATURES)
  with pytest.raises(catalogue.CatalogueError,
                     match=r"items.jsonl:2 content\[1\].image: cannot decode image"):
    catalogue.load_content(items[1], FEATURES)


class CountingEncoder:
  """A cheap deterministic 'model' that records which items it embedded."""

  def __init__(self, fingerprint, scale=1.0):
    self.seen = []
    self.encoder = embedder.ItemEncoder(fingerprint, fingerprint, self._embed, FEATURES)
    self.scale = scale

  def _embed(self, inputs):
    self.seen.extend(parts[0]["text"] for parts in inputs)
    return np.array([[len(parts[0]["text"]), self.scale, 1.0] for parts in inputs], np.float32)


def _text_items(ids, text=lambda i: f"item {i} " + "x" * int(i)):
  return [catalogue.Item(str(i), [{"text": text(i)}], f"test:{i}") for i in ids]


def test_cache_serves_a_second_call_without_embedding(tmp_path):
  model = CountingEncoder("model-a")
  items = _text_items(range(7))
  first = embedder.embed_items(model.encoder, items, batch_size=3, combine="joint",
                               cache_dir=str(tmp_path))
  assert len(model.seen) == 7
  second = embedder.embed_items(model.encoder, items[::-1], batch_size=3, combine="joint",
                                cache_dir=str(tmp_path))
  assert len(model.seen) == 7  # nothing embedded again
  np.testing.assert_array_equal(second, first[::-1])
  np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)


def test_cache_is_keyed_by_model_and_embeds_only_new_or_changed_items(tmp_path):
  model_a, model_b = CountingEncoder("model-a"), CountingEncoder("model-b", scale=5.0)
  embedder.embed_items(model_a.encoder, _text_items(range(5)), batch_size=2, combine="joint",
                       cache_dir=str(tmp_path))
  rows_b = embedder.embed_items(model_b.encoder, _text_items(range(5)), batch_size=2,
                                combine="joint", cache_dir=str(tmp_path))
  assert len(model_b.seen) == 5  # another model's cache is not reused
  assert rows_b[0, 1] > 0.5  # its own rows (scale 5 dominates), not model a's
  model_a.seen.clear()
  changed = _text_items(range(8))
  changed[2] = _text_items([2], text=lambda i: "new content for item 2")[0]
  embedder.embed_items(model_a.encoder, changed, batch_size=2, combine="joint",
                       cache_dir=str(tmp_path))
  assert sorted(model_a.seen) == sorted(["new content for item 2"] + [item.content[0]["text"]
                                                                      for item in changed[5:]])


def test_mean_of_parts_embeds_each_part_alone(tmp_path):
  seen = []

  def embed_fn(inputs):
    seen.extend(len(parts) for parts in inputs)
    return np.array([[1.0, 0.0] if "a" in parts[0]["text"] else [0.0, 1.0] for parts in inputs],
                    np.float32)

  encoder = embedder.ItemEncoder("parts", "parts", embed_fn, FEATURES)
  items = [catalogue.Item("x", [{"text": "a"}, {"text": "b"}], "test:x")]
  rows = embedder.embed_items(encoder, items, batch_size=4, combine="mean_of_parts")
  assert seen == [1, 1]
  np.testing.assert_allclose(rows, [[np.sqrt(0.5), np.sqrt(0.5)]], rtol=1e-6)
  with pytest.raises(ValueError, match="combine='both'"):
    embedder.embed_items(encoder, items, batch_size=4, combine="both")


def test_taste_is_deterministic_and_a_function_of_attributes_only():
  attributes = dict(shape=1.0, colour=1.0, size=0.5, motion=1.0)
  items = catalogue.toyworld_items(300, seed=3, split="train", world_config=None)
  scenes = [item.scene for item in items]
  first = taste.scene_taste(scenes, taste.attribute_utilities(0, attributes))
  np.testing.assert_array_equal(first,
                                taste.scene_taste(scenes, taste.attribute_utilities(0, attributes)))
  assert not np.allclose(first, taste.scene_taste(scenes, taste.attribute_utilities(1, attributes)))
  # One object: taste is the sum of its attribute values' utilities, by hand.
  utilities = taste.attribute_utilities(0, attributes)
  obj = toyworld.Obj(shape=2, colour=5, size=1, position=4, motion=3)
  expected = (utilities["shape"][2] + utilities["colour"][5] + utilities["size"][1]
              + utilities["motion"][3])
  assert taste.scene_taste([(obj,)], utilities)[0] == pytest.approx(expected)
  moved = obj._replace(position=0)  # position is not part of the taste
  assert taste.scene_taste([(moved,)], utilities)[0] == pytest.approx(expected)
  # Quality: seeded, and content explains the configured share of the logit's variance.
  quality = taste.quality_from_taste(np.random.default_rng(0), first, -2.0, 1.0, 0.0)
  np.testing.assert_array_equal(
      quality, taste.quality_from_taste(np.random.default_rng(0), first, -2.0, 1.0, 0.0))
  logits = np.log(quality / (1 - quality))
  assert np.corrcoef(logits, first)[0, 1] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="unknown ToyWorld attributes"):
    taste.attribute_utilities(0, {"smell": 1.0})
