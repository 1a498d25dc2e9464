"""Shared by the Hugging Face checkpoint tests: random padded batches, transformers' hidden
states, rewritten checkpoints; a tiny random bidirectional Gemma 3 saved as a Hugging Face folder,
and an EmbeddingGemma-style sentence-transformers folder on top of it (no download)."""
import os
import shutil

import numpy as np
import safetensors.numpy
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers import models as st_models

# Sizes distinct where a transposed or mis-reshaped tensor could otherwise pass (heads x
# head_dim = 48 != width 64); a mix of local and global layers whose band (|i - j| <= 2, from
# sliding_window 4 under bidirectional attention) is narrower than the batch's sequences;
# RoPE bases, the RMSNorm epsilon and the query scale all away from their defaults.
CONFIG = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=12,
              layer_types=["sliding_attention", "full_attention", "sliding_attention",
                           "full_attention"],
              sliding_window=4, rope_theta=1234.0, rope_local_base_freq=77.0,
              query_pre_attn_scalar=20, rms_norm_eps=1e-3, max_position_embeddings=64,
              use_bidirectional_attention=True)
DENSE_DIMS = (80, 48)  # EmbeddingGemma's two Dense layers (768 -> 3072 -> 768), in small
WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "c"]  # Gemma's ids: <pad> 0, <bos> 2


def padded(rows, length: int | None = None) -> np.ndarray:
  """int32 [B, length (default: the longest row)]: each row of ids, then 0s (padding)."""
  ids = np.zeros((len(rows), length or max(len(row) for row in rows)), np.int32)
  for b, row in enumerate(rows):
    ids[b, :len(row)] = row
  return ids


def random_ids(lengths, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
  """int32 [B, max(lengths)]: row b holds lengths[b] random ids in [1, vocab_size), then 0s."""
  return padded([rng.integers(1, vocab_size, n) for n in lengths])


def transformers_hidden(model, ids, mask, **kwargs) -> np.ndarray:
  """last_hidden_state [B, T, D] of a transformers model; numpy arrays among `kwargs` (token
  types) go in as long tensors, other values as they are."""
  kwargs = {k: torch.tensor(v, dtype=torch.long) if isinstance(v, np.ndarray) else v
            for k, v in kwargs.items()}
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long), **kwargs)
  return out.last_hidden_state.numpy()


def rewrite(folder: str, target, edit) -> str:
  """A copy of `folder` whose model.safetensors tensors dict went through `edit`."""
  shutil.copytree(folder, target)
  path = os.path.join(target, "model.safetensors")
  safetensors.numpy.save_file(edit(safetensors.numpy.load_file(path)), path)
  return str(target)


def _randomise(model: torch.nn.Module) -> None:
  """Every parameter random and O(1) in effect: Gemma's own init (norm weights of zero, i.e.
  scale 1) would hide two norms swapped."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(0.3 * torch.randn_like(p))
      elif "embed_tokens" in name:
        p.copy_(torch.randn_like(p))
      else:  # a Linear weight [out, in]
        p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
  """A word-level tokenizer with Gemma's special ids, whose template adds <bos> as Gemma's does."""
  tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)},
                                                        unk_token="<unk>"))
  tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tk.post_processor = tokenizers.processors.TemplateProcessing(
      single="<bos> $A", special_tokens=[("<bos>", WORDS.index("<bos>"))])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>",
                                              unk_token="<unk>", bos_token="<bos>",
                                              eos_token="<eos>")


def save_gemma(folder: str) -> transformers.Gemma3TextModel:
  """Saves a tiny random bidirectional Gemma 3 with save_pretrained to `folder`; returns it
  reloaded from there, running transformers' eager attention."""
  torch.manual_seed(0)
  model = transformers.Gemma3TextModel(transformers.Gemma3TextConfig(**CONFIG))
  _randomise(model)
  model.save_pretrained(folder, safe_serialization=True)
  _tokenizer().save_pretrained(folder)
  reloaded = transformers.Gemma3TextModel.from_pretrained(folder, attn_implementation="eager")
  return reloaded.eval()


def save_embeddinggemma(gemma_folder: str, folder: str) -> SentenceTransformer:
  """Saves EmbeddingGemma's sentence-transformers modules over the Gemma in `gemma_folder` to
  `folder`: mean pooling, two Dense layers without bias, Normalize; returns the folder opened
  as a user opens it."""
  torch.manual_seed(1)
  width = CONFIG["hidden_size"]
  SentenceTransformer(modules=[
      st_models.Transformer(gemma_folder),
      st_models.Pooling(width, pooling_mode="mean"),
      st_models.Dense(width, DENSE_DIMS[0], bias=False, activation_function=torch.nn.Identity()),
      st_models.Dense(DENSE_DIMS[0], DENSE_DIMS[1], bias=False,
                      activation_function=torch.nn.Identity()),
      st_models.Normalize()], device="cpu").save(folder)
  assert os.path.isdir(os.path.join(folder, "3_Dense"))
  return SentenceTransformer(folder, device="cpu")
