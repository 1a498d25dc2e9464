"""GradCache (optim.grad_cache_chunks = K) is the fused step's loss and gradients, with the batch
embedded K chunks at a time: on 8 devices, with hard negatives, MRL and a learned temperature."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gemb import sharding
from gemb.data import pipeline
from gemb.train import config_check, step, trainer

sys.path.insert(0, os.path.dirname(__file__))
import tiny_config  # noqa: E402

# The optimizer's state is the step's gradient: the steps' gradients themselves are compared,
# not AdamW's (near sign-like) first update of them.
CAPTURE_GRADS = optax.GradientTransformation(
    init=lambda params: jax.tree.map(jnp.zeros_like, params),
    update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _config(loss_type: str, dropout: float = 0.0):
  config = tiny_config.get_config()
  config.fused_step = True
  config.model.dropout = dropout
  config.loss.type = loss_type
  config.stages.finetune.mixture = {task: {"rate": 1.0, "batch_size": 32}
                                    for task in ("text_to_image", "image_to_text")}
  return config


def _batch(config, mesh):
  """A fine-tuning batch (query, positive and hard negative sides) of ToyWorld examples."""
  data = pipeline.train_iterator(config, "finetune")
  task, host_batch = next(data)
  data.close()
  assert "negative" in host_batch, task
  return sharding.shard_batch(host_batch, mesh)


def _grads(config, mesh, batch, chunks: int) -> tuple[dict, dict]:
  """(the step's metrics, its gradients {"encoder", "log_temperature"[, "bias"]})."""
  config.optim.grad_cache_chunks = chunks
  graphdef, state, _ = trainer.init_train_state(config, "finetune", mesh)
  optim_cfg, loss_cfg = trainer.stage_config(config, "finetune")
  state = {**state, "opt_state": CAPTURE_GRADS.init(state["params"])}
  shardings = jax.tree.map(lambda x: x.sharding, state)
  train_step = trainer.make_train_step(config, graphdef, loss_cfg, optim_cfg, CAPTURE_GRADS,
                                       optax.constant_schedule(1.0), mesh, shardings)
  with jax.set_mesh(mesh):
    state, metrics = train_step(state, batch)
  return metrics, state["opt_state"]


def _assert_close(got: dict, want: dict, rtol: float):
  """Leaf by leaf, relative to each leaf's scale (the programs sum in different orders)."""
  paths = jax.tree_util.tree_leaves_with_path(want)
  assert len(paths) == len(jax.tree.leaves(got))
  assert optax.global_norm(want) > 0
  for (path, a), b in zip(paths, jax.tree.leaves(got)):
    a, b = np.asarray(a), np.asarray(b)  # zero where the batch has no such input (audio)
    np.testing.assert_allclose(b, a, rtol=0, atol=rtol * np.abs(a).max(),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("chunks, loss_type", [(2, "nce"), (4, "siglip")])
def test_grad_cache_step_has_the_full_batch_loss_and_gradients(chunks, loss_type):
  config = _config(loss_type)
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  batch = _batch(config, mesh)
  full_metrics, full_grads = _grads(config, mesh, batch, chunks=1)
  metrics, grads = _grads(config, mesh, batch, chunks=chunks)
  assert set(grads) == {"encoder", "log_temperature"} | ({"bias"} if loss_type == "siglip"
                                                           else set())
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], full_metrics[key], rtol=1e-5, err_msg=key)
  _assert_close(grads, full_grads, rtol=1e-5)


def test_grad_cache_recomputes_each_chunk_with_its_own_dropout_masks():
  # The reference: each chunk (rows k, K + k, ...) embedded with fold_in(side key, k), its
  # activations kept, and the loss over the reassembled batch differentiated end to end.
  chunks = 2
  config = _config("nce", dropout=0.2)
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  batch = _batch(config, mesh)
  metrics, grads = _grads(config, mesh, batch, chunks=chunks)
  again_metrics, again = _grads(config, mesh, batch, chunks=chunks)
  np.testing.assert_array_equal(again_metrics["loss"], metrics["loss"])  # the same seed: no drift
  _assert_close(again, grads, rtol=0)

  config.optim.grad_cache_chunks = 1
  graphdef, state, _ = trainer.init_train_state(config, "finetune", mesh)
  loss_fn = step.make_loss(config.loss, config.model.mrl_dims, mesh)

  def chunked_objective(params):
    embeddings = []
    for name in step.SIDES:
      parts = [step.embed_side(graphdef, params["encoder"], state["rest"],
                               jax.tree.map(lambda x: x[k::chunks], batch[name]), False,
                               jax.random.fold_in(step.dropout_key(state, name), k))
               for k in range(chunks)]
      rows = jnp.stack(parts, axis=1)  # [B/K, K, E]: row i of the batch is chunk i % K's i // K
      embeddings.append(rows.reshape(-1, rows.shape[-1]))
    return loss_fn(params, *embeddings, batch, {})[0]

  with jax.set_mesh(mesh):
    loss, want = jax.jit(jax.value_and_grad(chunked_objective))(state["params"])
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  _assert_close(grads, want, rtol=1e-5)


def test_grad_cache_chunks_that_split_a_batch_unevenly_name_the_key():
  config = _config("nce")
  config.stages.finetune.optim = {**config.stages.finetune.optim,
                                  "grad_cache_chunks": 8}  # 32 rows, 8 chunks x 8 batch shards
  with pytest.raises(config_check.ConfigError,
                     match=r"config\.stages\.finetune\.mixture\.\w+\.batch_size=32 is not a "
                           r"multiple of optim\.grad_cache_chunks=8 x 8 batch shards"):
    config_check.check(config, device_count=8)
  config.optim.grad_cache_chunks = 3
  with pytest.raises(ValueError, match=r"optim.grad_cache_chunks=3 must divide the global "
                                       r"batch size 32"):
    step.grad_cache_step({"params": {}, "rest": {}}, {"query_id": jnp.zeros([32])}, {},
                         graphdef=None, loss_fn=None, tx=None, schedule=None, loss_cfg=None,
                         chunks=3)


def test_grad_cache_needs_the_fused_step():
  config = _config("nce")
  config.fused_step = False
  config.stages.finetune.optim = {**config.stages.finetune.optim, "grad_cache_chunks": 2}
  with pytest.raises(config_check.ConfigError,
                     match=r"config\.stages\.finetune\.optim\.grad_cache_chunks=2 needs the fused "
                           r"step: set config\.fused_step=True"):
    config_check.check(config, device_count=8)


@pytest.mark.parametrize("limit, unit, want", [(99, 1, 99), (724, 4, 724), (3, 4, 0),
                                               (10**9, 8, 1024)])
def test_benchmark_finds_the_largest_fitting_multiple_of_its_unit(limit, unit, want):
  from gemb.bench import grad_cache  # pylint: disable=g-import-not-at-top
  probed = []
  fits = lambda size: probed.append(size) or size <= limit
  assert grad_cache.largest_batch(fits, unit, max_batch=1024) == want
  assert all(size % unit == 0 and size <= 1024 for size in probed)
