"""ToyWorld: determinism, the compositional split, modalities, hard negatives, renderings."""
import collections
import itertools
import pickle

import numpy as np
import pytest

from gemb.datasets import toyworld as tw
from gemb.datasets.toyworld.signals import COLOUR_RGB

SHAPE, COLOUR, SIZE, POSITION, MOTION = range(5)  # Obj fields, in order
N_PER_TASK = 12


def _same(a, b) -> bool:
  if isinstance(a, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, np.ndarray):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
  return a == b


@pytest.mark.parametrize("task", list(tw.TASKS))
def test_same_arguments_give_identical_examples(task):
  for split in tw.SPLITS:
    assert _same(tw.example(task, split, 5, seed=3), tw.example(task, split, 5, seed=3))
  assert not _same(tw.example(task, "train", 5, seed=3), tw.example(task, "train", 5, seed=4))
  assert not _same(tw.example(task, "train", 5, seed=3), tw.example(task, "train", 6, seed=3))


def test_source_is_a_picklable_random_access_view_of_example():
  grain = pytest.importorskip("grain.python")
  source = tw.ToyWorldSource("code_to_image", "eval", size=10, seed=2)
  assert isinstance(source, grain.RandomAccessDataSource)
  assert len(source) == 10
  assert _same(source[7], tw.example("code_to_image", "eval", 7, seed=2))
  assert _same(source[-1], source[9])
  assert _same(pickle.loads(pickle.dumps(source))[3], source[3])
  with pytest.raises(IndexError):
    source[10]
  with pytest.raises(ValueError, match="unknown ToyWorld task"):
    tw.ToyWorldSource("text_to_smell", "train", 10)


def _pairs(scene):
  return {(tw.SHAPES[o[SHAPE]], tw.COLOURS[o[COLOUR]]) for o in scene}


def test_held_out_pairs_never_in_train_and_in_every_eval_scene():
  held = set(tw.held_out_combinations())
  # One held-out shape per colour; every shape and colour still occurs in train.
  assert sorted(c for _, c in held) == sorted(tw.COLOURS)
  train_pairs = {(s, c) for s in tw.SHAPES for c in tw.COLOURS} - held
  assert {s for s, _ in train_pairs} == set(tw.SHAPES)
  assert {c for _, c in train_pairs} == set(tw.COLOURS)

  rng = np.random.default_rng(0)
  train = [tw.sample_scene(rng, "train") for _ in range(3000)]
  evals = [tw.sample_scene(rng, "eval") for _ in range(3000)]
  for task in tw.TASKS:  # every scene an example renders, hard negatives included
    for i in range(N_PER_TASK):
      train += [s for s in tw.example_scenes(task, "train", i).values() if s is not None]
      evals.append(tw.example_scenes(task, "eval", i)["query"])
  assert not any(_pairs(s) & held for s in train)
  assert all(_pairs(s) & held for s in evals)
  assert set().union(*(_pairs(s) for s in evals)) >= held
  assert set().union(*(_pairs(s) for s in train)) == train_pairs
  train_keys = {tw.scene_key(s, "audio") for s in train}  # the coarsest aspect
  assert not train_keys & {tw.scene_key(s, "audio") for s in evals}


@pytest.mark.parametrize("task", list(tw.TASKS))
def test_parts_have_the_promised_modalities_dtypes_and_shapes(task):
  spec = tw.TASKS[task]
  expected = {"image": (np.uint8, (32, 32, 3)), "audio": (np.float32, (16000,)),
              "video": (np.uint8, (8, 32, 32, 3))}
  for split in tw.SPLITS:
    for i in range(4):
      ex = tw.example(task, split, i)
      assert ex["task"] == task
      sides = {"query": spec.query_modalities, "positive": spec.positive_modalities}
      if spec.has_negative:
        sides["negative"] = spec.positive_modalities
      else:
        assert "negative" not in ex
      for side, modalities in sides.items():
        parts = ex[side]
        assert [next(iter(p)) for p in parts] == list(modalities), (task, side)
        assert all(len(p) == 1 for p in parts)
        for part in parts:
          (m, value), = part.items()
          if m == "text":
            assert isinstance(value, str) and value.strip()
          else:
            assert (value.dtype, value.shape) == expected[m], (task, side, m)
          if m == "audio":
            assert np.abs(value).max() <= 1.0 and np.abs(value).max() > 0.3
        assert isinstance(ex[f"{side}_key"], str)
      for extra in spec.extras:
        assert extra in ex
      if spec.has_negative:
        assert ex["negative_key"] != ex["positive_key"]
        assert not _same(ex["negative"], ex["positive"])


def _differs_in_one_attribute(a, b) -> str | None:
  """The changed field name if b is a with exactly one attribute changed or one object more
  or fewer; else None. Brute force over object pairings."""
  if abs(len(a) - len(b)) == 1:
    small, big = sorted((a, b), key=len)
    return "count" if collections.Counter(big) - collections.Counter(small) and not (
        collections.Counter(small) - collections.Counter(big)) else None
  if len(a) != len(b):
    return None
  for perm in itertools.permutations(b):
    diffs = [(k, x[k]) for x, y in zip(a, perm) for k in range(5) if x[k] != y[k]]
    if len(diffs) == 1:
      return ("shape", "colour", "size", "position", "motion")[diffs[0][0]]
  return None


@pytest.mark.parametrize("task,visible", [
    ("text_to_image", {"shape", "colour", "size", "position", "count"}),
    ("image_to_text", {"shape", "colour", "size", "position", "count"}),
    ("code_to_image", {"shape", "colour", "size", "position", "count"}),
    ("text_to_audio", {"shape", "colour", "size", "count"}),
    ("audio_to_image", {"shape", "colour", "size", "count"}),  # a sound has no position
    ("text_to_video", {"shape", "colour", "size", "position", "motion", "count"}),
    ("video_to_text", {"shape", "colour", "size", "position", "motion", "count"}),
    ("bitext", {"shape", "colour", "size", "position", "motion", "count"}),
])
def test_hard_negative_is_the_scene_with_one_visible_attribute_changed(task, visible):
  changed = collections.Counter()
  for split in tw.SPLITS:
    for i in range(3 * N_PER_TASK):
      scenes = tw.example_scenes(task, split, i)
      assert scenes["query"] == scenes["positive"]
      change = _differs_in_one_attribute(scenes["positive"], scenes["negative"])
      assert change in visible, (task, scenes)
      changed[change] += 1
  assert len(changed) >= 3  # negatives vary the attribute they change


# Words a caption must contain, per language, written independently of toyworld_text.
STEMS = {
    "en": dict(shape=["square", "circle", "triangle", "cross", "diamond"],
               colour=["red", "orange", "yellow", "green", "cyan", "blue", "purple", "white"],
               size=["small", "medium", "large"],
               position=["top left", "top", "top right", "left", "centre", "right", "bottom left",
                         "bottom", "bottom right"],
               motion=["still", "moving up", "moving down", "moving left", "moving right"]),
    "de": dict(shape=["Quadrat", "Kreis", "Dreieck", "Kreuz", "Raute"],
               colour=["rot", "orange", "gelb", "grün", "türkis", "blau", "lila", "weiß"],
               size=["klein", "mittelgroß", "groß"],
               position=["oben links", "oben", "oben rechts", "links", "Mitte", "rechts",
                         "unten links", "unten", "unten rechts"],
               motion=["ruhend", "nach oben", "nach unten", "nach links", "nach rechts"]),
    "fr": dict(shape=["carré", "cercle", "triangle", "croix", "losange"],
               colour=["rouge", "orange", "jaune", "vert", "cyan", "bleu", "violet", "blanc"],
               size=["petit", "moyen", "grand"],
               position=["en haut à gauche", "en haut", "en haut à droite", "à gauche", "centre",
                         "à droite", "en bas à gauche", "en bas", "en bas à droite"],
               motion=["immobile", "monte", "descend", "va à gauche", "va à droite"]),
    "es": dict(shape=["cuadrado", "círculo", "triángulo", "cruz", "rombo"],
               colour=["roj", "naranja", "amarill", "verde", "cian", "azul", "morad", "blanc"],
               size=["pequeñ", "median", "grande"],
               position=["arriba a la izquierda", "arriba", "arriba a la derecha", "a la izquierda",
                         "centro", "a la derecha", "abajo a la izquierda", "abajo",
                         "abajo a la derecha"],
               motion=["inmóvil", "sube", "baja", "va a la izquierda", "va a la derecha"]),
}
ASPECT_ATTRIBUTES = {"image": ("shape", "colour", "size", "position"),
                     "video": ("shape", "colour", "size", "position", "motion"),
                     "audio": ("shape", "colour", "size"),
                     "full": ("shape", "colour", "size", "position", "motion")}


@pytest.mark.parametrize("lang", ["en", "de", "fr", "es"])
def test_captions_name_each_shown_attribute_in_each_language(lang):
  rng = np.random.default_rng(1)
  stems = STEMS[lang]
  fields = dict(shape=SHAPE, colour=COLOUR, size=SIZE, position=POSITION, motion=MOTION)
  for aspect, attributes in ASPECT_ATTRIBUTES.items():
    for _ in range(60):
      scene = tw.sample_scene(rng, "train")
      caption = tw.render_caption(scene, rng, lang, aspect)
      for obj in scene:
        for attribute in attributes:
          assert stems[attribute][obj[fields[attribute]]] in caption, (lang, aspect, caption)
      if len(scene) == 1:  # exactly the right words: no other value's word appears
        obj, = scene
        named = [stems[a][obj[fields[a]]] for a in attributes]
        for attribute in ("shape", "colour", "size"):
          for v, stem in enumerate(stems[attribute]):
            if v != obj[fields[attribute]] and not any(stem in n for n in named):
              assert stem not in caption, (lang, aspect, caption, stem)
      if aspect == "audio":  # a sound has no position
        assert not any(p in caption for p in stems["position"] if len(p) > 6), caption


def test_bitext_pairs_are_the_same_caption_in_two_languages():
  langs_seen = set()
  for i in range(40):
    ex = tw.example("bitext", "train", i)
    obj = tw.example_scenes("bitext", "train", i)["query"][0]
    found = [lang for lang in STEMS if STEMS[lang]["shape"][obj[SHAPE]] in ex["positive"][0]["text"]
             and STEMS[lang]["colour"][obj[COLOUR]] in ex["positive"][0]["text"]]
    assert found, ex["positive"]
    langs_seen.update(found)
    assert ex["query"][0]["text"] != ex["positive"][0]["text"]
    assert ex["query_key"] == ex["positive_key"]
  assert langs_seen == set(STEMS)


def _scene(*objs):
  return tuple(sorted((tw.Obj(*o) for o in objs), key=lambda o: o.position))


def test_audio_pitch_follows_shape_timbre_colour_and_pulse_size():
  cfg = tw.DEFAULT_CONFIG
  rate = cfg.sample_rate
  red, white = tw.COLOURS.index("red"), tw.COLOURS.index("white")
  peaks = []
  for shape in range(len(tw.SHAPES)):
    audio = tw.render_audio(_scene((shape, red, 2, 4, 0)), np.random.default_rng(shape), cfg)
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(audio.size, 1 / rate)
    peaks.append(freqs[spectrum.argmax()])
    assert abs(peaks[-1] / cfg.pitch_hz[shape] - 1) < 0.02
  assert np.all(np.diff(np.log(sorted(peaks))) > np.log(1.2))  # shapes are far apart in pitch

  def harmonic_energy(colour):
    audio = tw.render_audio(_scene((0, colour, 2, 4, 0)), np.random.default_rng(9), cfg)
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(audio.size, 1 / rate)
    band = lambda f: spectrum[np.abs(freqs - f) < 0.03 * f].max()
    f0 = freqs[spectrum.argmax()]
    return np.array([band(k * f0) for k in (2, 3, 4)]) / band(f0)
  assert harmonic_energy(red).max() < 0.05   # a pure tone
  assert harmonic_energy(white).min() > 0.2  # every harmonic present

  for size, pulse in enumerate(cfg.pulse_hz):
    audio = tw.render_audio(_scene((1, red, size, 4, 0)), np.random.default_rng(size), cfg)
    power = audio.astype(np.float64) ** 2
    envelope = power.reshape(-1, rate // 200).mean(1)  # 200 Hz envelope
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))
    freqs = np.fft.rfftfreq(envelope.size, 1 / 200)
    assert freqs[spectrum.argmax()] == pytest.approx(pulse, abs=1.0)


def _object_pixels(image, background_corner=(0, 0)):
  bg = image[background_corner].astype(float)
  return np.linalg.norm(image.astype(float) - bg, axis=-1) > 80


def test_image_shows_colour_position_and_shape_area():
  cfg = tw.DEFAULT_CONFIG
  r = cfg.object_scale[2] * 32  # half-extent of a large object in pixels
  areas = {"square": 4 * r * r, "circle": np.pi * r * r, "triangle": 2 * r * r,
           "diamond": 2 * r * r}
  rng = np.random.default_rng(0)
  for shape, area in areas.items():
    for position in (0, 4, 8):
      colour = int(rng.integers(len(tw.COLOURS)))
      image = tw.render_image(_scene((tw.SHAPES.index(shape), colour, 2, position, 0)), rng, cfg)
      corner = (31, 31) if position == 0 else (0, 0)
      mask = _object_pixels(image, corner)
      assert mask.sum() == pytest.approx(area, rel=0.3), (shape, mask.sum())
      ys, xs = np.nonzero(mask)
      row, col = divmod(position, 3)
      assert int(ys.mean() * 3 / 32) == row and int(xs.mean() * 3 / 32) == col
      colour_seen = image[mask].astype(float).mean(0)
      assert np.abs(colour_seen - COLOUR_RGB[colour]).max() < 25


def test_video_objects_travel_in_their_motion_direction():
  cfg = tw.DEFAULT_CONFIG
  expected = {"still": (0, 0), "up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
  for motion, (dy, dx) in expected.items():
    video = tw.render_video(_scene((0, 7, 1, 4, tw.MOTIONS.index(motion))),
                            np.random.default_rng(1), cfg)
    assert video.shape == (cfg.video_frames, 32, 32, 3)
    first, last = (np.argwhere(_object_pixels(video[t])).mean(0) for t in (0, -1))
    travel = cfg.motion_extent * 32
    assert last - first == pytest.approx(np.array([dy, dx]) * travel, abs=1.5), motion


def test_sts_score_is_five_times_best_matched_attribute_overlap():
  scores = []
  for i in range(60):
    ex = tw.example("sts", "train", i)
    scenes = tw.example_scenes("sts", "train", i)
    a, b = scenes["query"], scenes["positive"]
    small, big = sorted((a, b), key=len)
    best = max(sum(x[k] == y[k] for x, y in zip(small, perm) for k in range(5))
               for perm in itertools.permutations(big, len(small)))
    assert ex["score"] == pytest.approx(5 * best / (5 * len(big)))
    scores.append(ex["score"])
  assert min(scores) < 2 and max(scores) == 5 and len(set(scores)) >= 5


def test_question_answers_are_the_asked_attribute_of_the_asked_object():
  rng = np.random.default_rng(4)
  asked = collections.Counter()
  for _ in range(200):
    scene = tw.sample_scene(rng, "eval")
    qa = tw.render_question(scene, rng, "en")
    asked[qa.attribute] += 1
    if qa.attribute == "count":
      truth = ["one", "two"][len(scene) - 1]
    else:
      obj = scene[qa.object_index]
      field = ("shape", "colour", "size", "position").index(qa.attribute)
      truth = STEMS["en"][qa.attribute][obj[field]]
    assert truth in qa.answer and qa.answer != qa.wrong_answer, qa
  assert set(asked) == {"shape", "colour", "size", "position", "count"}


def test_classification_label_is_the_shape_of_the_largest_object():
  for i in range(30):
    ex = tw.example("classification", "train", i)
    scene = tw.example_scenes("classification", "train", i)["query"]
    largest = max(o[SIZE] for o in scene)
    first_largest = next(o for o in scene if o[SIZE] == largest)  # scenes are in reading order
    assert ex["label"] == first_largest[SHAPE]
    assert ex["positive"][0]["text"] == tw.CLASS_NAMES[ex["label"]]
    assert ex["negative"][0]["text"] in tw.CLASS_NAMES and ex["negative"][0]["text"] != ex[
        "positive"][0]["text"]


def test_keys_identify_content_that_the_rendering_shows():
  a = _scene((1, 0, 2, 0, 1), (0, 3, 1, 5, 0))
  moved = _scene((1, 0, 2, 0, 2), (0, 3, 1, 5, 0))       # only a motion differs
  elsewhere = _scene((1, 0, 2, 3, 1), (0, 3, 1, 8, 0))   # only positions differ
  assert tw.scene_key(a, "image") == tw.scene_key(moved, "image")
  assert tw.scene_key(a, "video") != tw.scene_key(moved, "video")
  assert tw.scene_key(a, "audio") == tw.scene_key(elsewhere, "audio")
  assert tw.scene_key(a, "image") != tw.scene_key(elsewhere, "image")
  # Identical content gives identical keys whatever the paraphrase and nuisances.
  ex = [tw.example("image_to_text", "train", i) for i in range(300)]
  by_key = collections.defaultdict(set)
  for e in ex:
    by_key[e["query_key"]].add(e["positive_key"].split(":", 2)[2])
  assert all(len(v) == 1 and k.split(":", 1)[1] in v for k, v in by_key.items())


def test_most_eval_scenes_are_distinct_among_256():
  # 1-object eval scenes come from 8 held-out pairs x 3 sizes x 9 cells = 216 contents and
  # make up 1/3 of scenes; 2-object ones almost never repeat: expected unique fraction ~0.89.
  keys = [tw.example("text_to_image", "eval", i)["positive_key"] for i in range(256)]
  counts = collections.Counter(keys)
  assert sum(counts[k] == 1 for k in keys) / 256 > 0.8


def test_config_from_mapping_rejects_unknown_keys():
  cfg = tw.WorldConfig.from_config({"image_size": [64, 64], "count_weights": [1, 1, 1]})
  assert cfg.image_size == (64, 64) and cfg.max_objects == 3
  assert tw.WorldConfig.from_config(cfg) is cfg and tw.WorldConfig.from_config(None) == (
      tw.DEFAULT_CONFIG)
  image = tw.example("text_to_image", "train", 0, config=cfg)["positive"][0]["image"]
  assert image.shape == (64, 64, 3)
  with pytest.raises(ValueError, match="unknown ToyWorld config keys"):
    tw.WorldConfig.from_config({"image_sise": 64})
