"""Evaluation inside a training run: the evaluators of config.evals on the current encoder ->
eval/<name>.json.

Each `config.evals.<name> = dict(type=..., dataset=..., ...)` is built through
gemb/evaluate/registry.py with the shared settings of config.eval (batch_size, mrl, quantized,
seed); `config.evals = {}` evaluates nothing. Results are flat `"<dataset>/<name>/<metric>"` keys,
also written to metrics.jsonl, and printed as a table.
"""
from __future__ import annotations

import sys
import time

import jax
from ml_collections import ConfigDict

from gemb.embed import make_embed_fn
from gemb.evaluate import report, suite as suite_lib
from gemb.train import config_check, metrics as metrics_lib

_EVALUATORS = {}
# The printed table; eval/<name>.json holds every metric (MRL prefixes, quantised, reverse).
TABLE_COLUMNS = ("R@1", "R@10", "NDCG@10", "R@1@reverse", "spearman", "accuracy", "knn_accuracy",
                 "v_measure", "ap", "map", "f1")


def build_evaluators(config: ConfigDict) -> dict:
  """Name -> evaluator for config.evals (built once per process and config)."""
  config_check.eval_settings(config.eval)
  config_check.evals(config.evals)
  world = config.data.get("toyworld")
  key = repr((config.evals.to_dict(), config.eval.to_dict(), tuple(config.model.mrl_dims), world))
  if key not in _EVALUATORS:
    mrl_dims = tuple(config.model.mrl_dims) if config.eval.mrl else ()
    _EVALUATORS[key] = suite_lib.build(config.evals, config.eval, mrl_dims, config.model, world)
  return _EVALUATORS[key]


def run(config: ConfigDict, workdir: str, graphdef, encoder_params, rest, mesh, *, name: str,
        step: int | None = None, writer=None, stage: str = "eval",
        checkpoint: str | None = None) -> dict:
  """Evaluates the encoder; writes WORKDIR/eval/<name>.json and prints the table."""
  if not config.evals:
    return {}
  evaluators = build_evaluators(config)
  embed_fn = make_embed_fn(config.model, graphdef, encoder_params, rest, mesh)
  start = time.perf_counter()
  show = jax.process_index() == 0 and sys.stdout.isatty()

  def progress(done: int, total: int, evaluator: str) -> None:  # one line, rewritten in place
    if show:
      print(f"\r[eval {name}] {done}/{total} {evaluator:<40.40}", end="", flush=True)
  results = suite_lib.run(config.evals, evaluators, embed_fn, progress)
  if jax.process_index() == 0:
    print(("\r" if show else "") + f"[eval {name}] {len(evaluators)} evaluators in "
          f"{metrics_lib.duration(time.perf_counter() - start)}" + " " * 30, flush=True)
    report.write_json(results, workdir, name)
    title = f"evaluation {name}" + (f" ({checkpoint})" if checkpoint else "")
    table = report.markdown_table(results, columns=TABLE_COLUMNS, print_fn=None)
    print(f"\n## {title}\n\n{table}\n", flush=True)
    if writer is not None and step is not None:
      writer.write(step, results, stage=stage)
  return results
