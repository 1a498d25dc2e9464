"""The distillation experiment end to end: specialists -> fused baseline -> students -> report.

  python -m launch.main --config=configs/proj/distill.py --workdir=DIR

  1. Specialists: one per domain (config.specialists[domain]): a gemb training run on that
     domain alone (`type='gemb'`, its trainer config in `train`, trained into
     DIR/specialists/<domain> by gemb.train.trainer), or an outside model's precomputed
     embeddings (`type='table'`, `path` to a .npz, see gemb/train/teachers.py).
  2. Fusion baseline: one model trained with the contrastive loss on all domains' data
     (config.fusion, a trainer config, into DIR/fusion), with the students' budget.
  3. Students (config.students): one universal model each, a trainer config whose distillation
     stage learns from the specialists with its loss weights (KL of in-batch similarity
     distributions; L2 of the similarities), trained by gemb.train.trainer into
     DIR/distill/<student>.
  4. Every model's retrieval metrics on every domain's held-out data -> DIR/distill/report.json
     ({metric: {model: {domain: value}}}) and DIR/distill/report.md (the table).

Every training run resumes from its own checkpoints, so re-running the command after a crash
continues where it stopped; finished runs are only reloaded.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

import jax
import numpy as np
from ml_collections import ConfigDict

from gemb import sharding
from gemb.data import pipeline
from gemb.evaluate import report as report_lib
from gemb.proj.distill import evaluation
from gemb.runtime import compilation_cache
from gemb.train import checkpoints, config_check, teachers as teachers_lib, trainer

SPECIALIST = "specialist"
FUSION = "fusion"
METRICS = ("R@1", "R@5", "R@10", "NDCG@10", "MRR@10")


def _train(train_config: ConfigDict, workdir: str) -> str:
  """Runs (or resumes) a gemb training run; returns its last stage's latest checkpoint."""
  trainer.train_and_evaluate(train_config, workdir)
  return checkpoints.resolve(train_config.stage_order[-1], workdir)


def domain_mixture(config: ConfigDict) -> dict:
  """config.domains as a pipeline mixture with the universal models' batch size."""
  return {name: {"batch_size": int(config.batch_size), **dict(entry)}
          for name, entry in config.domains.items()}


def _training_examples(config: ConfigDict, domain: str) -> tuple[list, str | None]:
  """Every training example of a domain (its source, as the student reads it) + task string."""
  task = pipeline.make_tasks(config.data, config.model, {domain: domain_mixture(config)[domain]},
                             hard_negatives=False, where="config.domains")[domain]
  task_string = task.task_string if evaluation.uses_task_strings(config.data) else None
  return [task.source[i] for i in range(len(task.source))], task_string


def specialist(config: ConfigDict, workdir: str, domain: str, mesh) -> tuple[dict, Callable]:
  """(the students' teacher entry of one domain's specialist, its embed for evaluation)."""
  spec = config.specialists[domain]
  if spec.type == "table":
    return {"type": "table", "path": spec.path}, teachers_lib.TableTeacher.from_file(
        spec.path, mesh).embed
  directory = os.path.join(workdir, "specialists", domain)
  path = _train(spec.train, directory)
  encoder = teachers_lib.EncoderTeacher.from_checkpoint(
      spec.train.model, path, mesh, eval_batch_size=config.eval.batch_size)
  if config.teacher_embeddings == "on_the_fly":
    return {"type": "checkpoint", "path": path, "model": spec.train.model}, encoder.embed
  table_path = os.path.join(directory, "teacher_table.npz")
  if not os.path.exists(table_path):
    examples, task_string = _training_examples(config, domain)
    ids, embeddings = teachers_lib.precompute_table(
        lambda inputs: encoder.embed(inputs, None), examples, task_string,
        batch_size=config.eval.batch_size)
    if jax.process_index() == 0:
      teachers_lib.save_table(table_path, ids, embeddings)
  return {"type": "table", "path": table_path}, encoder.embed


def _averages(table: dict) -> dict:
  return {model: float(np.mean(list(values.values()))) for model, values in table.items()
          if values and all(v is not None for v in values.values())}


def _goal(report: dict, students, margin: float) -> dict:
  """Per student: its R@1 gap to each specialist (specialist - student) and the issue's goal."""
  r1 = report["R@1"]
  out = {"margin": margin}
  for name in students:
    gaps = {d: (None if r1[SPECIALIST].get(d) is None else r1[SPECIALIST][d] - r1[name][d])
            for d in r1[name]}
    known = [g for g in gaps.values() if g is not None]
    out[name] = {
        "gap_to_specialist": gaps,
        "within_margin": {d: (None if g is None else bool(g <= margin)) for d, g in gaps.items()},
        "within_margin_on_every_domain": bool(known) and len(known) == len(gaps) and all(
            g <= margin for g in known),
        "ahead_of_fusion_on_average": bool(
            report["average"]["R@1"][name] > report["average"]["R@1"][FUSION]),
    }
  return out


def domain_table(report: dict, metric: str = "R@1") -> str:
  """Markdown domains x models table of one metric in % (plus the average row)."""
  table, averages = report[metric], report["average"][metric]
  fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
  rows = [[domain, *(fmt(values.get(domain)) for values in table.values())]
          for domain in table[FUSION]]
  rows.append(["**average**", *(fmt(averages.get(model)) for model in table)])
  return report_lib.format_table([f"{metric} (%)", *table], rows, align_right=True)


def run(config: ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole experiment; returns the report (also DIR/distill/report.json)."""
  start = time.perf_counter()
  load_start = os.getloadavg()
  # The specialists, the fused model and the students compile the same programs (one step per
  # batch layout, one forward for evaluation): compiled once, reused by the later models and
  # by a re-run.
  cache = compilation_cache.enable(config, workdir)
  config_check.distillation(config, baselines=(SPECIALIST, FUSION))
  mesh = sharding.make_mesh(config.mesh)
  out_dir = os.path.join(workdir, "distill")
  timings = {}

  teachers, specialist_embeds = {}, {}
  for domain in config.domains:
    tick = time.perf_counter()
    teachers[domain], specialist_embeds[domain] = specialist(config, workdir, domain, mesh)
    timings[f"specialist/{domain}"] = time.perf_counter() - tick

  tick = time.perf_counter()
  fusion_path = _train(config.fusion, os.path.join(workdir, FUSION))
  timings[FUSION] = time.perf_counter() - tick

  student_paths = {}
  for name in config.students:
    tick = time.perf_counter()
    student = config.students[name].copy_and_resolve_references()
    student.stages[student.stage_order[0]].distill.teachers = teachers
    student_paths[name] = _train(student, os.path.join(out_dir, name))
    timings[f"student/{name}"] = time.perf_counter() - tick

  tick = time.perf_counter()
  domain_evals = evaluation.build(config, config.domains)
  ks = tuple(config.eval.ks)
  results = {SPECIALIST: {}}
  for domain, task in domain_evals.items():
    try:
      results[SPECIALIST][domain] = task.metrics(specialist_embeds[domain], ks)
    except KeyError as e:  # an outside teacher's table without the evaluation examples
      print(f"specialist {domain}: not evaluated, reported as null: {e}", flush=True)
      results[SPECIALIST][domain] = None
  universal = {FUSION: (config.fusion.model, fusion_path)}
  universal.update({name: (config.students[name].model, path)
                    for name, path in student_paths.items()})
  for model, (model_cfg, path) in universal.items():
    encoder = teachers_lib.EncoderTeacher.from_checkpoint(
        model_cfg, path, mesh, eval_batch_size=config.eval.batch_size)
    results[model] = {domain: task.metrics(encoder.embed, ks)
                      for domain, task in domain_evals.items()}
  timings["evaluation"] = time.perf_counter() - tick

  metric_names = [f"R@{k}" for k in ks] + ["NDCG@10", "MRR@10"]
  report = {metric: {model: {d: (None if m is None else m[metric]) for d, m in per.items()}
                     for model, per in results.items()} for metric in metric_names}
  report["average"] = {metric: _averages(report[metric]) for metric in metric_names}
  report["goal"] = _goal(report, list(config.students), float(config.goal_margin))
  timings["total"] = time.perf_counter() - start
  report["budget"] = {
      "steps": int(config.steps), "batch_size": int(config.batch_size),
      "specialist_steps": {d: (int(config.specialists[d].train.stages[
          config.specialists[d].train.stage_order[-1]].steps)
          if config.specialists[d].type == "gemb" else None) for d in config.domains},
      "teacher_embeddings": config.teacher_embeddings}
  report["num_eval_queries"] = {d: len(task.queries) for d, task in domain_evals.items()}
  report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
  report["machine"] = {"devices": jax.device_count(), "platform": jax.default_backend(),
                       "cpu_count": os.cpu_count(), "load_average_start": load_start,
                       "load_average_end": os.getloadavg(), "compilation_cache": cache}
  report["command"] = " ".join(sys.argv)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
    table = domain_table(report)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(table + "\n")
    print(f"\n## distillation: per-domain R@1\n\n{table}\n", flush=True)
    print(json.dumps(report["goal"], indent=2), flush=True)
  return report
