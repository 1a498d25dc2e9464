"""Evaluators by name, as a config declares them: `config.evals.<name> = dict(type=..., ...)`.

`type` names the evaluator: a module of this package ("retrieval", "sts", ...) or a full module
path ("my_project.evals.foo") whose module defines an `Evaluator` class. `dataset` names where its
data come from: a module with `task_data(type, options, *, seed, model_cfg, world)` returning the
evaluator's arguments ("toyworld", "manifest", or a full module path). Adding either never
touches the trainer (big_vision style).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

TYPES = ("retrieval", "sts", "classification", "clustering", "pair_classification", "reranking",
         "bitext", "multilabel")
DATASETS = {"toyworld": "gemb.evaluate.toyworld_suite", "manifest": "gemb.evaluate.manifest_suite"}


def get(type_name: str) -> type:
  """The `Evaluator` class of an evaluator type name."""
  module_name = type_name if "." in type_name else f"gemb.evaluate.{type_name}"
  if "." not in type_name and type_name not in TYPES:
    raise ValueError(f"unknown evaluator type {type_name!r}; choose one of {TYPES} or give a full "
                     "module path that defines an `Evaluator` class.")
  module = importlib.import_module(module_name)
  if not hasattr(module, "Evaluator"):
    raise ValueError(f"module {module_name} has no `Evaluator` class.")
  return module.Evaluator


def create(type_name: str, **kwargs):
  """An evaluator of `type_name` built from its task data and options (keyword arguments)."""
  return get(type_name)(**kwargs)


def build(entry: Mapping[str, Any], settings: Mapping[str, Any], mrl_dims: Sequence[int] = (),
          model_cfg=None, world=None):
  """The evaluator of one config.evals entry.

  Args:
    entry: dict(type=<evaluator>, dataset=<data>, <what the dataset's task_data reads>,
      <evaluator options, e.g. bidirectional, ks, quantization>).
    settings: config.eval (batch_size, quantized: False drops `quantization`, seed).
    mrl_dims: the Matryoshka prefixes to score too (() for the full embedding only).
    model_cfg: config.model (how files are decoded); world: config.data.toyworld.
  """
  options = dict(entry)
  type_name, dataset = options.pop("type"), options.pop("dataset")
  module_name = DATASETS.get(dataset, dataset)
  if "." not in module_name:
    raise ValueError(f"unknown evaluation dataset {dataset!r}; choose one of {sorted(DATASETS)} "
                     "or give a full module path that defines `task_data`.")
  data = importlib.import_module(module_name).task_data(
      type_name, options, seed=int(settings["seed"]), model_cfg=model_cfg, world=world)
  if not settings["quantized"]:
    data.pop("quantization", None)
  return create(type_name, batch_size=int(settings["batch_size"]), mrl_dims=tuple(mrl_dims),
                **data)
