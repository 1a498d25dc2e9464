"""The ToyWorld suite's attribute probes: their labels match what is rendered, and they score an
embedding that encodes an attribute perfectly at 1.0."""
import zlib

import numpy as np
import pytest

from configs import common
from gemb.datasets import toyworld
from gemb.datasets.toyworld.signals import COLOUR_RGB
from gemb.evaluate import suite, toyworld_suite

WORLD = toyworld.DEFAULT_CONFIG


def _build(num_candidates, *names):
  """The named evaluators of the ToyWorld suite's config.evals entries (full embeddings only)."""
  evals = {name: toyworld_suite.evals(num_candidates=num_candidates)[name] for name in names}
  return suite.build(evals, common.eval_settings(), world=WORLD)


def _object_mask(image: np.ndarray) -> np.ndarray:
  """The object's pixels: the background is dark (channels <= 60 + gradient + noise), the
  object saturated."""
  return image.max(axis=-1) > 140


def _pixel_colour(image: np.ndarray) -> int:
  """The colour of a single-object image, read from its object pixels."""
  mean_rgb = image.astype(np.float32)[_object_mask(image)].mean(axis=0)
  return int(np.argmin(np.abs(COLOUR_RGB - mean_rgb).sum(axis=1)))


def test_image_probe_labels_are_the_rendered_colour_and_size():
  inputs, labels = toyworld_suite.attribute_probe_data("image", 64, seed=0, world=WORLD)
  pixels_by_size = {s: [] for s in range(len(toyworld.SIZES))}
  for parts, colour, size in zip(inputs, labels["colour"], labels["size"]):
    image = parts[0]["image"]
    assert _pixel_colour(image) == colour
    pixels_by_size[size].append(_object_mask(image).sum())
  means = [np.mean(pixels_by_size[s]) for s in range(len(toyworld.SIZES))]
  assert means == sorted(means) and means[0] < 0.6 * means[-1]


def test_audio_probe_labels_are_the_rendered_pitch():
  inputs, labels = toyworld_suite.attribute_probe_data("audio", 32, seed=0, world=WORLD)
  for parts, shape in zip(inputs, labels["shape"]):
    wave = parts[0]["audio"]
    spectrum = np.abs(np.fft.rfft(wave))
    peak_hz = np.argmax(spectrum) * WORLD.sample_rate / len(wave)
    # The fundamental (amplitude 1) is the loudest partial; detune is at most 1%.
    assert abs(peak_hz / WORLD.pitch_hz[shape] - 1) < 0.03


@pytest.mark.parametrize("modality, attribute", [("image", "colour"), ("audio", "size")])
def test_probe_of_an_embedding_that_encodes_the_attribute_is_exact(modality, attribute):
  name = f"probe_{modality}_{attribute}"
  tasks = _build(64, name)
  inputs, labels = toyworld_suite.attribute_probe_data(modality, 64, seed=0, world=WORLD)
  label_of = {parts[0][modality].tobytes(): label
              for parts, label in zip(inputs, labels[attribute])}
  classes = len(toyworld.VALUES[attribute])

  def embed_fn(batch):  # the attribute one-hot: a perfect embedding of it
    return np.eye(classes, dtype=np.float32)[[label_of[p[0][modality].tobytes()] for p in batch]]

  results = suite.run_suite("toyworld", {name: tasks[name]}, embed_fn)
  assert results[f"toyworld/{name}/accuracy"] == 1.0
  def random_fn(batch):  # a random vector per input, seeded by its content
    return np.stack([np.random.default_rng(zlib.crc32(p[0][modality].tobytes())).normal(
        size=16) for p in batch]).astype(np.float32)

  random = suite.run_suite("toyworld", {name: tasks[name]}, random_fn)
  assert random[f"toyworld/{name}/accuracy"] < 0.6  # near chance (1/8, 1/3)


def test_an_embedding_of_what_a_sound_shows_finds_every_image_of_it():
  # A sound does not show where its objects are, so an image of the same objects elsewhere is
  # a right answer too: an embedding of exactly the sound's content (shape, colour, size of
  # each object) must score R@1 = 1 both ways, though eval scenes repeat sound contents.
  n = 128
  tasks = _build(n, "audio_to_image")
  content = {}  # rendered bytes -> the attributes a sound shows
  for i in range(n):
    example = toyworld.example("audio_to_image", "eval", i, 0, WORLD)
    scene = toyworld.example_scenes("audio_to_image", "eval", i, 0, WORLD)["query"]
    for side in ("query", "positive"):
      content[next(iter(example[side][0].values())).tobytes()] = toyworld.key_string(scene,
                                                                                      "audio")
  assert len(set(content.values())) < n  # repeated sound contents: the case under test

  def embed_fn(batch):  # a random unit vector per sound content
    vectors = [np.random.default_rng(zlib.crc32(content[next(iter(parts[0].values())).tobytes()]
                                                .encode())).normal(size=32) for parts in batch]
    return np.stack(vectors).astype(np.float32)

  results = suite.run_suite("toyworld", {"audio_to_image": tasks["audio_to_image"]}, embed_fn)
  assert results["toyworld/audio_to_image/R@1"] == 1.0
  assert results["toyworld/audio_to_image/R@1@reverse"] == 1.0


def test_the_held_out_shape_probe_fits_on_balanced_pairs_and_tests_on_held_out_ones():
  fit, fit_shapes, test, test_shapes = toyworld_suite.held_out_shape_probe_data(128, 0, WORLD)
  held = {(toyworld.SHAPES.index(s), toyworld.COLOURS.index(c))
          for s, c in toyworld.held_out_combinations(WORLD)}
  fit_pairs = [(s, _pixel_colour(p[0]["image"])) for p, s in zip(fit, fit_shapes)]
  counts = {pair: fit_pairs.count(pair) for pair in set(fit_pairs)}
  assert len(counts) == len(toyworld.SHAPES) * len(toyworld.COLOURS)
  assert set(counts.values()) == {128 // 40}  # every pair equally often: colour tells no shape
  test_pairs = {(s, _pixel_colour(p[0]["image"])) for p, s in zip(test, test_shapes)}
  assert test_pairs == held and len(test) == 128


def test_the_held_out_shape_probe_scores_shape_and_not_colour():
  n = 128
  probe = _build(n, "probe_image_shape_held_out")["probe_image_shape_held_out"]
  fit, fit_shapes, test, test_shapes = toyworld_suite.held_out_shape_probe_data(n, 0, WORLD)
  shape_of = {p[0]["image"].tobytes(): s for p, s in zip(fit + test, fit_shapes + test_shapes)}

  def shape_fn(batch):
    return np.eye(len(toyworld.SHAPES), dtype=np.float32)[
        [shape_of[p[0]["image"].tobytes()] for p in batch]]

  def colour_fn(batch):  # every colour and no shape: in held-out pairs colour fixes the shape
    return np.eye(len(toyworld.COLOURS), dtype=np.float32)[
        [_pixel_colour(p[0]["image"]) for p in batch]]

  tasks = {"probe_image_shape_held_out": probe}
  assert suite.run_suite("toyworld", tasks, shape_fn)[
      "toyworld/probe_image_shape_held_out/accuracy"] == 1.0
  assert suite.run_suite("toyworld", tasks, colour_fn)[
      "toyworld/probe_image_shape_held_out/accuracy"] <= 0.25  # chance 0.2; 1/8 or 2/8 on ties


def test_a_shape_embedding_classifies_perfectly_and_a_random_one_at_chance():
  n = 128
  tasks = _build(n, "classification", "classification_zero_shot")
  label_of = {toyworld.answer_word("en", "shape", k): k for k in range(len(toyworld.SHAPES))}
  for split in ("train", "eval"):
    for i in range(n):
      ex = toyworld.example("classification", split, i, 0, WORLD)
      label_of[ex["query"][0]["image"].tobytes()] = ex["label"]

  def key(parts):
    return parts[0]["text"] if "text" in parts[0] else parts[0]["image"].tobytes()

  def shape_fn(batch):  # the main object's shape (a label word's own shape), one-hot
    return np.eye(len(toyworld.SHAPES), dtype=np.float32)[[label_of[key(p)] for p in batch]]

  def random_fn(batch):  # a random vector per input, seeded by its content
    return np.stack([np.random.default_rng(zlib.crc32(
        k.encode() if isinstance(k, str) else k)).normal(size=16) for k in map(key, batch)]
                    ).astype(np.float32)

  chosen = {name: tasks[name] for name in ("classification", "classification_zero_shot")}
  for fn, check in ((shape_fn, lambda x: x == 1.0), (random_fn, lambda x: x < 0.32)):
    results = suite.run_suite("toyworld", chosen, fn)  # random: chance 0.2, 3 sd at n=128 0.31
    assert check(results["toyworld/classification/accuracy"]), fn
    assert check(results["toyworld/classification_zero_shot/R@1"]), fn


def test_the_suite_is_config_entries_and_a_run_keeps_toyworld_keys():
  evals = toyworld_suite.evals(num_candidates=16)
  assert all(entry["dataset"] == "toyworld" for entry in evals.values())
  assert {"text_to_image", "classification_zero_shot", "probe_audio_size",
          "probe_image_shape_held_out"} <= set(evals)
  evals = {"sts": evals["sts"], "text_to_image": evals["text_to_image"]}
  evaluators = suite.build(evals, common.eval_settings(quantized=False), world=WORLD)
  rng = np.random.default_rng(0)
  results = suite.run(evals, evaluators, lambda batch: rng.normal(size=(len(batch), 8)))
  assert "toyworld/text_to_image/R@1" in results and "toyworld/sts/spearman" in results
  assert not any("@int8" in key for key in results)  # quantized=False drops the entry's option
