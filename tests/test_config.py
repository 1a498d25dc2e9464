"""Config validation: a clear error naming the key, before anything is built or compiled."""
import os

import pytest

from configs import common, scale, smoke
from configs import toyworld as toyworld_config
from gemb.data import pipeline
from gemb.datasets import toyworld
from gemb.export import bundle
from gemb.train.config_check import ConfigError, check, mesh_shape
from tests import tiny_config

EXAMPLE_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gemb", "datasets",
                                "example_manifest", "manifest.jsonl")


def _check(config, devices=8, processes=1, workdir=None):
  check(config, devices, processes, known_tasks=list(toyworld.TASKS), workdir=workdir)


def _scale_with_data(size):
  """configs/scale.py with its placeholders set to the shipped example manifest."""
  config = scale.get_config(size)
  config.data.manifest = EXAMPLE_MANIFEST
  config.evals.retrieval.manifest = EXAMPLE_MANIFEST
  config.evals.retrieval.task = "text_to_image"
  return config


@pytest.mark.parametrize("get_config", [smoke.get_config, toyworld_config.get_config,
                                        tiny_config.get_config])
def test_shipped_configs_are_valid(get_config):
  _check(get_config())


@pytest.mark.parametrize("size", ["S", "B", "L"])
def test_scale_config_is_valid_once_its_data_are_set(size):
  config = _scale_with_data(size)
  tasks = {task for stage in ("prefinetune", "finetune") for task in config.stages[stage].mixture}
  check(config, 8, 1, known_tasks=tasks)


def test_scale_config_names_each_placeholder_until_it_is_set():
  config = scale.get_config("B")
  with pytest.raises(ConfigError, match=r"config\.data\.manifest='REPLACE_ME/train.jsonl' is a "
                                        r"placeholder"):
    check(config, 8, 1)
  with pytest.raises(ConfigError, match=r"config\.data\.manifest=.* is a placeholder"):
    pipeline.known_tasks(config)  # before any file is opened
  config.data.manifest = EXAMPLE_MANIFEST
  with pytest.raises(ConfigError, match=r"config\.evals\.retrieval\.manifest=.* is a placeholder"):
    check(config, 8, 1)


def test_scale_config_reads_no_toyworld_data_or_tokenizer():
  config = scale.get_config("B")
  assert config.data.source == "manifest" and config.model.tokenizer == "bytes"
  assert all(entry.dataset == "manifest" for entry in config.evals.values())


def test_a_partial_data_config_names_the_missing_key():
  with pytest.raises(ValueError, match=r"config\.data is missing .*config\.data\.manifest, .*"
                                       r"configs\.common\.data"):
    pipeline.make_iterator({"source": "toyworld", "seed": 0}, common.model("tiny"),
                           {"sts": {"rate": 1.0, "batch_size": 2}})


def test_a_partial_export_config_names_the_missing_key():
  config = smoke.get_config()
  del config.export["max_batch"]
  with pytest.raises(ValueError, match=r"config\.export is missing config\.export\.max_batch"):
    bundle.export_settings(config)


def test_common_blocks_reject_unknown_overrides():
  with pytest.raises(ValueError, match=r"common\.data\(\) has no key\(s\) \['workers'\]"):
    common.data(workers=2)


def test_the_old_eval_suite_key_is_named():
  config = smoke.get_config()
  config.eval.suite = "toyworld"
  with pytest.raises(ConfigError, match=r"config\.eval\.suite is gone: .*config\.evals"):
    _check(config)


def test_evaluator_entries_are_checked():
  config = smoke.get_config()
  config.evals.text_to_image.type = "retreival"
  with pytest.raises(ConfigError, match=r"config\.evals\.text_to_image\.type='retreival'"):
    _check(config)
  config = smoke.get_config()
  del config.evals.sts["num_candidates"]
  with pytest.raises(ConfigError, match=r"config\.evals\.sts is missing "
                                        r"config\.evals\.sts\.num_candidates"):
    _check(config)


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
