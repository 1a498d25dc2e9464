"""The per-side train step is the fused train step, compiled differently; the steps' metrics on
the host, the stop on a bad step before it is checkpointed, and the one encoder loader."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemb import sharding
from gemb.data import pipeline
from gemb.model.encoder import Encoder
from gemb.train import checkpoints, metrics as metrics_lib, trainer

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


def test_step_window_reports_means_over_its_steps_and_per_task_losses():
  window = metrics_lib.StepWindow("task")
  losses = {1: ("a", 1.0), 2: ("b", 4.0), 3: ("a", 2.0)}
  for step, (task, loss) in losses.items():
    window.add(step, task, {"loss": jnp.float32(loss), "lr": jnp.float32(0.1 * step)})
  assert len(window) == 3
  values = window.flush("stage s")
  assert values == pytest.approx({"loss": 7.0 / 3, "lr": 0.2, "loss/a": 1.5, "loss/b": 4.0})
  assert all(type(v) is float for v in values.values())
  assert len(window) == 0
  window.add(4, "b", {"loss": jnp.float32(3.0)})
  assert window.flush("stage s") == {"loss": 3.0, "loss/b": 3.0}  # a new window


def test_matmul_peak_is_the_best_of_its_timed_repeats():
  # A fake clock: the repeats take 4, 1 and 2 ms; the peak is the FLOPs over the fastest one.
  ticks = iter([0.0, 0.004, 1.0, 1.001, 2.0, 2.002])
  peak = metrics_lib.measure_matmul_peak(n=8, repeats=3, clock=lambda: next(ticks))
  assert peak == pytest.approx(2 * 8 ** 3 / 0.001)


@pytest.mark.parametrize("key, bad", [("loss", np.nan), ("grad_norm", np.inf)])
def test_step_window_stops_on_the_first_bad_step_not_only_the_last(key, bad):
  window = metrics_lib.StepWindow("task")
  for step in (7, 8, 9):
    metrics = {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}
    if step == 8:
      metrics[key] = jnp.float32(bad)
    window.add(step, f"task{step}", metrics)
  with pytest.raises(FloatingPointError,
                     match=rf"stage s step 8: {key} is (nan|inf) \(task task8\); the last good"):
    window.check("stage s")


def test_a_bad_step_stops_training_before_any_checkpoint_holds_it(tmp_path, monkeypatch):
  # Logs every 5 steps, checkpoints every 2: step 3 goes bad, and the step-4 checkpoint, due
  # before the next log line, must not be written with its parameters.
  config = tiny_config.get_config()
  config.log_every = 5
  config.checkpoint.async_save = False  # every due checkpoint is on disk before the next step
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  init_train_state = trainer.init_train_state

  def with_a_bad_step(*args):
    graphdef, state, train_step = init_train_state(*args)

    def step(state, batch):
      state, metrics = train_step(state, batch)
      if int(state["step"]) == 3:  # NaN parameters and loss from here on
        state = {**state, "params": jax.tree.map(lambda x: x * jnp.nan, state["params"])}
        metrics = {**metrics, "loss": jnp.float32(jnp.nan)}
      return state, metrics
    return graphdef, state, step

  monkeypatch.setattr(trainer, "init_train_state", with_a_bad_step)
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=False)
  with pytest.raises(FloatingPointError, match=r"stage prefinetune step 3: loss is nan"):
    trainer.train_stage(config, str(tmp_path), "prefinetune", mesh, writer, 1e9, None)
  saved = sorted(int(d) for d in os.listdir(tmp_path / "prefinetune" / "checkpoints")
                 if d.isdigit())
  assert saved and max(saved) == 2, saved


def test_run_plots_include_each_task_loss(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path))
  for step in (1, 2):
    writer.write(step, {"loss": 2.0 / step, "temperature": 0.05, "loss/text_to_image": 1.0 / step,
                        "loss/classification": 3.0 / step}, stage="prefinetune")
  writer.close()
  trainer.plot_run(tiny_config.get_config(), str(tmp_path), {})
  assert (tmp_path / "eval" / "training.png").stat().st_size > 0
  assert (tmp_path / "eval" / "task_losses.png").stat().st_size > 0


def test_load_encoder_restores_the_saved_params_sharded_without_a_random_init(tmp_path,
                                                                              monkeypatch):
  config = tiny_config.get_config()
  config.model.depth = 3  # an architecture no other test builds: nothing of it is cached
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  # The saved params: numpy draws, no initialiser's; on one device, as any writer may leave them.
  _, abstract, _ = nnx.split(nnx.eval_shape(lambda: Encoder(config.model, rngs=nnx.Rngs(0))),
                             nnx.Param, ...)
  rng = np.random.default_rng(0)
  saved = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), abstract)
  manager = checkpoints.make_manager(checkpoints.stage_dir(str(tmp_path), "train"), every=1,
                                     keep=1, async_save=False)
  checkpoints.save(manager, 3, {"params": {"encoder": saved}}, {}, force=True)
  manager.close()

  built = []  # every Encoder construction: abstract (eval_shape) or traced for an init
  construct = Encoder.__init__
  monkeypatch.setattr(Encoder, "__init__",
                      lambda self, *a, **k: (built.append(1), construct(self, *a, **k))[1])
  _, loaded, rest = checkpoints.load_encoder(config.model, mesh,
                                             checkpoints.resolve("train", str(tmp_path)))
  assert len(built) == 1  # the abstract shapes only, no random init
  _, initialised, _ = checkpoints.load_encoder(config.model, mesh, seed=0)
  assert len(built) == 2  # a random init builds it again: the count can tell

  assert not jax.tree.leaves(rest)
  leaves = jax.tree_util.tree_leaves_with_path(loaded)
  assert len(leaves) == len(jax.tree.leaves(saved))
  for (path, got), want, init in zip(leaves, jax.tree.leaves(saved),
                                     jax.tree.leaves(initialised)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                  err_msg=jax.tree_util.keystr(path))
    assert got.sharding == init.sharding, jax.tree_util.keystr(path)  # the init's placement
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(loaded))
