"""Builds the evaluators a config declares; runs them into flat `<dataset>/<name>/<metric>` keys."""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from gemb.evaluate import registry
from gemb.evaluate.embeddings import EmbedFn


def build(evals: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any],
          mrl_dims: Sequence[int] = (), model_cfg=None, world=None) -> dict[str, object]:
  """Name -> evaluator for every config.evals entry (registry.build's arguments)."""
  return {name: registry.build(entry, settings, mrl_dims, model_cfg, world)
          for name, entry in evals.items()}


def run(evals: Mapping[str, Mapping[str, Any]], evaluators: Mapping[str, object],
        embed_fn: EmbedFn, progress: Callable[[int, int, str], None] | None = None
        ) -> dict[str, float]:
  """Runs `build`'s evaluators: {"<entry's dataset>/<name>/<metric>": float}, in order;
  `progress(done, total, name)` is called after each one."""
  results = {}
  for i, (name, evaluator) in enumerate(evaluators.items()):
    results.update(run_suite(evals[name]["dataset"], {name: evaluator}, embed_fn))
    if progress is not None:
      progress(i + 1, len(evaluators), name)
  return results


def run_suite(suite_name: str, tasks: Mapping[str, object], embed_fn: EmbedFn) -> dict[str, float]:
  """Runs every task's `Evaluator.run(embed_fn)`.

  Args:
    suite_name: first part of every key, e.g. "toyworld".
    tasks: task name -> evaluator (anything with `run(embed_fn)` yielding (metric, value)).
    embed_fn: inputs (list of lists of parts) -> [N, D] embeddings.
  Returns:
    {"<suite>/<task>/<metric>": float}, tasks in the given order.
  """
  for name in (suite_name, *tasks):
    if not name or "/" in name:
      raise ValueError(f"suite/task name {name!r} must be non-empty and contain no '/'.")
  results = {}
  for task_name, evaluator in tasks.items():
    start = time.perf_counter()
    for metric, value in evaluator.run(embed_fn):
      key = f"{suite_name}/{task_name}/{metric}"
      if key in results:
        raise ValueError(f"metric {key} was reported twice; evaluator names must be unique.")
      results[key] = float(value)
    logging.info("eval %s/%s: %.2fs", suite_name, task_name, time.perf_counter() - start)
  return results
