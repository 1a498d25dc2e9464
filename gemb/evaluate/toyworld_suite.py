"""The ToyWorld evaluation suite: every task type and modality, on held-out attribute combinations.

`evals(num_candidates)` returns the suite as config.evals entries (`dict(type=..., dataset=
"toyworld", task=..., ...)`); `task_data` reads the examples an entry names, for
gemb/evaluate/registry.py. Every eval-split scene contains a (shape, colour) pair never seen in
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

from gemb.data.features import with_task_string
from gemb.datasets import toyworld
from gemb.evaluate import metrics

RETRIEVAL = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_image", "text_to_video",
             "video_to_text", "code_to_image", "image_question_to_answer")
CROSS_MODAL = {"text_to_image", "image_to_text", "text_to_audio", "audio_to_image",
               "text_to_video", "video_to_text", "code_to_image"}


def _examples(task: str, split: str, count: int, seed: int, world) -> list[dict]:
  return [toyworld.example(task, split, i, seed, world) for i in range(count)]


def _queries(task: str, examples: list[dict]) -> list[list[dict]]:
  task_string = toyworld.TASKS[task].task_string
  return [with_task_string(ex["query"], task_string) for ex in examples]


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


def evals(num_candidates: int = 256, split: str = "eval") -> dict[str, dict[str, Any]]:
  """The ToyWorld suite as config.evals entries: {name: dict(type, dataset, task, ...)}.

  `type` is the evaluator (gemb/evaluate/registry.py); `task` the ToyWorld task whose examples it
  scores, or a probe's data (attribute_probe, held_out_shape_probe); `num_candidates` examples
  of `split` each (probes also fit on train-split scenes: module docstring)."""
  data = dict(dataset="toyworld", split=split, num_candidates=num_candidates)
  entries = {task: dict(type="retrieval", task=task, bidirectional=task in CROSS_MODAL, **data)
             for task in RETRIEVAL}
  entries["text_to_image"]["quantization"] = ("int8", "binary")
  entries["bitext"] = dict(type="bitext", task="bitext", **data)
  entries["sts"] = dict(type="sts", task="sts", **data)
  # The shape of each scene's largest object: a probe fitted on train images, tested on eval
  # images (mostly a held-out (shape, colour) pair, so it measures transfer to new compositions).
  entries["classification"] = dict(type="classification", task="classification", **data)
  # Zero-shot: each eval image against the label words (R@1 is the accuracy).
  entries["classification_zero_shot"] = dict(type="retrieval", task="classification", ks=(1,),
                                             **data)
  entries["clustering"] = dict(type="clustering", task="classification", **data)
  # An image with its caption (1) or with its hard negative's caption (0).
  entries["pair_classification"] = dict(type="pair_classification", task="image_to_text", **data)
  # A caption's candidates: its image, its hard negative and two other images.
  entries["reranking"] = dict(type="reranking", task="text_to_image", **data)
  # Which colours appear in an image (scenes hold one or more objects).
  entries["multilabel"] = dict(type="multilabel", task="classification", **data)
  for modality in PROBE_MODALITIES:
    for attribute in PROBE_ATTRIBUTES:
      entries[f"probe_{modality}_{attribute}"] = dict(
          type="classification", task="attribute_probe", modality=modality, attribute=attribute,
          **data)
  entries["probe_image_shape_held_out"] = dict(type="classification", task="held_out_shape_probe",
                                               **data)
  return entries


def task_data(type_name: str, options: Mapping[str, Any], *, seed: int, world=None,
              model_cfg=None) -> dict[str, Any]:
  """The evaluator arguments of one config.evals entry on ToyWorld (see `evals`): its data,
  and its options other than task, split and num_candidates (e.g. bidirectional, ks)."""
  del model_cfg  # ToyWorld examples are raw parts (arrays, texts): nothing to decode
  options = dict(options)
  task, split, n = options.pop("task"), options.pop("split"), int(options.pop("num_candidates"))
  world = toyworld.WorldConfig.from_config(world)
  if (type_name, task) in _DATA:
    builder = _DATA[(type_name, task)]
  elif type_name == "retrieval" and task in toyworld.TASKS:
    builder = _retrieval
  else:
    raise ValueError(f"no ToyWorld evaluation of type {type_name!r} on task {task!r}; known: "
                     f"retrieval on {RETRIEVAL}, {sorted(_DATA)}")
  return {**builder(task, split, n, seed, world, options), **options}


def _retrieval(task, split, n, seed, world, options):
  examples = _examples(task, split, n, seed, world)
  return dict(queries=_queries(task, examples), corpus=[ex["positive"] for ex in examples],
              relevant=metrics.relevant_by_key([ex["positive_key"] for ex in examples]))


def _bitext(task, split, n, seed, world, options):
  examples = _examples(task, split, n, seed, world)
  return dict(source=[ex["query"] for ex in examples], target=[ex["positive"] for ex in examples])


def _sts(task, split, n, seed, world, options):
  examples = _examples(task, split, n, seed, world)
  return dict(inputs_a=[ex["query"] for ex in examples],
              inputs_b=[ex["positive"] for ex in examples],
              scores=[ex["score"] for ex in examples])


def _classification(task, split, n, seed, world, options):
  # In train every colour lacks one shape, exactly the one it has in the held-out pairs, so a
  # probe that reads colour votes against the right answer (probe_image_shape_held_out measures
  # the shape alone).
  train = _examples(task, "train", n, seed, world)
  test = _examples(task, split, n, seed, world)
  return dict(train_inputs=[ex["query"] for ex in train],
              train_labels=[ex["label"] for ex in train],
              test_inputs=[ex["query"] for ex in test], test_labels=[ex["label"] for ex in test])


def _zero_shot(task, split, n, seed, world, options):
  # Label words of the first configured language, as the training task pairs them.
  test = _examples(task, split, n, seed, world)
  return dict(queries=_queries(task, test),
              corpus=[[{"text": toyworld.answer_word(world.languages[0], "shape", label)}]
                      for label in range(len(toyworld.CLASS_NAMES))],
              relevant=[{ex["label"]} for ex in test])


def _clustering(task, split, n, seed, world, options):
  test = _examples(task, split, n, seed, world)
  return dict(inputs=[ex["query"] for ex in test], labels=[ex["label"] for ex in test], seed=seed)


def _pair_classification(task, split, n, seed, world, options):
  pairs = _examples(task, split, n // 2, seed, world)
  return dict(inputs_a=[ex["query"] for ex in pairs] * 2,
              inputs_b=[ex["positive"] for ex in pairs] + [ex["negative"] for ex in pairs],
              labels=[1] * len(pairs) + [0] * len(pairs))


def _reranking(task, split, n, seed, world, options):
  rerank = _examples(task, split, n // 4, seed, world)
  candidates, labels = [], []
  for i, ex in enumerate(rerank):
    others = [rerank[(i + k) % len(rerank)]["positive"] for k in (1, 2)]
    candidates.append([ex["positive"], ex["negative"], *others])
    labels.append([1, 0, 0, 0])
  return dict(queries=_queries(task, rerank), candidates=candidates, labels=labels)


def _multilabel(task, split, n, seed, world, options):
  data = _classification(task, split, n, seed, world, options)
  scenes_train = [toyworld.example_scenes(task, "train", i, seed, world)["query"]
                  for i in range(n)]
  scenes_test = [toyworld.example_scenes(task, split, i, seed, world)["query"] for i in range(n)]
  data["train_labels"] = [sorted({obj.colour for obj in scene}) for scene in scenes_train]
  data["test_labels"] = [sorted({obj.colour for obj in scene}) for scene in scenes_test]
  return dict(data, num_labels=len(toyworld.COLOURS))


def _attribute_probe(task, split, n, seed, world, options):
  # Fitted on half of n single-object train scenes and tested on the other half: no held-out
  # composition, so it tells a missing attribute from a failure to generalise.
  modality, attribute = options.pop("modality"), options.pop("attribute")
  inputs, labels = attribute_probe_data(modality, n, seed, world)
  half = n // 2
  return dict(train_inputs=inputs[:half], train_labels=labels[attribute][:half],
              test_inputs=inputs[half:], test_labels=labels[attribute][half:])


def _held_out_shape_probe(task, split, n, seed, world, options):
  fit_inputs, fit_labels, test_inputs, test_labels = held_out_shape_probe_data(n, seed, world)
  return dict(train_inputs=fit_inputs, train_labels=fit_labels, test_inputs=test_inputs,
              test_labels=test_labels)


_DATA = {  # (evaluator type, task) -> the evaluator's data
    ("bitext", "bitext"): _bitext,
    ("sts", "sts"): _sts,
    ("classification", "classification"): _classification,
    ("retrieval", "classification"): _zero_shot,
    ("clustering", "classification"): _clustering,
    ("pair_classification", "image_to_text"): _pair_classification,
    ("reranking", "text_to_image"): _reranking,
    ("multilabel", "classification"): _multilabel,
    ("classification", "attribute_probe"): _attribute_probe,
    ("classification", "held_out_shape_probe"): _held_out_shape_probe,
}
