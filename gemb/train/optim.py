"""The optimizer of one stage: AdamW with warmup + cosine (or constant) decay, clipping,
accumulation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(optim: ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `optim.lr`, then `optim.schedule` ('cosine' to lr*final_fraction, or
  'constant')."""
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


def is_backbone(path) -> bool:
  """Whether the parameter at `path` (a params-tree key path) belongs to the shared backbone: the
  encoder's text stem, blocks, final norm and Dense head (projection="dense"), the parts a
  pretrained checkpoint provides."""
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return names[:1] == ["encoder"] and (names[1:2] in (["blocks"], ["final_norm"], ["dense"])
                                       or names[1:3] == ["stems", "text"])


def backbone_schedule(optim: ConfigDict, schedule: optax.Schedule) -> optax.Schedule:
  """The backbone's learning rate: `backbone_lr_multiplier` times the stage's for the first
  `backbone_multiplier_steps` steps (all steps when 0), then the stage's; multiplier 0 freezes
  it. The usual way to attach new modalities to a pretrained model: the fresh stems learn first."""
  multiplier, steps = float(optim.backbone_lr_multiplier), int(optim.backbone_multiplier_steps)
  if not steps:
    return lambda step: multiplier * schedule(step)
  return lambda step: jnp.where(step < steps, multiplier, 1.0) * schedule(step)


def make_optimizer(optim: ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                 optax.Schedule]:
  """AdamW from `config.optim` for a stage of `total_steps` optimizer steps.

  With `optim.accumulate_steps > 1`, gradients of that many micro-batches are averaged before one
  update (optax.MultiSteps). Note that for a contrastive loss each micro-batch only sees its own
  in-batch negatives: accumulation saves memory but is not the same as a larger batch. A
  `backbone_lr_multiplier` other than 1 gives the backbone (`is_backbone`) its own schedule.
  """
  schedule = learning_rate_schedule(optim, total_steps)
  adamw = lambda lr: optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                                 weight_decay=optim.weight_decay, mask=decay_mask)
  update = adamw(schedule)
  if float(optim.backbone_lr_multiplier) != 1.0:
    labels = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "backbone" if is_backbone(path) else "rest", params)
    update = optax.multi_transform(
        {"backbone": adamw(backbone_schedule(optim, schedule)), "rest": update}, labels)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm else optax.identity(),
      update,
  )
  if optim.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=optim.accumulate_steps)
  return tx, schedule
