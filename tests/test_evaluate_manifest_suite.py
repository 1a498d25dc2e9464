"""Manifest evals score each task of a JSONL manifest as retrieval (on the shipped example)."""
import hashlib
import os

import numpy as np
import pytest

from configs import common
from gemb.data import features
from gemb.datasets import manifest, toyworld
from gemb.evaluate import manifest_suite, registry, suite, toyworld_suite

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gemb", "datasets",
                       "example_manifest", "manifest.jsonl")


def _digest(parts) -> str:
  h = hashlib.sha256()
  for part in parts:
    (modality, value), = part.items()
    h.update(modality.encode())
    h.update(value.encode() if isinstance(value, str) else np.ascontiguousarray(value).tobytes())
  return h.hexdigest()


def test_oracle_embedding_scores_one_and_random_scores_low():
  model_cfg = common.model("tiny")
  evals = manifest_suite.evals(EXAMPLE)
  tasks = suite.build(evals, common.eval_settings(), model_cfg=model_cfg)
  index = manifest.scan_manifest(EXAMPLE)
  assert sorted(tasks) == sorted(index.tasks)
  # An oracle: a query and its own positive embed to the same one-hot vector.
  cfg = features.FeatureConfig.from_config(model_cfg)
  table = {}
  for task in index.tasks:
    source = manifest.ManifestSource(index, task, cfg)
    for i in range(len(source)):
      ex = source[i]
      slot = len(table) // 2
      table[_digest(ex["query"])] = slot
      table.setdefault(_digest(ex["positive"]), slot)
  dim = len(table)

  def oracle(inputs):
    return np.eye(dim, dtype=np.float32)[[table[_digest(parts)] for parts in inputs]]

  results = suite.run(evals, tasks, oracle)
  r1 = {k: v for k, v in results.items() if k.endswith("/R@1")}
  assert r1 and all(v == 1.0 for v in r1.values()), r1
  rng = np.random.default_rng(0)
  noise = suite.run(evals, tasks, lambda inputs: rng.normal(size=(len(inputs), 64)))
  assert np.mean([noise[k] for k in r1]) < 1.0


def test_a_run_mixes_manifest_and_toyworld_evaluators():
  evals = {"sts": toyworld_suite.evals(num_candidates=16)["sts"],
           "captions": manifest_suite.evals(EXAMPLE, tasks=["text_to_image"])["text_to_image"]}
  tasks = suite.build(evals, common.eval_settings(), model_cfg=common.model("tiny"),
                      world=toyworld.DEFAULT_CONFIG)
  rng = np.random.default_rng(0)
  results = suite.run(evals, tasks, lambda inputs: rng.normal(size=(len(inputs), 16)))
  assert "toyworld/sts/spearman" in results and "manifest/captions/R@1" in results


def test_a_manifest_task_that_is_not_there_is_named():
  entry = manifest_suite.evals(EXAMPLE, tasks=["text_to_smell"])["text_to_smell"]
  with pytest.raises(ValueError, match=r"manifest .*manifest.jsonl' has no task 'text_to_smell'"):
    registry.build(entry, common.eval_settings(), model_cfg=common.model("tiny"))
