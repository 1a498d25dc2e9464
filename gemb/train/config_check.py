"""Checks a config before anything is built or compiled, with errors naming the key.

`check` checks a whole training config. `data`, `mixture`, `export` and `evals` check one block
each; the code that reads a block calls them too, so a partial config from a test or a notebook
fails with the key it lacks instead of a KeyError. A block's keys are those of its default in
configs/common.py (`common.data()`, `common.export()`, ...), where every default lives.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from ml_collections import ConfigDict

from gemb import sharding

TOP_KEYS = {"job", "seed", "model", "mesh", "data", "loss", "optim", "checkpoint", "log_every",
            "eval", "evals", "stage_order", "stages", "fused_step", "export",
            "compilation_cache_dir", "compilation_cache_min_seconds"}
OPTIONAL_TOP_KEYS = {"distill"}
TRAIN_STAGE_KEYS = {"type", "steps", "init", "mixture", "hard_negatives", "optim", "loss",
                    "eval_every", "seed"}
SOUP_STAGE_KEYS = {"type", "ingredients", "weights"}
MIXTURE_KEYS = {"rate", "batch_size", "task_string", "source"}
LOSS_KEYS = {"type", "temperature", "learn_temperature", "temperature_min", "temperature_max",
             "symmetric", "block_size", "mrl_weights", "siglip_bias"}
OPTIM_KEYS = {"lr", "schedule", "warmup_steps", "final_lr_fraction", "weight_decay", "b1", "b2",
              "eps", "clip_norm", "accumulate_steps", "backbone_lr_multiplier",
              "backbone_multiplier_steps", "grad_cache_chunks"}
CHECKPOINT_KEYS = {"every", "keep", "async_save"}
DATA_KEYS = {"source", "seed", "split", "toyworld_size", "toyworld_seed", "toyworld", "manifest",
             "tfds", "hf", "worker_count", "worker_buffer_size", "read_threads", "prefetch",
             "task_string_dropout", "on_bad_record", "max_replacements", "truncate"}
EXPORT_KEYS = {"modality_sets", "platforms", "max_batch", "batch_timeout_ms",
               "max_inputs_per_request", "max_request_bytes", "max_image_pixels"}
EVAL_KEYS = {"batch_size", "mrl", "quantized", "seed"}  # settings shared by every evaluator
# Keys an older config.eval had: evaluators and their data are declared in config.evals now.
REMOVED_EVAL_KEYS = {"suite", "manifest", "split", "num_candidates"}
EVAL_ENTRY_KEYS = {"toyworld": {"type", "dataset", "task", "split", "num_candidates"},
                   "manifest": {"type", "dataset", "manifest", "task"}}  # required per dataset
PLACEHOLDER = "REPLACE_ME"  # a config value to set before the run (configs/scale.py's data)


class ConfigError(ValueError):
  pass


def _unknown(keys: Iterable[str], allowed: set[str], where: str) -> None:
  extra = sorted(set(keys) - allowed)
  if extra:
    raise ConfigError(f"{where} has unknown keys {', '.join(where + '.' + k for k in extra)}; "
                      f"known: {sorted(allowed)}")


def _keys(block: Mapping[str, Any] | None, expected: set[str], where: str,
          default: str) -> None:
  """`block` has exactly the `expected` keys; `default` says where the full block comes from."""
  if block is None:
    raise ConfigError(f"{where} is missing; set it to {default}")
  _unknown(block.keys(), expected, where)
  missing = sorted(expected - set(block.keys()))
  if missing:
    raise ConfigError(f"{where} is missing {', '.join(where + '.' + k for k in missing)}; "
                      f"build it with {default} and override what differs")


def placeholders(block: Any, where: str = "config") -> None:
  """Raises ConfigError naming the first value that still holds PLACEHOLDER."""
  if isinstance(block, Mapping) or hasattr(block, "items"):
    for key, value in block.items():
      placeholders(value, f"{where}.{key}")
  elif isinstance(block, (list, tuple)):
    for i, value in enumerate(block):
      placeholders(value, f"{where}[{i}]")
  elif isinstance(block, str) and PLACEHOLDER in block:
    raise ConfigError(f"{where}={block!r} is a placeholder: set it to your data, e.g. "
                      f"--{where}=... on the command line")


def mesh_shape(mesh_cfg: ConfigDict, device_count: int) -> dict[str, int]:
  """The (data, fsdp, tensor) sizes with -1 filled in, or a ConfigError saying why not."""
  try:
    return sharding.mesh_shape(dict(mesh_cfg), device_count)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def data(data_cfg: Mapping[str, Any] | None, where: str = "config.data") -> None:
  """config.data: every key of common.data(), values in range, no placeholder left."""
  _keys(data_cfg, DATA_KEYS, where, "configs.common.data(...)")
  placeholders(data_cfg, where)
  if data_cfg["on_bad_record"] not in ("raise", "skip"):
    raise ConfigError(f"{where}.on_bad_record={data_cfg['on_bad_record']!r}; use 'raise' or "
                      "'skip'")
  if not 0.0 <= data_cfg["task_string_dropout"] <= 1.0:
    raise ConfigError(f"{where}.task_string_dropout={data_cfg['task_string_dropout']} must be "
                      "in [0, 1]")
  for key in ("worker_count", "read_threads"):
    if data_cfg[key] < 0:
      raise ConfigError(f"{where}.{key}={data_cfg[key]} must be >= 0")
  for key in ("worker_buffer_size", "prefetch", "max_replacements", "toyworld_size"):
    if data_cfg[key] < 1:
      raise ConfigError(f"{where}.{key}={data_cfg[key]} must be >= 1")


def mixture(mixture_cfg: Mapping[str, Any], where: str = "mixture", batch_shards: int = 1,
            process_count: int = 1) -> None:
  """A stage's mixture {task: {rate, batch_size[, task_string][, source]}}; every batch size
  divides into `batch_shards` (data x fsdp of the mesh) and `process_count` equal slices."""
  if not mixture_cfg:
    raise ConfigError(f"{where} is empty; give {{task: {{rate, batch_size}}}} entries")
  for task, entry in mixture_cfg.items():
    _unknown(entry.keys(), MIXTURE_KEYS, f"{where}.{task}")
    for key in ("rate", "batch_size"):
      if key not in entry:
        raise ConfigError(f"{where}.{task}.{key} is missing")
    if not entry["rate"] > 0:
      raise ConfigError(f"{where}.{task}.rate={entry['rate']} must be > 0 (leave the task out "
                        "of the mixture instead)")
    batch_size = entry["batch_size"]
    if batch_size < 1 or batch_size % batch_shards or batch_size % process_count:
      shards = (f"the {batch_shards} batch shards of config.mesh (data x fsdp) and of "
                if batch_shards > 1 else "")
      raise ConfigError(f"{where}.{task}.batch_size={batch_size} must be a positive multiple "
                        f"of {shards}the number of processes ({process_count})")


def export(export_cfg: Mapping[str, Any] | None, where: str = "config.export") -> None:
  """config.export: every key of common.export()."""
  _keys(export_cfg, EXPORT_KEYS, where, "configs.common.export(...)")
  for key in ("max_batch", "max_inputs_per_request", "max_request_bytes", "max_image_pixels"):
    if export_cfg[key] < 1:
      raise ConfigError(f"{where}.{key}={export_cfg[key]} must be >= 1")


def eval_settings(eval_cfg: Mapping[str, Any] | None, where: str = "config.eval") -> None:
  """config.eval: the settings every evaluator shares (common.eval_settings())."""
  if eval_cfg is not None:
    for key in sorted(REMOVED_EVAL_KEYS & set(eval_cfg.keys())):
      raise ConfigError(
          f"{where}.{key} is gone: evaluators and their data are declared in config.evals "
          "(e.g. config.evals = toyworld_suite.evals(num_candidates=256), or "
          "config.evals.<name> = dict(type='retrieval', dataset='manifest', manifest=..., "
          f"task=...)); {where} keeps {sorted(EVAL_KEYS)}")
  _keys(eval_cfg, EVAL_KEYS, where, "configs.common.eval_settings(...)")
  if eval_cfg["batch_size"] < 1:
    raise ConfigError(f"{where}.batch_size={eval_cfg['batch_size']} must be >= 1")


def evals(evals_cfg: Mapping[str, Any] | None, where: str = "config.evals") -> None:
  """config.evals: {name: dict(type=<evaluator>, dataset=<data>, ...)}; {} for none."""
  from gemb.evaluate import registry  # pylint: disable=g-import-not-at-top
  if evals_cfg is None:
    raise ConfigError(f"{where} is missing; set it to {{}} for no evaluation, or e.g. "
                      "gemb.evaluate.toyworld_suite.evals(...)")
  placeholders(evals_cfg, where)
  for name, entry in evals_cfg.items():
    if not name or "/" in name:
      raise ConfigError(f"{where}.{name}: an evaluator name must be non-empty, without '/'")
    for key in ("type", "dataset"):
      if key not in entry:
        raise ConfigError(f"{where}.{name}.{key} is missing (an entry is dict(type=..., "
                          "dataset=..., ...))")
    if "." not in entry["type"] and entry["type"] not in registry.TYPES:
      raise ConfigError(f"{where}.{name}.type={entry['type']!r}: use one of {registry.TYPES} "
                        "or a module path that defines an `Evaluator` class")
    dataset = entry["dataset"]
    if "." not in dataset and dataset not in registry.DATASETS:
      raise ConfigError(f"{where}.{name}.dataset={dataset!r}: use one of "
                        f"{sorted(registry.DATASETS)} or a module path that defines `task_data`")
    missing = sorted(EVAL_ENTRY_KEYS.get(dataset, set()) - set(entry.keys()))
    if missing:
      raise ConfigError(f"{where}.{name} is missing "
                        f"{', '.join(f'{where}.{name}.{k}' for k in missing)}")


def check(config: ConfigDict, device_count: int, process_count: int = 1,
          known_tasks: Iterable[str] | None = None, workdir: str | None = None) -> None:
  """Raises ConfigError for the first problem found; returns None for a usable config."""
  _unknown(config.keys(), TOP_KEYS | OPTIONAL_TOP_KEYS, "config")
  missing = sorted(TOP_KEYS - set(config.keys()))
  if missing:
    raise ConfigError(f"config is missing {', '.join('config.' + k for k in missing)} (see "
                      "configs/smoke.py for a whole config)")
  placeholders(config)
  sizes = mesh_shape(config.mesh, device_count)
  batch_shards = sizes["data"] * sizes["fsdp"]
  data(config.data)
  export(config.export)
  eval_settings(config.eval)
  evals(config.evals)
  _keys(config.checkpoint, CHECKPOINT_KEYS, "config.checkpoint", "configs.common.checkpoint(...)")
  _keys(config.optim, OPTIM_KEYS, "config.optim", "configs.common.optim(...)")
  for key in ("backbone_lr_multiplier", "backbone_multiplier_steps"):
    if config.optim[key] < 0:
      raise ConfigError(f"config.optim.{key}={config.optim[key]} must be >= 0")
  _keys(config.loss, LOSS_KEYS, "config.loss", "configs.common.loss(...)")
  if config.loss.type not in ("nce", "siglip"):
    raise ConfigError(f"config.loss.type={config.loss.type!r}: use 'nce' or 'siglip'")
  dims = list(config.model.mrl_dims)
  if sorted(dims) != dims or dims[-1] != config.model.embed_dim:
    raise ConfigError(f"config.model.mrl_dims={dims} must be increasing and end at "
                      f"config.model.embed_dim={config.model.embed_dim}")
  if config.loss.get("mrl_weights") is not None and len(config.loss.mrl_weights) != len(dims):
    raise ConfigError(f"config.loss.mrl_weights has {len(config.loss.mrl_weights)} entries for "
                      f"{len(dims)} mrl_dims")
  for name in config.stage_order:
    if name not in config.stages:
      raise ConfigError(f"config.stage_order names {name!r}, which is not in config.stages "
                        f"({sorted(config.stages.keys())})")
  for name in config.stages:
    if name not in config.stage_order:
      raise ConfigError(f"config.stages.{name} is not listed in config.stage_order")
  seen: list[str] = []
  for name in config.stage_order:
    stage = config.stages[name]
    where = f"config.stages.{name}"
    kind = stage.get("type", "train")
    if kind == "soup":
      _unknown(stage.keys(), SOUP_STAGE_KEYS, where)
      if not stage.ingredients:
        raise ConfigError(f"{where}.ingredients is empty")
      for ref in stage.ingredients:
        _check_reference(ref, f"{where}.ingredients", seen, workdir)
      if stage.get("weights") is not None and len(stage.weights) != len(stage.ingredients):
        raise ConfigError(f"{where}.weights has {len(stage.weights)} entries for "
                          f"{len(stage.ingredients)} ingredients")
    elif kind in ("train", "distill"):
      _unknown(stage.keys(), TRAIN_STAGE_KEYS | ({"distill"} if kind == "distill" else set()),
               where)
      _unknown((stage.get("optim") or {}).keys(), OPTIM_KEYS, f"{where}.optim")
      _unknown((stage.get("loss") or {}).keys(), LOSS_KEYS, f"{where}.loss")
      if int(stage.steps) <= 0:
        raise ConfigError(f"{where}.steps={stage.steps} must be positive")
      init = stage.get("init", "random")
      if init not in ("random", "previous"):
        _check_reference(init, f"{where}.init", seen, workdir)
      elif init == "previous" and not seen:
        raise ConfigError(f"{where}.init='previous' but {name!r} is the first stage")
      mixture(stage.get("mixture"), f"{where}.mixture", batch_shards, process_count)
      block_size = int((stage.get("loss") or {}).get("block_size", config.loss.block_size) or 0)
      chunks = grad_cache_chunks(config, name)
      for task in stage.mixture:
        batch = int(stage.mixture[task].batch_size)
        if batch % (chunks * batch_shards):  # each chunk splits evenly over the batch shards
          raise ConfigError(
              f"{where}.mixture.{task}.batch_size={batch} is not a multiple of "
              f"optim.grad_cache_chunks={chunks} x {batch_shards} batch shards of config.mesh "
              f"(config.optim.grad_cache_chunks, or {where}.optim.grad_cache_chunks)")
        if block_size and batch % block_size:  # the loss walks the gathered batch in blocks
          raise ConfigError(f"{where}.mixture.{task}.batch_size={batch} is not a multiple of the "
                            f"loss block_size {block_size} (config.loss.block_size, or "
                            f"{where}.loss.block_size for this stage)")
        if known_tasks is not None and task not in known_tasks:
          raise ConfigError(f"{where}.mixture names unknown task {task!r}; "
                            f"known: {sorted(known_tasks)}")
      if kind == "distill":
        distill_stage(config, name)
    else:
      raise ConfigError(f"{where}.type={kind!r}: use 'train', 'distill' or 'soup'")
    seen.append(name)


def grad_cache_chunks(config: ConfigDict, name: str) -> int:
  """Training stage `name`'s optim.grad_cache_chunks (its override or config.optim's), checked:
  an int >= 1, and > 1 only with the fused step (GradCache is a form of it)."""
  where = f"config.stages.{name}.optim.grad_cache_chunks"
  chunks = (config.stages[name].get("optim") or {}).get("grad_cache_chunks")
  if chunks is None:
    where, chunks = "config.optim.grad_cache_chunks", config.optim.grad_cache_chunks
  if not isinstance(chunks, int) or chunks < 1:
    raise ConfigError(f"{where}={chunks!r} must be an int >= 1 (1: no GradCache)")
  if chunks > 1 and not config.fused_step:
    raise ConfigError(f"{where}={chunks} needs the fused step: set config.fused_step=True")
  return chunks


def _check_reference(ref: str, where: str, earlier: list[str], workdir: str | None) -> None:
  """A checkpoint reference is an earlier stage ('stage' / 'stage:step'), an existing path, or
  'hf:FOLDER' (a Hugging Face model folder)."""
  if ref.startswith("hf:"):
    if not os.path.isfile(os.path.join(ref[len("hf:"):], "config.json")):
      raise ConfigError(f"{where}={ref!r}: {ref[len('hf:'):]!r} is not a Hugging Face model "
                        "folder (no config.json)")
    return
  if os.path.sep in ref:
    if not os.path.exists(ref):
      raise ConfigError(f"{where}: checkpoint path {ref!r} does not exist")
    return
  stage = ref.partition(":")[0]
  if stage not in earlier:
    raise ConfigError(f"{where}: {ref!r} names no earlier stage (earlier: {earlier}) and is not "
                      "a path")


DISTILL_KEYS = {"weights", "teacher_temperature", "student_temperature", "teachers"}


def distill_stage(config: ConfigDict, name: str) -> None:
  """A distillation stage (type 'distill'): its `distill` block (loss weights of
  gemb.losses.DISTILLATION_TERMS, the KL's temperatures, a teacher for every task of its
  mixture) and the loss settings its contrastive term reads."""
  from gemb import losses  # pylint: disable=g-import-not-at-top
  stage = config.stages[name]
  where = f"config.stages.{name}.distill"
  _keys(stage.get("distill"), DISTILL_KEYS, where, "configs/proj/distill.py's student_config")
  distill = stage.distill
  unknown = sorted(set(distill.weights) - set(losses.DISTILLATION_TERMS))
  if unknown:
    raise ConfigError(f"{where}.weights names unknown terms {unknown}; known: "
                      f"{losses.DISTILLATION_TERMS}")
  if not any(float(w) for w in distill.weights.values()):
    raise ConfigError(f"every weight of {where}.weights is 0; give kl, l2 or contrastive one")
  for key in ("teacher_temperature", "student_temperature"):
    if not float(distill[key]) > 0:
      raise ConfigError(f"{where}.{key}={distill[key]} must be > 0")
  loss = {**config.loss, **(stage.get("loss") or {})}
  if loss["type"] != "nce" or loss["learn_temperature"] or not float(loss["temperature"]) > 0:
    raise ConfigError(f"config.stages.{name}: a distillation stage's contrastive term is the "
                      "masked NCE loss at the fixed config.loss.temperature; set loss.type='nce', "
                      "learn_temperature=False and temperature > 0")
  if stage.get("hard_negatives", True):
    raise ConfigError(f"config.stages.{name}.hard_negatives must be False: the distillation "
                      "objective compares queries with positives only")
  for task in stage.mixture:
    entry = distill.teachers.get(task)
    if entry is None:
      raise ConfigError(f"{where}.teachers has no teacher for task {task!r} of the mixture")
    kind = entry.get("type")
    needed = {"table": {"type", "path"}, "checkpoint": {"type", "path", "model"}}.get(kind)
    if needed is None:
      raise ConfigError(f"{where}.teachers.{task}.type={kind!r}: use 'table' or 'checkpoint'")
    _keys(entry, needed, f"{where}.teachers.{task}", f"dict(type={kind!r}, ...)")
    if not os.path.exists(entry["path"]):
      raise ConfigError(f"{where}.teachers.{task}.path={entry['path']!r} does not exist")


def distillation(config: ConfigDict, baselines: Iterable[str]) -> None:
  """The distillation experiment's config (configs/proj/distill.py), before anything trains:
  a specialist per domain, and the fused model and every student on the same budget."""
  domains = list(config.domains)
  if not domains:
    raise ConfigError("config.domains is empty; name at least one task (domain)")
  for domain in domains:
    if domain not in config.specialists:
      raise ConfigError(f"config.specialists has no entry for domain {domain!r}")
    spec = config.specialists[domain]
    if spec.type == "gemb":
      mixture_cfg = dict(spec.train.stages[spec.train.stage_order[-1]].mixture)
      if set(mixture_cfg) != {domain}:
        raise ConfigError(f"config.specialists.{domain}.train: the last stage's mixture is "
                          f"{sorted(mixture_cfg)}; a specialist trains on its domain {domain!r} "
                          "alone")
    elif spec.type != "table":
      raise ConfigError(f"config.specialists.{domain}.type={spec.type!r}: use 'gemb' or 'table'")
  if config.teacher_embeddings not in ("on_the_fly", "precomputed"):
    raise ConfigError(f"config.teacher_embeddings={config.teacher_embeddings!r}: use "
                      "'on_the_fly' or 'precomputed'")
  # Same budget: the fused model and every student train on the same batches for as many steps.
  want = {d: {"batch_size": int(config.batch_size), **dict(entry)}
          for d, entry in config.domains.items()}
  universal = {"config.fusion": config.fusion}
  universal.update({f"config.students.{name}": student for name, student in
                    config.students.items()})
  for where, model_cfg in universal.items():
    if len(model_cfg.stage_order) != 1:
      raise ConfigError(f"{where}.stage_order={tuple(model_cfg.stage_order)}: the fused "
                        "baseline and each student are one training stage")
    stage = model_cfg.stages[model_cfg.stage_order[0]]
    got = {task: dict(entry) for task, entry in stage.mixture.items()}
    if got != want or int(stage.steps) != int(config.steps):
      raise ConfigError(f"{where} must have the students' budget: steps={config.steps} and "
                        f"mixture {want}; it has steps={stage.steps} and mixture {got}")
    if stage.get("hard_negatives", True):
      raise ConfigError(f"{where}'s stage must set hard_negatives=False: students see no "
                        "hard negatives, and the budget must be the same")
  for name, student in config.students.items():
    if name in baselines:
      raise ConfigError(f"config.students.{name}: the names {sorted(baselines)} are taken by "
                        "the baselines")
    if student.stages[student.stage_order[0]].get("type") != "distill":
      raise ConfigError(f"config.students.{name}: its stage must have type='distill'")
