"""ToyWorld: gemb's embedded default dataset. Procedural, seeded, deterministic, no downloads.

Scenes of 1..max_objects objects (shape, colour, size, position on a 3x3 grid, motion; the
sound of an object follows from its shape, colour and size) are rendered as captions in four
languages, images, videos, sounds, tiny programs and image+question inputs, and combined into
the tasks of `TASKS`. Scenes live in scenes.py, pixels and sound in
signals.py, text in text.py; this file holds the tasks.

    ex = example("text_to_image", "train", index=17, seed=0)
    ex["query"]     # [{"text": "a small red circle in the top left"}]
    ex["positive"]  # [{"image": uint8[32, 32, 3]}]
    ex["negative"]  # [{"image": ...}] the same scene with one attribute changed

`example(task, split, index, seed)` is a pure function of its arguments (its rng is
np.random.default_rng([seed, split id, task id, index])), so `ToyWorldSource` is a
random-access source for grain. Train scenes never contain the held-out (shape, colour)
pairs of `held_out_combinations()`; every eval scene contains one.

Stable ids: every example has "query_key", "positive_key" (and "negative_key") strings.
Equal keys mean identical content whatever the paraphrase, nuisance or language: a key is
the rendering kind plus the attributes that rendering shows, e.g. "image:1.0.2.4;3.5.0.8"
(per object: shape.colour.size.position), "text:audio:1.0.2" (a caption of a sound),
"answer:colour:3", "label:circle". A retrieval target's key names only what its query can
show: the image of a sound is keyed "image/audio:1.0.2" (shape.colour.size), since a sound
cannot tell where its objects are. The pipeline turns keys into int ids for the loss mask
(two in-batch examples with the same query or positive key are not negatives of each other),
and the evaluation counts every target with the query's positive key as relevant.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from gemb import datasets
from gemb.data import features
from gemb.datasets.toyworld.scenes import (  # noqa: F401  (re-exported API)
    ASPECTS, ATTRIBUTES, CLASS_NAMES, COLOURS, DEFAULT_CONFIG, MOTIONS, POSITIONS, SHAPES,
    SIZES, SPLITS, VALUES, Obj, Scene, WorldConfig, attribute_overlap, class_label,
    hard_negative, held_out_combinations, in_split, is_held_out, key_string, main_object,
    sample_scene, scene_key, sts_score)
from gemb.datasets.toyworld.signals import render_audio, render_image, render_video  # noqa: F401
from gemb.datasets.toyworld.text import (  # noqa: F401
    LANGUAGES, answer_word, caption_choices, caption_from_choices, render_caption, render_code,
    render_question)


@dataclasses.dataclass(frozen=True)
class Task:
  """A ToyWorld task: what its query and positive are made of, in part order."""
  name: str
  task_string: str
  query_modalities: tuple[str, ...]
  positive_modalities: tuple[str, ...]
  has_negative: bool
  extras: tuple[str, ...] = ()  # extra example fields: "label" (int), "score" (float)


TASKS: dict[str, Task] = {t.name: t for t in [  # task strings are short: they prefix every query
    Task("text_to_image", "find the image for this caption", ("text",), ("image",), True),
    Task("image_to_text", "find the caption for this image", ("image",), ("text",), True),
    Task("text_to_audio", "find the sound for this caption", ("text",), ("audio",), True),
    Task("audio_to_image", "find the image of this sound", ("audio",), ("image",), True),
    Task("text_to_video", "find the video for this caption", ("text",), ("video",), True),
    Task("video_to_text", "find the caption for this video", ("video",), ("text",), True),
    Task("image_question_to_answer", "answer the question about the image", ("image", "text"),
         ("text",), True),
    Task("code_to_image", "find the image this program draws", ("text",), ("image",), True),
    Task("bitext", "find the translation", ("text",), ("text",), True),
    Task("sts", "find a similar description", ("text",), ("text",), False, ("score",)),
    Task("classification", "name the shape of the largest object", ("image",), ("text",), True,
         ("label",)),
]}
TASK_IDS = {name: i for i, name in enumerate(TASKS)}  # part of the rng seed: append, never reorder
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}


def _pick(rng: np.random.Generator, items):
  return items[int(rng.integers(len(items)))]


def _render(kind: str, scene: Scene, rng: np.random.Generator, lang: str,
            config: WorldConfig) -> tuple[dict, str]:
  """One part of `kind` and its content key. Kinds: image, audio, video, code, and
  caption:<aspect>. The rng supplies the nuisances (paraphrase, jitter, noise)."""
  if kind == "image":
    return {"image": render_image(scene, rng, config)}, "image:" + key_string(scene, "image")
  if kind == "audio":
    return {"audio": render_audio(scene, rng, config)}, "audio:" + key_string(scene, "audio")
  if kind == "video":
    return {"video": render_video(scene, rng, config)}, "video:" + key_string(scene, "video")
  if kind == "code":
    return {"text": render_code(scene, rng)}, "code:" + key_string(scene, "image")
  aspect = kind.split(":")[1]
  return ({"text": render_caption(scene, rng, lang, aspect)},
          f"text:{aspect}:{key_string(scene, aspect)}")


def _render_pair(kind: str, scene: Scene, negative: Scene, rng: np.random.Generator, lang: str,
                 config: WorldConfig) -> tuple[dict, str, dict, str]:
  """Renders the positive and the hard negative from the same rng state, so they share every
  nuisance (background, noise, paraphrase) and differ only where the changed attribute shows."""
  state = rng.bit_generator.state
  positive, positive_key = _render(kind, scene, rng, lang, config)
  rng.bit_generator.state = state
  neg, negative_key = _render(kind, negative, rng, lang, config)
  return positive, positive_key, neg, negative_key


def _aspect(kind: str) -> str:
  """The aspect a rendering kind shows: code draws an image, caption:<aspect> names its own."""
  return kind.split(":")[1] if kind.startswith("caption:") else {"code": "image"}.get(kind, kind)


def _retrieval(query_kind: str, positive_kind: str, shared_aspect: str) -> Callable:
  """A builder for "query rendering -> positive rendering" of one scene. `shared_aspect` is
  what both renderings show: the hard negative changes one of its attributes, and the positive
  and negative keys name only it, so a target that the query cannot tell from its own positive
  (for a sound, an image of the same objects elsewhere) counts as a correct answer in
  evaluation. (The loss already left such pairs out: their queries' keys are equal.)"""
  def build(rng, split, config):
    scene = sample_scene(rng, split, config)
    negative, _ = hard_negative(scene, rng, split, shared_aspect, config)
    lang = _pick(rng, config.languages)
    query, query_key = _render(query_kind, scene, rng, lang, config)
    positive, positive_key, neg, negative_key = _render_pair(positive_kind, scene, negative, rng,
                                                             lang, config)
    if _aspect(positive_kind) != shared_aspect:  # e.g. "image/audio:1.0.2": an image as heard
      positive_key, negative_key = (
          f"{positive_kind}/{shared_aspect}:{key_string(s, shared_aspect)}"
          for s in (scene, negative))
    ex = dict(query=[query], positive=[positive], negative=[neg], query_key=query_key,
              positive_key=positive_key, negative_key=negative_key)
    return ex, dict(query=scene, positive=scene, negative=negative)
  return build


def _image_question_to_answer(rng, split, config):
  scene = sample_scene(rng, split, config)
  lang = _pick(rng, config.languages)
  image, image_key = _render("image", scene, rng, lang, config)
  qa = render_question(scene, rng, lang, config.max_objects)
  subject = scene[qa.object_index].position if qa.object_index >= 0 else "all"
  ex = dict(query=[image, {"text": qa.question}], positive=[{"text": qa.answer}],
            negative=[{"text": qa.wrong_answer}],
            query_key=f"image+question:{image_key[6:]}:{qa.attribute}:{subject}",
            positive_key=f"answer:{qa.attribute}:{qa.value}",
            negative_key=f"answer:{qa.attribute}:{qa.wrong_value}")
  return ex, dict(query=scene, positive=scene, negative=None)


def _bitext(rng, split, config):
  if len(config.bitext_languages) < 2:
    raise ValueError(f"WorldConfig.bitext_languages={config.bitext_languages}: bitext needs two")
  scene = sample_scene(rng, split, config)
  negative, _ = hard_negative(scene, rng, split, "full", config)
  source, target = rng.permutation(len(config.bitext_languages))[:2]
  source, target = config.bitext_languages[source], config.bitext_languages[target]
  choices = caption_choices(scene, rng)  # the same choices in both languages: a translation
  negative_choices = choices._replace(order=tuple(caption_choices(negative, rng).order))
  ex = dict(query=[{"text": caption_from_choices(scene, choices, source, "full")}],
            positive=[{"text": caption_from_choices(scene, choices, target, "full")}],
            negative=[{"text": caption_from_choices(negative, negative_choices, target, "full")}],
            query_key="text:full:" + key_string(scene, "full"),
            positive_key="text:full:" + key_string(scene, "full"),
            negative_key="text:full:" + key_string(negative, "full"))
  return ex, dict(query=scene, positive=scene, negative=negative)


def _sts(rng, split, config):
  """Caption pairs whose second scene is the first with 0..4 single-attribute changes, or an
  unrelated scene; score = 5 * attribute overlap (0..5)."""
  first = sample_scene(rng, split, config)
  changes = int(rng.integers(6))
  if changes == 5:
    second = sample_scene(rng, split, config)
  else:
    second = first
    for _ in range(changes):
      second, _ = hard_negative(second, rng, split, "full", config)
  lang = _pick(rng, config.languages)
  query, query_key = _render("caption:full", first, rng, lang, config)
  positive, positive_key = _render("caption:full", second, rng, lang, config)
  ex = dict(query=[query], positive=[positive], query_key=query_key, positive_key=positive_key,
            score=sts_score(first, second))
  return ex, dict(query=first, positive=second)


def _classification(rng, split, config):
  scene = sample_scene(rng, split, config)
  label = class_label(scene)
  wrong = (label + 1 + int(rng.integers(len(CLASS_NAMES) - 1))) % len(CLASS_NAMES)
  lang = _pick(rng, config.languages)
  image, image_key = _render("image", scene, rng, lang, config)
  ex = dict(query=[image], positive=[{"text": answer_word(lang, "shape", label)}],
            negative=[{"text": answer_word(lang, "shape", wrong)}], query_key=image_key,
            positive_key=f"label:{CLASS_NAMES[label]}", negative_key=f"label:{CLASS_NAMES[wrong]}",
            label=label)
  return ex, dict(query=scene, positive=scene, negative=None)


_BUILDERS: dict[str, Callable] = {
    "text_to_image": _retrieval("caption:image", "image", "image"),
    "image_to_text": _retrieval("image", "caption:image", "image"),
    "text_to_audio": _retrieval("caption:audio", "audio", "audio"),
    "audio_to_image": _retrieval("audio", "image", "audio"),  # a sound does not show position
    "text_to_video": _retrieval("caption:video", "video", "video"),
    "video_to_text": _retrieval("video", "caption:video", "video"),
    "image_question_to_answer": _image_question_to_answer,
    "code_to_image": _retrieval("code", "image", "image"),
    "bitext": _bitext,
    "sts": _sts,
    "classification": _classification,
}
assert set(_BUILDERS) == set(TASKS)


def _build(task: str, split: str, index: int, seed: int, config) -> tuple[dict, dict]:
  if task not in TASKS:
    raise ValueError(f"unknown ToyWorld task {task!r}; known: {sorted(TASKS)}")
  if split not in SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
  if index < 0 or seed < 0:
    raise ValueError(f"index ({index}) and seed ({seed}) must be >= 0")
  config = WorldConfig.from_config(config)
  rng = np.random.default_rng([seed, SPLIT_IDS[split], TASK_IDS[task], index])
  ex, scenes = _BUILDERS[task](rng, split, config)
  return dict(task=task, **ex), scenes


def example(task: str, split: str, index: int, seed: int = 0,
            config: WorldConfig | Mapping[str, Any] | None = DEFAULT_CONFIG) -> dict:
  """The raw example `index` of `task` in `split` (see the data contract); pure function."""
  return _build(task, split, index, seed, config)[0]


def example_scenes(task: str, split: str, index: int, seed: int = 0,
                   config: WorldConfig | Mapping[str, Any] | None = DEFAULT_CONFIG) -> dict:
  """The scene each side of `example(...)` renders: {"query", "positive"[, "negative"]}.
  A negative that is a wrong answer or label (not a rendering of a scene) is None."""
  return _build(task, split, index, seed, config)[1]


class ToyWorldSource:
  """Grain RandomAccessDataSource of one ToyWorld task: item i is example(task, split, i, seed).

  Picklable and stateless, so it works with grain's worker processes and checkpointing.
  """

  def __init__(self, task: str, split: str, size: int, seed: int = 0,
               config: WorldConfig | Mapping[str, Any] | None = None):
    if task not in TASKS:
      raise ValueError(f"unknown ToyWorld task {task!r}; known: {sorted(TASKS)}")
    if split not in SPLIT_IDS:
      raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    if size <= 0:
      raise ValueError(f"ToyWorldSource size must be positive, got {size}")
    self.task, self.split, self.size, self.seed = task, split, int(size), int(seed)
    self.config = WorldConfig.from_config(config)

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index) -> dict:
    index = int(index)
    if not -self.size <= index < self.size:
      raise IndexError(f"index {index} out of range for ToyWorldSource of size {self.size}")
    return example(self.task, self.split, index % self.size, self.seed, self.config)

  def __repr__(self) -> str:
    return (f"ToyWorldSource(task={self.task!r}, split={self.split!r}, size={self.size}, "
            f"seed={self.seed}, config={self.config!r})")


def texts(split: str = "train", examples_per_task: int = 1000, seed: int = 0,
          config: WorldConfig | Mapping[str, Any] | None = DEFAULT_CONFIG):
  """Every text a training run on `split` reads, one string at a time: each task's text parts
  of its first `examples_per_task` examples, queries also with their task string (as the
  pipeline writes them). The corpus of the shipped ToyWorld tokenizer (launch/train_tokenizer.py).
  """
  for task, spec in TASKS.items():
    for index in range(examples_per_task):
      ex = example(task, split, index, seed, config)
      sides = [ex["query"], features.with_task_string(ex["query"], spec.task_string),
               ex["positive"], ex.get("negative") or []]
      for parts in sides:
        yield from (part["text"] for part in parts if "text" in part)


class Dataset:
  """ToyWorld for the data registry (`gemb.datasets.get("toyworld", config.data)`): every task
  of TASKS, `toyworld_size` examples each from the `split` of universe `toyworld_seed`."""

  skipped_lines = 0

  def __init__(self, data_cfg: Mapping[str, Any]):
    self._cfg = data_cfg

  def tasks(self) -> list[str]:
    return list(TASKS)

  def task(self, name: str, fcfg, where: str):
    if name not in TASKS:
      raise datasets.unknown_task(where, name, "ToyWorld", TASKS)
    task = TASKS[name]
    parts = {"query": features.count_modalities(task.query_modalities),
             "positive": features.count_modalities(task.positive_modalities)}
    if task.has_negative:
      parts["negative"] = parts["positive"]
    cfg = self._cfg
    source = ToyWorldSource(name, cfg["split"], cfg["toyworld_size"], cfg["toyworld_seed"],
                            cfg["toyworld"])
    return datasets.Task(source, parts, task.task_string)
