"""The learned temperature is carried from stage to stage (init="previous"), not restarted."""
import jax
import numpy as np

from gemb import sharding
from gemb.train import checkpoints, trainer
from tests import tiny_config


def test_a_previous_stage_hands_on_its_learned_temperature(tmp_path):
  config = tiny_config.get_config()
  config.stage_order = ("prefinetune",)
  del config.stages["finetune"], config.stages["soup"]
  config.optim.lr = 1e-2  # so that 6 steps move the temperature visibly
  trainer.train_and_evaluate(config, str(tmp_path))
  path = checkpoints.resolve("prefinetune", str(tmp_path))
  mesh = sharding.make_mesh(config.mesh)
  start = float(np.log(config.loss.temperature))
  abstract = {"log_temperature": jax.ShapeDtypeStruct(
      (), np.float32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))}
  learned = float(checkpoints.load_loss_params(path, abstract)["log_temperature"])
  assert abs(learned - start) > 1e-4  # it was learned

  full = tiny_config.get_config()  # its finetune stage starts from "previous"
  _, state, _ = trainer.init_train_state(full, "finetune", mesh, path)
  assert float(state["params"]["log_temperature"]) == learned
  full.stages.finetune.init = "prefinetune"  # any other start keeps the config's value
  _, state, _ = trainer.init_train_state(full, "finetune", mesh, path)
  np.testing.assert_allclose(float(state["params"]["log_temperature"]), start, rtol=1e-6)
