"""Checks a training config before anything is built or compiled, with errors naming the key."""
from __future__ import annotations

import os
from typing import Iterable

from ml_collections import ConfigDict

from gemb import sharding

TOP_KEYS = {"job", "seed", "model", "mesh", "data", "loss", "optim", "checkpoint", "log_every",
            "eval", "stage_order", "stages", "distill", "fused_step", "export",
            "compilation_cache_dir", "compilation_cache_min_seconds"}
TRAIN_STAGE_KEYS = {"type", "steps", "init", "mixture", "hard_negatives", "optim", "loss",
                    "eval_every", "seed"}
SOUP_STAGE_KEYS = {"type", "ingredients", "weights"}
MIXTURE_KEYS = {"rate", "batch_size", "task_string", "source"}
LOSS_KEYS = {"type", "temperature", "learn_temperature", "temperature_min", "temperature_max",
             "symmetric", "block_size", "mrl_weights", "siglip_bias"}


class ConfigError(ValueError):
  pass


def _unknown(keys: Iterable[str], allowed: set[str], where: str) -> None:
  extra = sorted(set(keys) - allowed)
  if extra:
    raise ConfigError(f"unknown config key(s) {', '.join(where + '.' + k for k in extra)}; "
                      f"allowed under {where}: {sorted(allowed)}")


def mesh_shape(mesh_cfg: ConfigDict, device_count: int) -> dict[str, int]:
  """The (data, fsdp, tensor) sizes with -1 filled in, or a ConfigError saying why not."""
  try:
    return sharding.mesh_shape(dict(mesh_cfg), device_count)
  except ValueError as error:
    raise ConfigError(str(error)) from None


def check(config: ConfigDict, device_count: int, process_count: int = 1,
          known_tasks: Iterable[str] | None = None, workdir: str | None = None) -> None:
  """Raises ConfigError for the first problem found; returns None for a usable config."""
  _unknown(config.keys(), TOP_KEYS, "config")
  sizes = mesh_shape(config.mesh, device_count)
  batch_shards = sizes["data"] * sizes["fsdp"]
  _unknown(config.loss.keys(), LOSS_KEYS, "config.loss")
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
    elif kind == "train":
      _unknown(stage.keys(), TRAIN_STAGE_KEYS, where)
      if int(stage.steps) <= 0:
        raise ConfigError(f"{where}.steps={stage.steps} must be positive")
      init = stage.get("init", "random")
      if init not in ("random", "previous"):
        _check_reference(init, f"{where}.init", seen, workdir)
      elif init == "previous" and not seen:
        raise ConfigError(f"{where}.init='previous' but {name!r} is the first stage")
      if not stage.mixture:
        raise ConfigError(f"{where}.mixture is empty")
      for task, entry in stage.mixture.items():
        _unknown(entry.keys(), MIXTURE_KEYS, f"{where}.mixture.{task}")
        if known_tasks is not None and task not in known_tasks:
          raise ConfigError(f"{where}.mixture names unknown task {task!r}; "
                            f"known: {sorted(known_tasks)}")
        if entry.rate <= 0:
          raise ConfigError(f"{where}.mixture.{task}.rate={entry.rate} must be positive")
        if entry.batch_size % batch_shards or entry.batch_size % process_count:
          raise ConfigError(
              f"{where}.mixture.{task}.batch_size={entry.batch_size} is not divisible by the "
              f"{batch_shards} batch shards of config.mesh (data x fsdp = {sizes['data']} x "
              f"{sizes['fsdp']}) and the {process_count} processes")
    else:
      raise ConfigError(f"{where}.type={kind!r}: use 'train' or 'soup'")
    seen.append(name)


def _check_reference(ref: str, where: str, earlier: list[str], workdir: str | None) -> None:
  """A checkpoint reference is an earlier stage ('stage' / 'stage:step') or an existing path."""
  if os.path.sep in ref:
    if not os.path.exists(ref):
      raise ConfigError(f"{where}: checkpoint path {ref!r} does not exist")
    return
  stage = ref.partition(":")[0]
  if stage not in earlier:
    raise ConfigError(f"{where}: {ref!r} names no earlier stage (earlier: {earlier}) and is not "
                      "a path")
