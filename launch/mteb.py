"""MTEB tasks on a gemb model: `python -m launch.mteb --bundle=DIR --tasks=STS12,SciFact`.

`--benchmark="MTEB(eng, v2)"` runs a whole benchmark instead of named tasks, and
`--config=... --workdir=... [--checkpoint=stage:step]` evaluates a training checkpoint instead of a
bundle. MTEB downloads each task's data from the Hugging Face Hub. Results land in --output_dir
(default WORKDIR/mteb, or BUNDLE/mteb): results.md, a table of each task's main score with the
means MTEB's leaderboard shows, and MTEB's own JSON under results/<model>/ (docs/mteb.md).
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Any, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs: the tests import it beside other commands."""
  flags.DEFINE_string("bundle", None, "Serving bundle folder (from --mode=export).")
  config_flags.DEFINE_config_file("config", None, "Instead of --bundle: the training config of the "
                                  "checkpoint to evaluate (with --workdir).", lock_config=True)
  flags.DEFINE_string("workdir", None, "With --config: the training workdir.")
  flags.DEFINE_string("checkpoint", None, "With --config: a checkpoint reference ('stage', "
                      "'stage:step' or a path; default the last stage's latest).")
  flags.DEFINE_list("tasks", [], "MTEB task names, e.g. STS12,SciFact,Banking77Classification.")
  flags.DEFINE_string("benchmark", None, "An MTEB benchmark name instead of --tasks, e.g. "
                      "'MTEB(eng, v2)' or 'MTEB(Multilingual, v2)'.")
  flags.DEFINE_list("languages", [], "Only these languages' subsets (ISO 639-3, e.g. eng,deu).")
  flags.DEFINE_string("output_dir", None, "Where results go (default: WORKDIR/mteb or "
                      "BUNDLE/mteb).")
  flags.DEFINE_integer("mrl_dim", None, "Evaluate this MRL prefix width instead of the full one.")
  flags.DEFINE_integer("batch_size", 32, "Inputs per encode batch.")
  flags.DEFINE_string("task_strings", None, "A JSON file of {MTEB prompt key: gemb task string or "
                      "null} laid over gemb.evaluate.mteb.DEFAULT_TASK_STRINGS (docs/mteb.md).")
  flags.DEFINE_bool("resume", False, "Keep results already in --output_dir and run only what is "
                    "missing (default: rerun every task, since a bundle path may hold a new "
                    "model).")


RESULTS_TABLE = "results.md"


def is_download_error(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is a failed network fetch of a task's data."""
  while error is not None:
    if isinstance(error, (ConnectionError, TimeoutError)) or any(
        word in type(error).__name__ for word in ("Connect", "Offline", "LocalEntryNotFound")):
      return True
    error = error.__cause__ or error.__context__
  return False


def failure_message(task_name: str, error: BaseException) -> str:
  """One line naming the task, what went wrong and, for a download, how to fix it."""
  first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  if is_download_error(error):
    return (f"{task_name}: its data could not be downloaded ({first_line}). MTEB fetches task "
            "data from the Hugging Face Hub: run where huggingface.co is reachable, or fill "
            "HF_HOME's cache there and copy it here (docs/mteb.md).")
  return f"{task_name}: {type(error).__name__}: {first_line}"


def read_task_strings(path: str) -> dict[str, str | None]:
  """The default task-string table with the JSON object in `path` laid over it."""
  from gemb.evaluate.mteb import DEFAULT_TASK_STRINGS  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    table = json.load(f)
  if not isinstance(table, dict) or not all(isinstance(v, (str, type(None)))
                                             for v in table.values()):
    raise app.UsageError(f"--task_strings={path}: expected a JSON object of task strings or null, "
                         'e.g. {"Retrieval-query": "search result", "STS": null}')
  return {**DEFAULT_TASK_STRINGS, **table}


def main_score_table(rows: Sequence[dict[str, Any]], failures: Sequence[str], title: str) -> str:
  """Markdown: one row per task (type, main score name, value x 100), then the mean over tasks
  and the mean of the per-type means (MTEB's leaderboard 'Mean (Task)' / 'Mean (TaskType)')."""
  lines = [f"# {title}", "", "| task | type | main score | value |", "|---|---|---|---|"]
  rows = sorted(rows, key=lambda r: (r["type"], r["task"]))
  lines += [f"| {r['task']} | {r['type']} | {r['metric']} | {100 * r['score']:.2f} |" for r in rows]
  if rows:
    by_type: dict[str, list[float]] = {}
    for r in rows:
      by_type.setdefault(r["type"], []).append(r["score"])
    type_means = {t: sum(v) / len(v) for t, v in by_type.items()}
    lines += ["", "| mean | tasks | value |", "|---|---|---|"]
    lines += [f"| {t} | {len(by_type[t])} | {100 * m:.2f} |" for t, m in sorted(type_means.items())]
    task_mean = sum(r["score"] for r in rows) / len(rows)
    lines.append(f"| Mean (Task) | {len(rows)} | {100 * task_mean:.2f} |")
    lines.append(f"| Mean (TaskType) | {len(type_means)} | "
                 f"{100 * sum(type_means.values()) / len(type_means):.2f} |")
  if failures:
    lines += ["", f"{len(failures)} task(s) failed:", ""] + [f"- {f}" for f in failures]
  return "\n".join(lines) + "\n"


def run(encoder, tasks: Sequence[Any], output_dir: str, *, batch_size: int = 32,
        resume: bool = False, title: str | None = None) -> tuple[list[dict], list[str]]:
  """Evaluates `encoder` on MTEB `tasks` one at a time (a failed download does not stop the
  rest); writes MTEB's JSON under output_dir/results/ and output_dir/results.md.

  Returns (one {task, type, metric, score} row per task result, one message per failed task).
  """
  import mteb  # pylint: disable=g-import-not-at-top  (slow import: after flag errors)
  from gemb.train.metrics import duration  # pylint: disable=g-import-not-at-top
  os.makedirs(output_dir, exist_ok=True)
  cache = mteb.ResultCache(output_dir)
  rows, failures = [], []
  start = time.perf_counter()
  for i, task in enumerate(tasks):
    name = task.metadata.name
    print(f"[{i + 1}/{len(tasks)}] {name} ({task.metadata.type})", flush=True)
    try:
      with warnings.catch_warnings():
        # gemb models have no revision; MTEB warns of that for every task it caches.
        warnings.filterwarnings("ignore", message="`model_revision` is not specified")
        result = mteb.evaluate(encoder, task, cache=cache, encode_kwargs={"batch_size": batch_size},
                               overwrite_strategy="only-missing" if resume else "always",
                               show_progress_bar=False)
    except Exception as e:  # pylint: disable=broad-except  (reported per task and in the table)
      failures.append(failure_message(name, e))
      print(f"  failed: {failures[-1]}", flush=True)
      continue
    scores = []
    for task_result in result.task_results:
      rows.append({"task": task_result.task_name, "type": task.metadata.type,
                   "metric": task.metadata.main_score, "score": float(task_result.get_score())})
      scores.append(f"{task.metadata.main_score} {rows[-1]['score']:.4f}")
    elapsed = time.perf_counter() - start
    print(f"  {', '.join(scores)}; {duration(elapsed)} so far, ETA "
          f"{duration(elapsed / (i + 1) * (len(tasks) - i - 1))}", flush=True)
  title = title or f"MTEB: {encoder.mteb_model_meta.name}"
  with open(os.path.join(output_dir, RESULTS_TABLE), "w") as f:
    f.write(main_score_table(rows, failures, title))
  return rows, failures


def select_tasks(names: Sequence[str], benchmark: str | None, languages: Sequence[str]) -> list:
  """MTEB task objects for --tasks or --benchmark (exactly one of them)."""
  import mteb  # pylint: disable=g-import-not-at-top
  if bool(names) == bool(benchmark):
    raise app.UsageError("give exactly one of --tasks=Name1,Name2 and --benchmark='MTEB(eng, v2)'")
  if benchmark:
    try:
      tasks = list(mteb.get_benchmark(benchmark).tasks)
    except (KeyError, ValueError) as e:
      raise app.UsageError(f"--benchmark={benchmark!r}: {e}; list them with `python -c 'import "
                           "mteb; print([b.name for b in mteb.get_benchmarks()])'`") from e
    if languages:
      tasks = [t.filter_languages(languages) for t in tasks]
    return tasks
  try:
    return list(mteb.get_tasks(tasks=list(names), languages=list(languages) or None))
  except KeyError as e:
    reason = str(e.args[0] if e.args else e).rstrip(".")
    raise app.UsageError(f"--tasks: {reason}; MTEB's task names are listed by "
                         "`python -c 'import mteb; print(mteb.get_tasks())'`") from e


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if bool(FLAGS.bundle) == bool(FLAGS.config):
    raise app.UsageError("give exactly one of --bundle=DIR and --config=... --workdir=DIR")
  if FLAGS.config and not FLAGS.workdir:
    raise app.UsageError("--config needs --workdir (the training run's folder)")
  tasks = select_tasks(FLAGS.tasks, FLAGS.benchmark, FLAGS.languages)
  options = {"mrl_dim": FLAGS.mrl_dim,
             "task_strings": read_task_strings(FLAGS.task_strings) if FLAGS.task_strings else None}
  from gemb.evaluate.mteb import GembEncoder  # pylint: disable=g-import-not-at-top
  if FLAGS.bundle:
    encoder = GembEncoder.from_bundle(FLAGS.bundle, **options)
  else:
    encoder = GembEncoder.from_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, **options)
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir or FLAGS.bundle, "mteb")
  suffix = f" at mrl_dim={FLAGS.mrl_dim}" if FLAGS.mrl_dim else ""
  title = f"MTEB {FLAGS.benchmark or 'tasks'}: {encoder.mteb_model_meta.name}{suffix}"
  rows, failures = run(encoder, tasks, output_dir, batch_size=FLAGS.batch_size,
                       resume=FLAGS.resume, title=title)
  print(f"{len(rows)} task results -> {os.path.join(output_dir, RESULTS_TABLE)}; MTEB's JSON in "
        f"{os.path.join(output_dir, 'results')}", flush=True)
  if failures:
    print(f"{len(failures)} task(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
