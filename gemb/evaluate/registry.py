"""Evaluator types by name, as a config names them: `dict(type="retrieval", ...)`.

A name is a module of this package ("retrieval", "sts", ...) or a full module path
("my_project.evals.foo") whose module defines an `Evaluator` class, so adding an evaluator never
touches the trainer (big_vision style).
"""
from __future__ import annotations

import importlib

TYPES = ("retrieval", "sts", "classification", "clustering", "pair_classification", "reranking",
         "bitext", "multilabel")


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
