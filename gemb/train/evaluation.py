"""Evaluation inside a training run: the configured suite on the current encoder -> eval/<name>.json.

`config.eval.suite` names the suite ('toyworld'; 'manifest' scores every task of the JSONL
manifest `config.eval.manifest` as retrieval; '' for none); results are flat
`"<suite>/<task>/<metric>"` keys, also written to metrics.jsonl, and printed as a table.
"""
from __future__ import annotations

import os

import jax
from ml_collections import ConfigDict

from gemb.embed import make_embed_fn
from gemb.evaluate import report, suite as suite_lib

_SUITES = {}
# The printed table; eval/<name>.json holds every metric (MRL prefixes, quantised, reverse).
TABLE_COLUMNS = ("R@1", "R@10", "NDCG@10", "R@1@reverse", "spearman", "accuracy", "knn_accuracy",
                 "v_measure", "ap", "map", "f1")


def build_suite(config: ConfigDict) -> dict:
  """Task name -> evaluator for config.eval.suite (built once per process and config)."""
  key = (config.eval.suite, repr(config.eval.to_dict()), tuple(config.model.mrl_dims))
  if key not in _SUITES:
    if config.eval.suite == "toyworld":
      from gemb.evaluate import toyworld_suite
      _SUITES[key] = toyworld_suite.build(config.eval, config.model.mrl_dims,
                                          world=config.data.get("toyworld"))
    elif config.eval.suite == "manifest":
      from gemb.evaluate import manifest_suite
      _SUITES[key] = manifest_suite.build(config.eval, config.model, config.model.mrl_dims)
    else:
      raise ValueError(f"config.eval.suite={config.eval.suite!r}: use 'toyworld', 'manifest' "
                       "(with config.eval.manifest) or '' for none")
  return _SUITES[key]


def run(config: ConfigDict, workdir: str, graphdef, encoder_params, rest, mesh, *, name: str,
        step: int | None = None, writer=None, stage: str = "eval",
        checkpoint: str | None = None) -> dict:
  """Evaluates the encoder; writes WORKDIR/eval/<name>.json and prints the table."""
  if not config.eval.suite:
    return {}
  embed_fn = make_embed_fn(config.model, graphdef, encoder_params, rest, mesh)
  results = suite_lib.run_suite(config.eval.suite, build_suite(config), embed_fn)
  if jax.process_index() == 0:
    report.write_json(results, workdir, name)
    title = f"evaluation {name}" + (f" ({checkpoint})" if checkpoint else "")
    table = report.markdown_table(results, columns=TABLE_COLUMNS, print_fn=None)
    print(f"\n## {title}\n\n{table}\n", flush=True)
    if writer is not None and step is not None:
      writer.write(step, results, stage=stage)
  return results
