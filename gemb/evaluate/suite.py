"""Runs a named set of evaluators on one embedding function into flat `<suite>/<task>/<metric>` keys."""
from __future__ import annotations

import time
from typing import Mapping

from absl import logging

from gemb.evaluate.embeddings import EmbedFn


def run_suite(suite_name: str, tasks: Mapping[str, object], embed_fn: EmbedFn) -> dict[str, float]:
  """Runs every task's `Evaluator.run(embed_fn)`.

  Args:
    suite_name: first part of every key, e.g. "toy".
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
