"""bf16 compute (the accelerator presets' default) with float32 parameters and a float32 loss
still learns on ToyWorld."""
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemb import sharding
from gemb.train import checkpoints, metrics, trainer
from tests import tiny_config


def test_bfloat16_training_learns_with_float32_parameters(tmp_path):
  config = tiny_config.get_config()
  config.model.dtype = "bfloat16"
  config.stage_order = ("prefinetune",)
  del config.stages["finetune"], config.stages["soup"]
  config.stages.prefinetune.steps = 16
  config.optim.lr = 3e-3
  trainer.train_and_evaluate(config, str(tmp_path))
  losses = [r["loss"] for r in metrics.read_metrics(str(tmp_path)) if "loss" in r]
  assert all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses  # it learns
  _, params, _ = checkpoints.load_encoder(
      config.model, sharding.make_mesh(config.mesh), checkpoints.resolve("prefinetune",
                                                                         str(tmp_path)))
  assert {v.get_value().dtype for _, v in nnx.to_flat_state(params)} == {jnp.dtype("float32")}
