"""The ToyWorld evaluation suite: every task type and modality, on held-out attribute combinations.

Built from the eval split, whose scenes all contain a (shape, colour) pair never seen in
training, so every score measures compositional generalisation. Retrieval tasks score each
query against `num_candidates` targets; a target is relevant when its identity key equals the
query's own target's (an identical scene rendered twice is a correct answer either way).
Queries carry their task string, as in training. Probes are fitted on train scenes (the
classification and multilabel probes are then tested on eval scenes, the attribute probes on
other train scenes), except probe_image_shape_held_out: fitted on every (shape, colour) pair
equally often, tested on held-out pairs.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from gemb.datasets import toyworld
from gemb.data.features import with_task_string
from gemb.evaluate import registry

RETRIEVAL = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_image", "text_to_video",
             "video_to_text", "code_to_image", "image_question_to_answer")
CROSS_MODAL = {"text_to_image", "image_to_text", "text_to_audio", "audio_to_image",
               "text_to_video", "video_to_text", "code_to_image"}


def _examples(task: str, split: str, count: int, seed: int, world) -> list[dict]:
  return [toyworld.example(task, split, i, seed, world) for i in range(count)]


def _queries(task: str, examples: list[dict]) -> list[list[dict]]:
  task_string = toyworld.TASKS[task].task_string
  return [with_task_string(ex["query"], task_string) for ex in examples]


def _relevant_by_key(keys: list[str]) -> list[set[int]]:
  """Query i's relevant targets: every j whose key equals target i's key."""
  by_key: dict[str, set[int]] = {}
  for j, key in enumerate(keys):
    by_key.setdefault(key, set()).add(j)
  return [by_key[key] for key in keys]


def distinct_fraction(keys: list[str]) -> float:
  """Fraction of targets whose key is unique: the R@1 a perfect model could not beat by luck."""
  counts: dict[str, int] = {}
  for key in keys:
    counts[key] = counts.get(key, 0) + 1
  return float(np.mean([counts[key] == 1 for key in keys]))


PROBE_ATTRIBUTES = ("shape", "colour", "size")  # what both an image and a sound show
PROBE_MODALITIES = ("image", "audio")


def attribute_probe_data(modality: str, count: int, seed: int, world) -> tuple[list, dict]:
  """`count` single-object train-split scenes rendered as `modality` parts, and each object's
  attribute labels: ([[part], ...], {attribute: [label, ...]} for PROBE_ATTRIBUTES)."""
  if modality not in PROBE_MODALITIES:
    raise ValueError(f"attribute probes are for {PROBE_MODALITIES}, not {modality!r}")
  world = toyworld.WorldConfig.from_config(world)
  render = {"image": toyworld.render_image, "audio": toyworld.render_audio}[modality]
  rng = np.random.default_rng([seed, 1000 + PROBE_MODALITIES.index(modality)])
  inputs, labels = [], {a: [] for a in PROBE_ATTRIBUTES}
  for _ in range(count):
    obj = toyworld.sample_scene(rng, "train", world)[0]
    inputs.append([{modality: render((obj,), rng, world)}])
    for attribute in PROBE_ATTRIBUTES:
      labels[attribute].append(getattr(obj, attribute))
  return inputs, labels


def held_out_shape_probe_data(count: int, seed: int, world) -> tuple[list, list, list, list]:
  """Single-object images for a shape probe that colour cannot help: to fit on, every (shape,
  colour) pair equally often, held-out pairs included (40 * (count // 40) images, so colour says
  nothing of shape); to test on, `count` images of held-out pairs (random size and position).
  -> (fit inputs, fit shapes, test inputs, test shapes)."""
  world = toyworld.WorldConfig.from_config(world)
  every = [(s, c) for s in range(len(toyworld.SHAPES)) for c in range(len(toyworld.COLOURS))]
  held = sorted((toyworld.SHAPES.index(s), toyworld.COLOURS.index(c))
                for s, c in toyworld.held_out_combinations(world))
  if count < len(every):
    raise ValueError(f"the held-out shape probe needs num_candidates >= {len(every)} (one image "
                     f"per shape/colour pair to fit on), got {count}")
  rng = np.random.default_rng([seed, 1100])

  def render(pairs):
    objects = [toyworld.Obj(s, c, int(rng.integers(len(toyworld.SIZES))),
                            int(rng.integers(len(toyworld.POSITIONS))), 0) for s, c in pairs]
    return ([[{"image": toyworld.render_image((o,), rng, world)}] for o in objects],
            [o.shape for o in objects])

  fit = every * (count // len(every))
  test = [held[i % len(held)] for i in range(count)]
  return (*render(fit), *render(test))


def build(eval_cfg: Mapping[str, Any], mrl_dims=(), world=None) -> dict[str, Any]:
  """Task name -> evaluator for `config.eval` (num_candidates, split, seed, batch_size, ...)."""
  n = int(eval_cfg["num_candidates"])
  split, seed = eval_cfg.get("split", "eval"), int(eval_cfg.get("seed", 0))
  common = dict(batch_size=int(eval_cfg.get("batch_size", 128)), mrl_dims=tuple(
      mrl_dims) if eval_cfg.get("mrl", True) else ())
  world = toyworld.WorldConfig.from_config(world)
  quantization = ("int8", "binary") if eval_cfg.get("quantized", False) else ()
  tasks: dict[str, Any] = {}
  for task in RETRIEVAL:
    examples = _examples(task, split, n, seed, world)
    tasks[task] = registry.create(
        "retrieval", queries=_queries(task, examples), corpus=[ex["positive"] for ex in examples],
        relevant=_relevant_by_key([ex["positive_key"] for ex in examples]),
        bidirectional=task in CROSS_MODAL,
        quantization=quantization if task == "text_to_image" else (), **common)

  bitext = _examples("bitext", split, n, seed, world)
  tasks["bitext"] = registry.create("bitext", source=[ex["query"] for ex in bitext],
                                    target=[ex["positive"] for ex in bitext], **common)

  sts = _examples("sts", split, n, seed, world)
  tasks["sts"] = registry.create("sts", inputs_a=[ex["query"] for ex in sts],
                                 inputs_b=[ex["positive"] for ex in sts],
                                 scores=[ex["score"] for ex in sts], **common)

  # Classification (the shape of each scene's largest object): a probe fitted on train-split
  # images, tested on eval images, whose main objects are mostly a held-out (shape, colour) pair.
  # In train every colour lacks one shape, exactly the one it has in those pairs, so a probe that
  # reads colour votes against the right answer: this is the transfer of a classifier fitted on
  # seen compositions (probe_image_shape_held_out below measures the shape alone).
  train = _examples("classification", "train", n, seed, world)
  test = _examples("classification", split, n, seed, world)
  tasks["classification"] = registry.create(
      "classification", train_inputs=[ex["query"] for ex in train],
      train_labels=[ex["label"] for ex in train], test_inputs=[ex["query"] for ex in test],
      test_labels=[ex["label"] for ex in test], **common)
  # Zero-shot: each eval image against the label words, as the training task pairs them (R@1 is
  # the accuracy; words of the first configured language).
  tasks["classification_zero_shot"] = registry.create(
      "retrieval", queries=_queries("classification", test),
      corpus=[[{"text": toyworld.answer_word(world.languages[0], "shape", label)}]
              for label in range(len(toyworld.CLASS_NAMES))],
      relevant=[{ex["label"]} for ex in test], ks=(1,), **common)
  tasks["clustering"] = registry.create(
      "clustering", inputs=[ex["query"] for ex in test], labels=[ex["label"] for ex in test],
      seed=seed, **common)

  # Pair classification: an image with its caption (1) or with its hard negative's caption (0).
  pairs = _examples("image_to_text", split, n // 2, seed, world)
  tasks["pair_classification"] = registry.create(
      "pair_classification",
      inputs_a=[ex["query"] for ex in pairs] * 2,
      inputs_b=[ex["positive"] for ex in pairs] + [ex["negative"] for ex in pairs],
      labels=[1] * len(pairs) + [0] * len(pairs), **common)

  # Reranking: a caption's candidates are its image, its hard negative and two other images.
  rerank = _examples("text_to_image", split, n // 4, seed, world)
  candidates, labels = [], []
  for i, ex in enumerate(rerank):
    others = [rerank[(i + k) % len(rerank)]["positive"] for k in (1, 2)]
    candidates.append([ex["positive"], ex["negative"], *others])
    labels.append([1, 0, 0, 0])
  tasks["reranking"] = registry.create(
      "reranking", queries=_queries("text_to_image", rerank), candidates=candidates,
      labels=labels, **common)

  # Multilabel: which colours appear in an image (scenes hold one or more objects).
  scenes_train = [toyworld.example_scenes("classification", "train", i, seed, world)["query"]
                  for i in range(n)]
  scenes_test = [toyworld.example_scenes("classification", split, i, seed, world)["query"]
                 for i in range(n)]
  tasks["multilabel"] = registry.create(
      "multilabel", train_inputs=[ex["query"] for ex in train],
      train_labels=[sorted({obj.colour for obj in scene}) for scene in scenes_train],
      test_inputs=[ex["query"] for ex in test],
      test_labels=[sorted({obj.colour for obj in scene}) for scene in scenes_test],
      num_labels=len(toyworld.COLOURS), **common)

  # Attribute probes: what an image or a sound embedding encodes of one object's shape, colour
  # and size (a sound's pitch, timbre and pulse rate), fitted on half of `num_candidates`
  # single-object train scenes and tested on the other half: no held-out composition, so they
  # tell a missing attribute from a failure to generalise (the classification probe above).
  for modality in PROBE_MODALITIES:
    inputs, labels = attribute_probe_data(modality, n, seed, world)
    half = n // 2
    for attribute in PROBE_ATTRIBUTES:
      tasks[f"probe_{modality}_{attribute}"] = registry.create(
          "classification", train_inputs=inputs[:half], train_labels=labels[attribute][:half],
          test_inputs=inputs[half:], test_labels=labels[attribute][half:], **common)
  fit_inputs, fit_labels, test_inputs, test_labels = held_out_shape_probe_data(n, seed, world)
  tasks["probe_image_shape_held_out"] = registry.create(
      "classification", train_inputs=fit_inputs, train_labels=fit_labels,
      test_inputs=test_inputs, test_labels=test_labels, **common)
  return tasks
