"""Evaluation on a JSONL manifest (your own data): a manifest task scored as retrieval.

A config.evals entry `dict(type="retrieval", dataset="manifest", manifest=PATH, task=TASK)` scores
the task's queries against all of its positives (the first `num_candidates`, 0 = all; e.g. an
image-caption task gives text->image R@1, and with `bidirectional` image->text too). A positive is
relevant to a query when it is the query's own positive, or has the same `positive_key`
(identical content). Files are decoded once, when the evaluator is built.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from gemb.data import features
from gemb.datasets import manifest
from gemb.evaluate import metrics


def evals(path: str, tasks: Sequence[str] | None = None, num_candidates: int = 0,
          bidirectional: bool = True) -> dict[str, dict[str, Any]]:
  """config.evals entries scoring `tasks` of the manifest at `path` (default: every task in it,
  read from the file) as retrieval, each named for its task."""
  tasks = sorted(manifest.scan_manifest(path).tasks) if tasks is None else tasks
  return {task: dict(type="retrieval", dataset="manifest", manifest=path, task=task,
                     num_candidates=num_candidates, bidirectional=bidirectional)
          for task in tasks}


def task_data(type_name: str, options: Mapping[str, Any], *, seed: int, model_cfg=None,
              world=None) -> dict[str, Any]:
  """The retrieval evaluator's arguments for one manifest entry: its queries, corpus, relevance,
  and its options other than manifest, task and num_candidates (e.g. bidirectional)."""
  del seed, world  # the first num_candidates lines of the task, in manifest order
  if type_name != "retrieval":
    raise ValueError(f"a manifest task is scored as type='retrieval', not {type_name!r}")
  options = dict(options)
  path, task = options.pop("manifest"), options.pop("task")
  limit = int(options.pop("num_candidates", 0)) or None
  index = manifest.scan_manifest(path)
  if task not in index.tasks:
    raise ValueError(f"manifest {path!r} has no task {task!r}; it has {sorted(index.tasks)}")
  source = manifest.ManifestSource(index, task, features.FeatureConfig.from_config(model_cfg))
  examples = [source[i] for i in range(min(len(source), limit or len(source)))]
  keys = [ex.get("positive_key", i) for i, ex in enumerate(examples)]
  return dict(queries=[ex["query"] for ex in examples], corpus=[ex["positive"] for ex in examples],
              relevant=metrics.relevant_by_key(keys), **options)
