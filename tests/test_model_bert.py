"""gemb's BERT backbone and Hugging Face loader against transformers' own BertModel (PyTorch),
on a tiny random model saved to disk in the test (no download)."""
import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from flax import nnx
from sentence_transformers import SentenceTransformer
from sentence_transformers import models as st_models

from gemb.data.tokenizer import make_tokenizer
from gemb.model import bert, hf
from gemb.model.bert import pool
from gemb.sharding import make_mesh
from hf_helpers import random_ids, rewrite, transformers_hidden

# Every size distinct, so a transposed or mis-reshaped tensor cannot pass; a non-default
# LayerNorm epsilon, so one read from the wrong place shows.
CONFIG = dict(vocab_size=98, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=36, max_position_embeddings=64, type_vocab_size=2,
              layer_norm_eps=1e-3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
WORDS = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
         + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
         + ["the", "cat", "dog", "sat", "on", "mat", "a", "red", "ball", ".", ",", "!", "?"])
LENGTHS = (11, 5, 1, 8)  # a padded batch: every row but the first ends in padding


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
  """A WordPiece tokenizer of WORDS with BERT's normaliser and [CLS] ... [SEP] template."""
  tk = tokenizers.Tokenizer(tokenizers.models.WordPiece({w: i for i, w in enumerate(WORDS)},
                                                        unk_token="[UNK]"))
  tk.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tk.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tk.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tk.decoder = tokenizers.decoders.WordPiece()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)


def _randomise(model: torch.nn.Module) -> None:
  """Every parameter random and O(1) in effect. BERT's own init (weights of std 0.02,
  LayerNorms of ones and zeros) would hide two LayerNorms swapped, and keeps GELU inputs so
  small that its tanh approximation passes for the exact erf GELU (here they differ by 8e-4)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("LayerNorm.weight"):
        p.copy_(1 + 0.3 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.3 * torch.randn_like(p))
      elif "embeddings" in name:
        p.copy_(torch.randn_like(p))
      else:  # a Linear weight [out, in]
        p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(folder, torch BertModel) of a tiny random BERT saved with save_pretrained."""
  folder = str(tmp_path_factory.mktemp("tiny_bert"))
  torch.manual_seed(0)
  model = transformers.BertModel(transformers.BertConfig(**CONFIG)).eval()
  _randomise(model)
  model.save_pretrained(folder)
  _tokenizer().save_pretrained(folder)
  return folder, model


@pytest.fixture(scope="module")
def batch():
  """ids [B, T] (0 = padding), token types [B, T], mask [B, T]."""
  rng = np.random.default_rng(0)
  ids = random_ids(LENGTHS, CONFIG["vocab_size"], rng)
  types = np.where(ids > 0, rng.integers(0, 2, ids.shape), 0).astype(np.int32)
  return ids, types, ids > 0


def _gemb_hidden(model, ids, mask, types=None):
  forward = nnx.jit(lambda m, ids, mask, types: m.hidden_states(ids, mask, types))
  return np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask),
                            None if types is None else jnp.asarray(types)))


def test_hidden_states_match_transformers_on_one_device(reference, batch):
  folder, torch_model = reference
  ids, types, mask = batch
  model = hf.load(folder)
  for token_types in (None, types):
    diff = np.abs(_gemb_hidden(model, ids, mask, token_types)
                  - transformers_hidden(torch_model, ids, mask, token_type_ids=token_types))
    assert diff.max() <= 1e-4, diff.max()


def test_sharded_parameters_are_split_over_fsdp_and_tensor_and_match_transformers(reference,
                                                                                   batch):
  folder, torch_model = reference
  ids, _, mask = batch
  mesh = make_mesh({"fsdp": 4, "tensor": 2})
  model = hf.load(folder, mesh=mesh)
  block = model.blocks[0]
  expected = {  # parameter -> (its spec, the shape of one device's shard)
      "query kernel [D, H, K]": (block.attention.query.kernel, ("fsdp", "tensor", None),
                                 (8, 2, 8)),
      "out kernel [H, K, D]": (block.attention.out.kernel, ("tensor", None, "fsdp"), (2, 8, 8)),
      "mlp up kernel [D, F]": (block.mlp.up.kernel, ("fsdp", "tensor"), (8, 18)),
      "word embeddings [V, D]": (model.stems["text"].token_embed.embedding,
                                 ("tensor", "fsdp"), (49, 8)),
  }
  for name, (param, spec, shard_shape) in expected.items():
    value = param.get_value()
    assert tuple(value.sharding.spec) == spec, name
    assert value.addressable_shards[0].data.shape == shard_shape, name
  with jax.set_mesh(mesh):
    hidden = _gemb_hidden(model, ids, mask)
  diff = np.abs(hidden - transformers_hidden(torch_model, ids, mask))
  assert diff.max() <= 1e-4, diff.max()


def test_mean_and_cls_pooling_match_pooling_of_transformers_hidden_states(reference, batch):
  folder, torch_model = reference
  ids, _, mask = batch
  hidden = _gemb_hidden(hf.load(folder), ids, mask)
  reference_hidden = transformers_hidden(torch_model, ids, mask)
  weights = mask[..., None].astype(np.float32)
  expected = {"mean": (reference_hidden * weights).sum(1) / weights.sum(1),
              "cls": reference_hidden[:, 0]}
  for mode, want in expected.items():
    got = np.asarray(pool(jnp.asarray(hidden), jnp.asarray(mask), (mode,)))
    assert np.abs(got - want).max() <= 1e-4, mode


def test_a_plain_transformers_folder_reads_with_bert_default_cls_pooling(reference):
  folder, _ = reference
  family, cfg = hf.read_config(folder)
  assert (family, cfg.pooling, cfg.dense_dims, cfg.normalize) == ("bert", ("cls",), (), False)


def test_sentence_transformers_folder_with_cls_pooling_dense_and_normalize_matches_encode(
    reference, tmp_path):
  folder, _ = reference
  torch.manual_seed(1)
  st_model = SentenceTransformer(modules=[
      st_models.Transformer(folder, max_seq_length=12),
      st_models.Pooling(CONFIG["hidden_size"], pooling_mode="cls"),
      st_models.Dense(CONFIG["hidden_size"], 16, activation_function=torch.nn.Tanh()),
      st_models.Normalize()], device="cpu")
  st_model.save(str(tmp_path))
  texts = ["the cat sat on the mat.", "a red ball!", "dog", "the dog sat on a red mat, the "
           "cat sat on the ball, a cat sat on the dog."]  # the last is truncated at 12 ids
  tokenizer = make_tokenizer(f"hf:{tmp_path}")
  ids = [tokenizer.encode(t) for t in texts]
  assert [len(i) for i in ids] == [9, 6, 3, 12]
  padded = np.zeros((len(ids), 12), np.int32)
  for row, row_ids in enumerate(ids):
    padded[row, :len(row_ids)] = row_ids
  model = hf.load(str(tmp_path))
  got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(padded)))
  want = st_model.encode(texts, convert_to_numpy=True)
  assert got.shape == want.shape == (len(texts), 16)
  assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


def test_bert_prefix_pooler_heads_and_position_ids_are_tolerated(reference, batch, tmp_path):
  folder, torch_model = reference
  ids, _, mask = batch

  def as_pretraining_checkpoint(tensors):
    out = {f"bert.{k}": v for k, v in tensors.items()}
    out["bert.embeddings.position_ids"] = np.arange(64)[None]
    out["cls.predictions.bias"] = np.zeros(CONFIG["vocab_size"], np.float32)
    return out
  model = hf.load(rewrite(folder, tmp_path / "prefixed", as_pretraining_checkpoint))
  diff = np.abs(_gemb_hidden(model, ids, mask) - transformers_hidden(torch_model, ids, mask))
  assert diff.max() <= 1e-4


def test_sharded_index_and_bfloat16_checkpoints_load(reference, tmp_path):
  folder, torch_model = reference
  copy.deepcopy(torch_model).to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  model = hf.load(str(tmp_path))
  got = np.asarray(model.blocks[1].mlp.up.kernel.get_value())
  want = torch_model.encoder.layer[1].intermediate.dense.weight.detach().to(torch.bfloat16)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want.float().numpy().T)


def test_missing_unexpected_and_misshaped_tensors_are_named(reference, tmp_path):
  folder, _ = reference

  def damage(tensors):
    del tensors["encoder.layer.1.output.dense.bias"]
    tensors["encoder.layer.1.adapter.weight"] = np.zeros((2, 2), np.float32)
    tensors["encoder.layer.0.attention.self.value.weight"] = np.zeros((32, 16), np.float32)
    return tensors
  with pytest.raises(ValueError) as error:
    hf.load(rewrite(folder, tmp_path / "damaged", damage))
  message = str(error.value)
  assert "missing tensor encoder.layer.1.output.dense.bias" in message
  assert "unexpected tensor encoder.layer.1.adapter.weight" in message
  assert ("mis-shaped tensor encoder.layer.0.attention.self.value.weight: [32, 16], expected "
          "[32, 32]") in message
  assert "pooler" not in message  # BertModel's pooler is a known, unused tensor



class _ScannedBert(nnx.Module):
  """BERT's text stem, and its blocks stacked on a leading [depth] axis and run by nnx.scan, as
  the Encoder builds and runs blocks under config.model.scan_layers."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.stems = nnx.Dict({"text": bert.TextStem(cfg, jnp.float32, rngs=rngs)})

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def stacked_blocks(rngs):
      return bert.Block(cfg, jnp.float32, rngs=rngs)
    self.blocks = stacked_blocks(rngs)

  def __call__(self, ids, mask):
    def apply_block(block, x, mask):
      return block(x, mask, True)
    return nnx.scan(apply_block, in_axes=(0, nnx.Carry, None), out_axes=nnx.Carry)(
        self.blocks, self.stems["text"].embed(ids), mask)


def test_blocks_stacked_for_scan_load_sharded_and_match_transformers(reference, batch):
  folder, torch_model = reference
  ids, _, mask = batch
  _, cfg = hf.read_config(folder)
  mesh = make_mesh({"fsdp": 4, "tensor": 2})
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _ScannedBert(cfg, rngs=nnx.Rngs(0))))
  params = hf.read_params(folder, abstract, mesh)
  flat = nnx.to_flat_state(abstract)
  assert {p for p, _ in flat} == set(params)
  model = nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(params[p])) for p, v in flat]))
  kernel = model.blocks.attention.query.kernel.get_value()  # [depth, D, H, K]
  assert tuple(kernel.sharding.spec) == (None, "fsdp", "tensor", None)
  assert kernel.addressable_shards[0].data.shape == (2, 8, 2, 8)
  with jax.set_mesh(mesh):
    hidden = np.asarray(nnx.jit(lambda m, ids, mask: m(ids, mask))(model, ids, mask))
  diff = np.abs(hidden - transformers_hidden(torch_model, ids, mask))
  assert diff.max() <= 1e-4, diff.max()
