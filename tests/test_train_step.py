"""The per-side train step is the fused train step, compiled differently."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gemb import sharding
from gemb.data import pipeline
from gemb.train import optim, trainer

sys.path.insert(0, os.path.dirname(__file__))
import tiny_config  # noqa: E402


def _state_and_steps(config, mesh, stage):
  optim_cfg, loss_cfg = trainer.stage_config(config, stage)
  tx, schedule = optim.make_optimizer(optim_cfg, 10)
  graphdef, params, rest = trainer.init_params(config, loss_cfg, mesh)
  state = {"params": params, "rest": rest, "opt_state": tx.init(params),
           "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(0)}
  shardings = jax.tree.map(lambda x: trainer._on_mesh(x, mesh), state)
  steps = {}
  for fused in (True, False):
    config.fused_step = fused
    steps[fused] = trainer.make_train_step(config, graphdef, loss_cfg, optim_cfg, tx, schedule,
                                           mesh, shardings)
  return jax.device_put(state, shardings), shardings, steps


def test_per_side_step_equals_fused_step():
  config = tiny_config.get_config()
  config.model.dropout = 0.1  # both steps must draw the same dropout masks
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  state, shardings, steps = _state_and_steps(config, mesh, "finetune")
  batches = pipeline.train_iterator(config, "finetune")
  states = {fused: jax.tree.map(jnp.copy, state) for fused in (True, False)}
  for _ in range(2):
    task, host_batch = next(batches)
    assert "negative" in host_batch  # fine-tuning batches carry hard negatives
    batch = sharding.shard_batch(host_batch, mesh)
    metrics = {}
    with jax.set_mesh(mesh):
      for fused in (True, False):
        states[fused], metrics[fused] = steps[fused](states[fused], batch)
    for key in ("loss", "grad_norm", "temperature"):
      np.testing.assert_allclose(metrics[False][key], metrics[True][key], rtol=1e-5,
                                 err_msg=f"{task} {key}")
  fused = jax.tree_util.tree_leaves_with_path(states[True])
  for (path, a), b in zip(fused, jax.tree.leaves(states[False])):
    # Relative to each leaf's scale: the two programs round differently (about 1e-6).
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(np.abs(a).max(), 1e-6),
                               err_msg=jax.tree_util.keystr(path))
