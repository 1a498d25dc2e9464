"""Per-domain retrieval: every model (specialist, fused, distilled) on each domain's held-out data.

A domain's evaluation data are the first `config.eval.num_candidates` examples (or all, if fewer) of
its task in the evaluation split (ToyWorld's 'eval' split holds only held-out attribute
combinations), read from the same source as its training data (ToyWorld, a manifest -
`config.eval.manifest` when the evaluation examples are in their own file - or TFDS). Each query
ranks every positive of the domain by cosine; a positive is relevant when its identity key (or,
without keys, its content) equals the query's own positive's, as in gemb/evaluate/toyworld_suite.py.
Queries carry their task string exactly when training used task strings.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from gemb.data import features, pipeline
from gemb.evaluate import metrics as metrics_lib, retrieval, search

# embed(inputs, ids) -> [N, D]: a model embeds raw inputs; a precomputed table looks up ids.
Embed = Callable[[list, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class DomainEval:
  """One domain's retrieval task: queries against the corpus of all its positives."""

  name: str
  queries: list            # raw inputs (task string included where training had it)
  corpus: list             # raw inputs
  query_ids: np.ndarray    # int64 [Q] example ids (for precomputed teachers)
  corpus_ids: np.ndarray   # int64 [Q]
  relevance: list          # per query {corpus index: 1.0}

  def embeddings(self, embed: Embed) -> tuple[np.ndarray, np.ndarray]:
    """(queries [Q, D], corpus [Q, D]) unit rows."""
    out = []
    for inputs, ids in ((self.queries, self.query_ids), (self.corpus, self.corpus_ids)):
      x = np.asarray(embed(inputs, ids), np.float32)
      out.append(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12))
    return out[0], out[1]

  def metrics(self, embed: Embed, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"R@k": ..., "NDCG@10", "MRR@10"} of `embed` on this domain."""
    queries, corpus = self.embeddings(embed)
    depth = max(max(ks), retrieval.NDCG_AND_MRR_CUTOFF)
    _, ranked = search.top_k(queries, corpus, min(depth, len(corpus)))
    return dict(retrieval.ranking_metrics(ranked, self.relevance, tuple(ks), "hit"))


def uses_task_strings(data_cfg: Mapping) -> bool:
  """Training puts task strings on queries unless config.data.task_string_dropout is 1."""
  return float(pipeline.data_config(data_cfg)["task_string_dropout"]) < 1.0


def build(config, domains: Mapping[str, Mapping]) -> dict[str, DomainEval]:
  """Domain name -> DomainEval for config.eval (split, num_candidates, manifest)."""
  count = int(config.eval.num_candidates)
  if count < 2:
    raise ValueError(f"config.eval.num_candidates={count}: retrieval needs at least 2")
  data_cfg = dict(config.data)
  data_cfg["split"] = config.eval.split
  data_cfg["toyworld_size"] = count
  if config.eval.get("manifest"):
    data_cfg["manifest"] = config.eval.manifest
  mixture = {name: {"rate": 1.0, "batch_size": 1,
                    **({"source": entry["source"]} if "source" in entry else {})}
             for name, entry in domains.items()}
  tasks = pipeline.make_tasks(data_cfg, config.model, mixture, hard_negatives=False,
                              where="config.domains (evaluation)")
  task_strings = uses_task_strings(config.data)
  out = {}
  for name, task in tasks.items():
    examples = [task.source[i] for i in range(min(count, len(task.source)))]
    ids = np.array([features.example_ids(raw) for raw in examples], np.int64)  # [Q, 2]
    queries = [raw["query"] for raw in examples]
    if task_strings and task.task_string:
      queries = [features.with_task_string(parts, task.task_string) for parts in queries]
    keys = [raw.get("positive_key", int(ids[i, 1])) for i, raw in enumerate(examples)]
    out[name] = DomainEval(name=name, queries=queries, corpus=[raw["positive"] for raw in examples],
                           query_ids=ids[:, 0], corpus_ids=ids[:, 1],
                           relevance=retrieval.as_relevance(metrics_lib.relevant_by_key(keys),
                                                            len(keys), len(keys)))
  return out
