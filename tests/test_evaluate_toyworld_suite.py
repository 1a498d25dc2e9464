"""The ToyWorld suite's attribute probes: their labels match what is rendered, and they score an
embedding that encodes an attribute perfectly at 1.0."""
import zlib

import numpy as np
import pytest

from gemb.data import toyworld
from gemb.data.toyworld_signals import COLOUR_RGB
from gemb.evaluate import suite, toyworld_suite

WORLD = toyworld.DEFAULT_CONFIG


def test_image_probe_labels_are_the_rendered_colour_and_size():
  inputs, labels = toyworld_suite.attribute_probe_data("image", 64, seed=0, world=WORLD)
  pixels_by_size = {s: [] for s in range(len(toyworld.SIZES))}
  for parts, colour, size in zip(inputs, labels["colour"], labels["size"]):
    image = parts[0]["image"].astype(np.float32)
    # The background is dark (channels <= 60 + gradient + noise); the object is saturated.
    mask = image.max(axis=-1) > 140
    mean_rgb = image[mask].mean(axis=0)
    assert np.argmin(np.abs(COLOUR_RGB - mean_rgb).sum(axis=1)) == colour
    pixels_by_size[size].append(mask.sum())
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
  tasks = toyworld_suite.build({"num_candidates": 64, "mrl": False}, world=WORLD)
  name = f"probe_{modality}_{attribute}"
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
  tasks = toyworld_suite.build({"num_candidates": n, "mrl": False}, world=WORLD)
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
