"""JAX's persistent compilation cache for a job: programs compiled once are reused by later
stages, models and re-runs (a fine-tuning stage compiles the same per-side forward and backward
programs as pre-finetuning; an evaluation, the same forward for every checkpoint)."""
from __future__ import annotations

import os

import jax
from ml_collections import ConfigDict


def enable(config: ConfigDict, workdir: str) -> str | None:
  """Turns the cache on in `config.compilation_cache_dir` ('' = WORKDIR/jax_cache; None = off),
  keeping programs that took at least `config.compilation_cache_min_seconds` to compile.
  A cache already configured (e.g. by JAX_COMPILATION_CACHE_DIR) is kept. Returns the dir."""
  directory = config.get("compilation_cache_dir", "")
  if directory is None:
    return jax.config.jax_compilation_cache_dir
  directory = directory or os.path.join(os.path.abspath(workdir), "jax_cache")
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(config.get("compilation_cache_min_seconds", 0.5)))
  return jax.config.jax_compilation_cache_dir
