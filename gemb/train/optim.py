"""The optimizer of one stage: AdamW with warmup + cosine (or constant) decay, clipping, accumulation."""
from __future__ import annotations

import jax
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(optim: ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `optim.lr`, then `optim.schedule` ('cosine' to lr*final_fraction, or 'constant')."""
  warmup = min(int(optim.warmup_steps), max(total_steps - 1, 0))
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else optim.lr, peak_value=optim.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=optim.lr * optim.final_lr_fraction)
  if optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, max(warmup, 1)), optax.constant_schedule(optim.lr)],
        [warmup])
  raise ValueError(f"config optim.schedule={optim.schedule!r}: use 'cosine' or 'constant'")


def decay_mask(params):
  """Weight decay on matrices only: biases, norm scales and the temperature are not decayed."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim: ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                 optax.Schedule]:
  """AdamW from `config.optim` for a stage of `total_steps` optimizer steps.

  With `optim.accumulate_steps > 1`, gradients of that many micro-batches are averaged before one
  update (optax.MultiSteps). Note that for a contrastive loss each micro-batch only sees its own
  in-batch negatives: accumulation saves memory but is not the same as a larger batch.
  """
  schedule = learning_rate_schedule(optim, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm else optax.identity(),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay, mask=decay_mask),
  )
  if optim.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim.accumulate_steps)
  return tx, schedule
