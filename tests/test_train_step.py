"""The per-side train step is the fused train step, compiled differently; a step's metrics on
the host."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemb import sharding
from gemb.data import pipeline
from gemb.train import metrics as metrics_lib, trainer

sys.path.insert(0, os.path.dirname(__file__))
import tiny_config  # noqa: E402


def test_per_side_step_equals_fused_step():
  config = tiny_config.get_config()
  config.model.dropout = 0.1  # both steps must draw the same dropout masks
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  states, steps = {}, {}
  for fused in (True, False):  # the same random init (same seed), two ways to step
    config.fused_step = fused
    _, states[fused], steps[fused] = trainer.init_train_state(config, "finetune", mesh)
  batches = pipeline.train_iterator(config, "finetune")
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


def test_host_values_passes_finite_metrics_and_stops_on_a_bad_loss():
  values = metrics_lib.host_values({"loss": jnp.float32(1.5), "lr": jnp.float32(1e-3)},
                                   "stage s step 3", "task t")
  assert values == {"loss": 1.5, "lr": pytest.approx(1e-3)}
  assert all(type(v) is float for v in values.values())
  for bad in (np.nan, np.inf):
    with pytest.raises(FloatingPointError,
                       match=r"stage s step 3: loss is (nan|inf) \(task t\); the last good"):
      metrics_lib.host_values({"loss": jnp.float32(bad)}, "stage s step 3", "task t")
