"""Config validation: a clear error naming the key, before anything is built or compiled."""
import pytest

from configs import scale, smoke
from configs import toyworld as toyworld_config
from gemb.datasets import toyworld
from gemb.train.config_check import ConfigError, check, mesh_shape


def _check(config, devices=8, processes=1, workdir=None):
  check(config, devices, processes, known_tasks=list(toyworld.TASKS), workdir=workdir)


@pytest.mark.parametrize("get_config", [smoke.get_config, toyworld_config.get_config,
                                        lambda: scale.get_config("B"),
                                        lambda: scale.get_config("S")])
def test_shipped_configs_are_valid(get_config):
  _check(get_config())


def test_unknown_key_is_named():
  config = smoke.get_config()
  config.stages.finetune.stpes = 10
  with pytest.raises(ConfigError, match=r"config\.stages\.finetune\.stpes"):
    _check(config)


def test_impossible_mesh_is_named():
  config = smoke.get_config()
  config.mesh = {"data": 3, "fsdp": -1, "tensor": 1}
  with pytest.raises(ConfigError, match=r"does not divide the 8 devices"):
    _check(config)
  with pytest.raises(ConfigError, match="needs 16 devices"):
    mesh_shape({"data": 4, "fsdp": 4, "tensor": 1}, 8)


def test_mesh_fills_minus_one():
  assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_batch_not_divisible_by_data_axes_is_named():
  config = smoke.get_config()
  config.stages.finetune.mixture.bitext.batch_size = 12
  with pytest.raises(ConfigError, match=r"mixture\.bitext\.batch_size=12"):
    _check(config)


def test_missing_start_checkpoint_is_named(tmp_path):
  config = smoke.get_config()
  config.stages.prefinetune.init = str(tmp_path / "nowhere" / "checkpoints")
  with pytest.raises(ConfigError, match="does not exist"):
    _check(config)


def test_unknown_task_and_stage_order_are_named():
  config = smoke.get_config()
  config.stages.finetune.mixture.text_to_smell = {"rate": 1.0, "batch_size": 8}
  with pytest.raises(ConfigError, match="unknown task 'text_to_smell'"):
    _check(config)
  config = smoke.get_config()
  config.stage_order = ("finetune", "prefinetune", "soup")
  with pytest.raises(ConfigError, match="'previous' but 'finetune' is the first stage"):
    _check(config)
