"""Every training stage of every shipped config lowers at its real shapes on 8 devices (nothing
runs): a config that cannot run fails here, not on a pod after the stage before it trained."""
import os

import pytest

from configs import common, gemma, minilm, scale, smoke, toyworld as toyworld_config
from configs.proj import distill
from gemb import sharding
from gemb.datasets import toyworld
from gemb.train import config_check, lowering
from tests import tiny_config

EXAMPLE_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gemb", "datasets",
                                "example_manifest", "manifest.jsonl")


def _scale(size: str):
  """configs/scale.py with its placeholders set to the shipped example manifest's tasks."""
  config = scale.get_config(size)
  config.data.manifest = EXAMPLE_MANIFEST
  config.evals.retrieval.manifest = EXAMPLE_MANIFEST
  config.evals.retrieval.task = "text_to_image"
  tasks = ("text_to_image", "text_to_audio", "video_to_text", "image_question_to_answer", "sts")
  for name in ("prefinetune", "finetune"):
    batch = next(iter(config.stages[name].mixture.values())).batch_size
    config.stages[name].mixture = common.mixture({t: 1.0 for t in tasks}, batch)
  return config


CONFIGS = {
    "smoke": smoke.get_config,
    "toyworld": toyworld_config.get_config,
    "scale:S": lambda: _scale("S"),
    "scale:B": lambda: _scale("B"),
    "scale:L": lambda: _scale("L"),
    "minilm": minilm.get_config,
    "minilm:random": lambda: minilm.get_config("random"),
    "gemma:tiny": lambda: gemma.get_config("tiny"),
    "tests/tiny_config": tiny_config.get_config,
    "proj/distill specialist": lambda: next(iter(distill.get_config().specialists.values())).train,
    "proj/distill fusion": lambda: distill.get_config().fusion,
    "proj/distill student": lambda: distill.get_config().students.kl_contrastive,
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_training_stage_lowers_at_its_real_shapes(name, tmp_path):
  config = CONFIGS[name]()
  for stage in config.stages.values():  # a student's teachers come at run time (run.py)
    if stage.get("type") == "distill":
      (tmp_path / "table.npz").write_bytes(b"")
      stage.distill.teachers = {task: dict(type="table", path=str(tmp_path / "table.npz"))
                                for task in stage.mixture}
  config_check.check(config, 8, 1, known_tasks=None)
  mesh = sharding.make_mesh(config.mesh)
  lowered = lowering.lower_stages(config, mesh)
  stages = {s for s in config.stage_order if config.stages[s].get("type", "train") != "soup"}
  assert {stage for stage, _ in lowered} == stages
  for (stage, task), program in lowered.items():
    batch = config.stages[stage].mixture[task].batch_size
    assert f"{batch}x" in program.as_text()[:20000], (stage, task)  # the global batch, traced


def test_a_block_size_that_does_not_divide_a_stage_batch_is_a_config_error():
  config = _scale("B")
  config.stages.finetune.loss = {"block_size": 4096}  # fine-tuning batches are 1024
  with pytest.raises(config_check.ConfigError,
                     match=r"config.stages.finetune.mixture.\w+.batch_size=1024 is not "
                           r"a multiple of the loss block_size 4096"):
    config_check.check(config, 8, 1, known_tasks=list(toyworld.TASKS))
