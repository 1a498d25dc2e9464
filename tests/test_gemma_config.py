"""configs/gemma.py:tiny, a random Gemma 3 backbone made bidirectional, runs every stage of the
recipe on a CPU: pre-finetuning with the backbone frozen at first, fine-tuning, the soup."""
import os

import numpy as np

from configs import gemma as gemma_config
from gemb.datasets import toyworld
from gemb.train import config_check, metrics, trainer


def test_the_tiny_gemma_recipe_trains_every_stage_and_evaluates(tmp_path):
  config = gemma_config.get_config("tiny")
  assert (config.model.backbone, config.model.depth, config.model.num_kv_heads) == ("gemma", 2, 2)
  config_check.check(config, 8, 1, known_tasks=list(toyworld.TASKS))
  # Two of the suite's evaluators are enough to see the run end in an evaluation.
  config.evals = {name: config.evals[name] for name in ("text_to_image", "sts")}
  final = trainer.train_and_evaluate(config, str(tmp_path))
  for stage in ("prefinetune", "finetune", "soup"):
    assert os.listdir(os.path.join(tmp_path, stage, "checkpoints"))
  assert set(final) >= {"toyworld/text_to_image/R@1", "toyworld/sts/spearman"}
  assert all(np.isfinite(v) for v in final.values())
  losses = [r["loss"] for r in metrics.read_metrics(str(tmp_path)) if "loss" in r]
  assert losses[-1] < losses[0]  # it learns
