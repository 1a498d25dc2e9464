"""The manifest suite scores each task of a JSONL manifest as retrieval (on the shipped example)."""
import hashlib
import os

import numpy as np

from configs import model_presets
from gemb.data import features
from gemb.datasets import manifest
from gemb.evaluate import manifest_suite, suite

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
  model_cfg = model_presets.get_model_config("tiny")
  tasks = manifest_suite.build({"manifest": EXAMPLE, "mrl": False}, model_cfg)
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

  results = suite.run_suite("mine", tasks, oracle)
  r1 = {k: v for k, v in results.items() if k.endswith("/R@1")}
  assert r1 and all(v == 1.0 for v in r1.values()), r1
  rng = np.random.default_rng(0)
  noise = suite.run_suite("mine", tasks, lambda inputs: rng.normal(size=(len(inputs), 64)))
  assert np.mean([noise[k] for k in r1]) < 1.0
