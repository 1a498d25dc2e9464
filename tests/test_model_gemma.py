"""gemb's Gemma 3 backbone and its Hugging Face loader against transformers' own bidirectional
Gemma3TextModel and sentence-transformers (PyTorch), on a tiny random model saved to disk in the
test (no download)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from gemb.model import gemma, hf
from gemb.sharding import make_mesh
from hf_helpers import (CONFIG, DENSE_DIMS, random_ids, rewrite, save_embeddinggemma, save_gemma,
                        transformers_hidden)

LENGTHS = (11, 5, 1, 8)  # a right-padded batch: every row but the first ends in padding


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(folder, torch Gemma3TextModel) of a tiny random bidirectional Gemma 3 saved with
  save_pretrained; the torch model runs transformers' eager attention."""
  folder = str(tmp_path_factory.mktemp("tiny_gemma"))
  return folder, save_gemma(folder)


@pytest.fixture(scope="module")
def batch():
  """ids [B, T] (0 = padding), mask [B, T]."""
  ids = random_ids(LENGTHS, CONFIG["vocab_size"], np.random.default_rng(0))
  return ids, ids > 0


def _gemb_hidden(model, ids, mask):
  forward = nnx.jit(lambda m, ids, mask: m.hidden_states(ids, mask))
  return np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))


def _max_diff_on_tokens(got, want, mask):
  """Max |got - want| over real tokens (padded positions are ignored)."""
  return float(np.abs(got - want)[mask].max())


def test_hidden_states_match_bidirectional_transformers_on_one_device(reference, batch):
  folder, torch_model = reference
  ids, mask = batch
  hidden = _gemb_hidden(hf.load(folder), ids, mask)
  assert np.isfinite(hidden).all()  # padded positions too: pooling multiplies them by 0
  diff = _max_diff_on_tokens(hidden, transformers_hidden(torch_model, ids, mask), mask)
  assert diff <= 1e-4, diff


def test_sharded_parameters_are_split_over_fsdp_and_tensor_and_match_transformers(reference,
                                                                                   batch):
  folder, torch_model = reference
  ids, mask = batch
  mesh = make_mesh({"fsdp": 4, "tensor": 2})
  model = hf.load(folder, mesh=mesh)
  block = model.blocks[0]
  expected = {  # parameter -> (its spec, the shape of one device's shard)
      "query kernel [D, H, K]": (block.attention.query.kernel, ("fsdp", "tensor", None),
                                 (16, 2, 12)),
      "key kernel [D, H_kv, K]": (block.attention.key.kernel, ("fsdp", "tensor", None),
                                  (16, 1, 12)),
      "out kernel [H, K, D]": (block.attention.out.kernel, ("tensor", None, "fsdp"), (2, 12, 16)),
      "mlp gate kernel [D, F]": (block.mlp.gate.kernel, ("fsdp", "tensor"), (16, 48)),
      "token embeddings [V, D]": (model.stems["text"].token_embed.embedding, ("tensor", "fsdp"),
                                  (64, 16)),
  }
  for name, (param, spec, shard_shape) in expected.items():
    value = param.get_value()
    assert tuple(value.sharding.spec) == spec, name
    assert value.addressable_shards[0].data.shape == shard_shape, name
  with jax.set_mesh(mesh):
    hidden = _gemb_hidden(model, ids, mask)
  diff = _max_diff_on_tokens(hidden, transformers_hidden(torch_model, ids, mask), mask)
  assert diff <= 1e-4, diff


def test_a_plain_transformers_folder_reads_with_gemma_default_mean_pooling(reference):
  folder, _ = reference
  family, cfg = hf.read_config(folder)
  assert (family, cfg.pooling, cfg.dense_dims, cfg.normalize) == ("gemma", ("mean",), (), False)


def test_embeddinggemma_folder_with_mean_pooling_two_dense_and_normalize_matches_st(
    reference, batch, tmp_path):
  folder, _ = reference
  st_model = save_embeddinggemma(folder, str(tmp_path))
  ids, mask = batch
  with torch.no_grad():
    want = st_model({"input_ids": torch.tensor(ids, dtype=torch.long),
                     "attention_mask": torch.tensor(mask, dtype=torch.long)})
  want = want["sentence_embedding"].numpy()
  model = hf.load(str(tmp_path))
  assert isinstance(model, gemma.GemmaEmbedder) and len(model.dense.layers) == 2
  got = np.asarray(nnx.jit(lambda m, ids, mask: m(ids, mask))(model, jnp.asarray(ids),
                                                               jnp.asarray(mask)))
  assert got.shape == want.shape == (len(LENGTHS), DENSE_DIMS[1])
  assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


def test_attention_logit_softcapping_matches_transformers_eager_softcap(reference, batch):
  """transformers' Gemma 3 does not apply the config's attn_logit_softcapping, but its eager
  attention caps logits when given `softcap`; gemb's cap must match that."""
  folder, torch_model = reference
  ids, mask = batch
  _, cfg = hf.read_config(folder)
  cfg.attn_logit_softcapping = 2.0  # small enough to bend this model's logits
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: gemma.GemmaEmbedder(cfg,
                                                                            rngs=nnx.Rngs(0))))
  mesh = make_mesh({}, devices=jax.devices()[:1])
  params = hf.read_params(folder, abstract, mesh)
  model = nnx.merge(graphdef, nnx.from_flat_state(
      [(p, v.replace(params[p])) for p, v in nnx.to_flat_state(abstract)]))
  want = transformers_hidden(torch_model, ids, mask, softcap=2.0)
  assert _max_diff_on_tokens(want, transformers_hidden(torch_model, ids, mask), mask) > 1e-2
  diff = _max_diff_on_tokens(_gemb_hidden(model, ids, mask), want, mask)
  assert diff <= 1e-4, diff


def test_older_config_json_with_rope_theta_and_local_base_freq_reads_the_same(reference):
  folder, _ = reference
  with open(os.path.join(folder, "config.json")) as f:
    current = json.load(f)
  older = {k: v for k, v in current.items() if k not in ("rope_parameters", "layer_types")}
  older.update(rope_theta=CONFIG["rope_theta"], rope_local_base_freq=77.0, rope_scaling=None,
               sliding_window_pattern=2)  # layers 1 and 3 global, as in CONFIG
  assert gemma.hf_config(older).to_dict() == gemma.hf_config(current).to_dict()
  cfg = gemma.hf_config(current)
  assert (cfg.rope_theta, cfg.rope_local_theta) == (1234.0, 77.0)
  assert cfg.layer_types == ("sliding", "full", "sliding", "full")


def test_missing_unexpected_and_misshaped_tensors_are_named(reference, tmp_path):
  folder, _ = reference

  def damage(tensors):
    del tensors["layers.2.post_feedforward_layernorm.weight"]
    tensors["layers.1.self_attn.adapter.weight"] = np.zeros((2, 2), np.float32)
    tensors["layers.0.self_attn.k_proj.weight"] = np.zeros((48, 64), np.float32)
    tensors["lm_head.weight"] = np.zeros((128, 64), np.float32)  # a causal LM's: tolerated
    return tensors
  with pytest.raises(ValueError) as error:
    hf.load(rewrite(folder, tmp_path / "damaged", damage))
  message = str(error.value)
  assert "missing tensor layers.2.post_feedforward_layernorm.weight" in message
  assert "unexpected tensor layers.1.self_attn.adapter.weight" in message
  assert ("mis-shaped tensor layers.0.self_attn.k_proj.weight: [48, 64], expected [24, 64]"
          in message)
  assert "lm_head" not in message
