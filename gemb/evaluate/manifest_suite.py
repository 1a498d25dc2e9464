"""An evaluation suite from a JSONL manifest (your own data): every task scored as retrieval.

Each task's queries are scored against all of that task's positives (e.g. an image-caption
manifest gives text->image R@1, and with `bidirectional` image->text too). A positive is
relevant to a query when it is the query's own positive, or has the same `positive_key`
(identical content). Files are decoded once, when the suite is built.
"""
from __future__ import annotations

from typing import Any, Mapping

from gemb.data import features
from gemb.datasets import manifest
from gemb.evaluate import registry


def build(eval_cfg: Mapping[str, Any], model_cfg, mrl_dims=()) -> dict[str, Any]:
  """Task name -> retrieval evaluator for `config.eval.manifest` (a JSONL manifest path)."""
  path = eval_cfg.get("manifest")
  if not path:
    raise ValueError("config.eval.suite='manifest' needs config.eval.manifest (a JSONL path)")
  index = manifest.scan_manifest(path)
  cfg = features.FeatureConfig.from_config(model_cfg)
  limit = int(eval_cfg.get("num_candidates", 0)) or None
  tasks = {}
  for task in sorted(index.tasks):
    source = manifest.ManifestSource(index, task, cfg)
    examples = [source[i] for i in range(min(len(source), limit or len(source)))]
    keys = [ex.get("positive_key", i) for i, ex in enumerate(examples)]
    same_key: dict[Any, set[int]] = {}
    for j, key in enumerate(keys):
      same_key.setdefault(key, set()).add(j)
    tasks[task] = registry.create(
        "retrieval", queries=[ex["query"] for ex in examples],
        corpus=[ex["positive"] for ex in examples],
        relevant=[same_key[key] | {i} for i, key in enumerate(keys)],
        bidirectional=bool(eval_cfg.get("bidirectional", True)),
        batch_size=int(eval_cfg.get("batch_size", 128)),
        mrl_dims=tuple(mrl_dims) if eval_cfg.get("mrl", True) else ())
  return tasks
