"""The BERT family (BERT, MiniLM, bge, e5, gte) as a gemb backbone: Hugging Face `BertModel`'s
computation in Flax NNX, with gemb's logical axis names on every parameter, so the mesh rules
shard it (fsdp over `embed`, tensor over `heads`, `mlp`, `vocab`).

Post-LN blocks, learned absolute positions and token types, exact (erf) GELU unless the
checkpoint says otherwise, the checkpoint's LayerNorm epsilon. `TextStem` and `Block` have the
interfaces of gemb's text stem and encoder block, so the Encoder can hold them in its `stems`
and `blocks`; `BertEmbedder` is the same text path on its own, with what a sentence-transformers
folder puts on top (pooling, Dense layers, normalisation). gemb/model/hf.py builds
the config from a checkpoint folder and loads its weights.

The config (an ml_collections.ConfigDict; names as in config.model where it has them):
  vocab_size, width, depth, num_heads, mlp_dim, max_text_tokens (rows of the position table),
  type_vocab_size, layer_norm_eps, gelu_approximate, dtype, dropout, attention_impl
  pooling (tuple of "cls" | "mean" | "max" | "mean_sqrt_len", concatenated),
  dense_dims, dense_bias, dense_activation ("identity" | "tanh"): one entry per Dense layer,
  normalize
Parameters stay float32; `dtype` sets the compute dtype. Pooling and the head run in float32.
`dropout` applies to the attention and MLP outputs, as BertModel's hidden dropout does; not to
the embeddings or the attention probabilities.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gemb.model.attention import Attention
from gemb.model.stems import _flatten
from gemb.sharding import constrain, logical_axes

DENSE_ACTIVATIONS = {"identity": lambda x: x, "tanh": jnp.tanh}
POOLING = ("cls", "mean", "max", "mean_sqrt_len")
INIT = nnx.initializers.normal(stddev=0.02)  # BERT's initializer_range, for a random model


def _layer_norm(cfg, dtype, rngs):
  return nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs,
                       scale_metadata=logical_axes("embed"), bias_metadata=logical_axes("embed"))


class TextStem(nnx.Module):
  """BERT's embeddings as a gemb text stem: LayerNorm(word + position + token type) of each
  text part slot, positions restarting in every slot (as gemb.model.stems.TextStem)."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.token_embed = nnx.Embed(cfg.vocab_size, cfg.width, param_dtype=jnp.float32,
                                 embedding_init=INIT, rngs=rngs,
                                 embedding_metadata=logical_axes("vocab", "embed"))
    self.positions = nnx.Param(INIT(rngs.params(), (cfg.max_text_tokens, cfg.width)),
                               **logical_axes("positions", "embed"))
    self.token_types = nnx.Param(INIT(rngs.params(), (cfg.type_vocab_size, cfg.width)),
                                 **logical_axes(None, "embed"))
    self.norm = _layer_norm(cfg, dtype, rngs)

  def embed(self, token_ids, token_types=None):
    """token ids [..., T] (and token types [..., T], default 0) -> [..., T, D]."""
    length = token_ids.shape[-1]
    types = self.token_types[...][0] if token_types is None else self.token_types[...][token_types]
    x = self.token_embed(token_ids) + self.positions[:length] + types
    return self.norm(x.astype(self.dtype))

  def __call__(self, side):
    tokens, part = side["text_tokens"], side["text_part"]  # [B, Pt, Lt], [B, Pt]
    mask = (tokens > 0) & (part >= 0)[..., None]
    return _flatten(self.embed(tokens), mask, part)


class Mlp(nnx.Module):
  """D -> mlp_dim -> D with BERT's GELU (exact erf unless cfg.gelu_approximate)."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.approximate = bool(cfg.gelu_approximate)
    self.up = nnx.Linear(cfg.width, cfg.mlp_dim, dtype=dtype, kernel_init=INIT, rngs=rngs,
                         kernel_metadata=logical_axes("embed", "mlp"),
                         bias_metadata=logical_axes("mlp"))
    self.down = nnx.Linear(cfg.mlp_dim, cfg.width, dtype=dtype, kernel_init=INIT, rngs=rngs,
                           kernel_metadata=logical_axes("mlp", "embed"),
                           bias_metadata=logical_axes("embed"))

  def __call__(self, x):
    rows = x.reshape(-1, x.shape[-1])  # [B * T, D]: see encoder.Mlp for why rows
    hidden = jax.nn.gelu(self.up(rows), approximate=self.approximate)
    hidden = constrain(hidden.reshape(*x.shape[:-1], -1), ("batch", "length", "mlp"))
    return self.down(hidden.reshape(rows.shape[0], -1)).reshape(x.shape)


class Block(nnx.Module):
  """Post-LN transformer block: x = LN(x + Attention(x)), then x = LN(x + Mlp(x)).
  Called as encoder.Block is."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.attention = Attention(cfg, dtype, key_bias=True, qkv_init=INIT, out_init=INIT, rngs=rngs)
    self.attention_norm = _layer_norm(cfg, dtype, rngs)
    self.mlp = Mlp(cfg, dtype, rngs=rngs)
    self.mlp_norm = _layer_norm(cfg, dtype, rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, mask, deterministic: bool, rngs: nnx.Rngs | None = None):
    x = self.attention_norm(x + self.dropout(self.attention(x, mask),
                                             deterministic=deterministic, rngs=rngs))
    x = self.mlp_norm(x + self.dropout(self.mlp(x), deterministic=deterministic, rngs=rngs))
    return constrain(x, ("batch", "length", None))


def pool(hidden: jax.Array, mask: jax.Array, modes) -> jax.Array:
  """hidden [B, T, D], mask [B, T] -> [B, len(modes) * D], the modes' poolings concatenated
  (sentence-transformers' Pooling): "cls" the first token, "mean"/"max" over real tokens,
  "mean_sqrt_len" their sum over sqrt(token count)."""
  weights = mask.astype(hidden.dtype)[..., None]  # [B, T, 1]
  count = weights.sum(axis=1)  # [B, 1]
  pooled = []
  for mode in modes:
    if mode == "cls":
      pooled.append(hidden[:, 0])
    elif mode == "mean":
      pooled.append((hidden * weights).sum(axis=1) / jnp.maximum(count, 1e-9))
    elif mode == "mean_sqrt_len":
      pooled.append((hidden * weights).sum(axis=1) / jnp.sqrt(jnp.maximum(count, 1e-9)))
    elif mode == "max":
      pooled.append(jnp.where(weights > 0, hidden, -1e9).max(axis=1))
    else:
      raise ValueError(f"pooling mode {mode!r} is not supported; known: {POOLING}")
  return jnp.concatenate(pooled, axis=-1)


class Dense(nnx.Module):
  """The Dense layers of a sentence-transformers folder, in order: `in_features` ->
  cfg.dense_dims[0] -> ..., layer i with bias cfg.dense_bias[i] and activation
  cfg.dense_activation[i] (EmbeddingGemma: 768 -> 3072 -> 768, no biases, identity)."""

  def __init__(self, in_features: int, cfg, *, rngs: nnx.Rngs):
    if not len(cfg.dense_dims) == len(cfg.dense_bias) == len(cfg.dense_activation):
      raise ValueError(f"config dense_dims={tuple(cfg.dense_dims)} needs one dense_bias "
                       f"{tuple(cfg.dense_bias)} and dense_activation "
                       f"{tuple(cfg.dense_activation)} per Dense layer")
    unknown = [a for a in cfg.dense_activation if a not in DENSE_ACTIVATIONS]
    if unknown:
      raise ValueError(f"config dense_activation={tuple(cfg.dense_activation)}: {unknown} not "
                       f"in {sorted(DENSE_ACTIVATIONS)}")
    self.activations = tuple(cfg.dense_activation)
    dims = [in_features, *cfg.dense_dims]
    self.layers = nnx.List([
        nnx.Linear(n_in, n_out, use_bias=bias, kernel_init=INIT, rngs=rngs,
                   kernel_metadata=logical_axes("embed" if i == 0 else None, "projection"),
                   bias_metadata=logical_axes("projection"))
        for i, (n_in, n_out, bias) in enumerate(zip(dims, dims[1:], cfg.dense_bias))])

  def __call__(self, x):  # [B, in_features] -> [B, dense_dims[-1]], float32
    for layer, activation in zip(self.layers, self.activations):
      x = DENSE_ACTIVATIONS[activation](layer(x))
    return x


def check_pooling(cfg, family: str) -> None:
  """Raises ValueError unless cfg.pooling names one or more of POOLING."""
  if not cfg.pooling or any(m not in POOLING for m in cfg.pooling):
    raise ValueError(f"{family} config: pooling={tuple(cfg.pooling)} must be one or more of "
                     f"{POOLING}")


class BertEmbedder(nnx.Module):
  """Token ids [B, T] (0 = padding) -> sentence embeddings [B, E] float32, as a
  sentence-transformers folder defines them: BERT -> pooling -> Dense layers (if any) ->
  optional L2 normalisation. Its parameters sit where the Encoder keeps a bert backbone's
  (stems/text/..., blocks/i/..., dense/...), so one weight table fills both."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    if cfg.width % cfg.num_heads:
      raise ValueError(f"bert config: num_heads={cfg.num_heads} must divide width={cfg.width}")
    check_pooling(cfg, "bert")
    self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: part of the static graph
    dtype = jnp.dtype(cfg.dtype)
    self.stems = nnx.Dict({"text": TextStem(cfg, dtype, rngs=rngs)})
    self.blocks = nnx.List([Block(cfg, dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.dense = Dense(len(cfg.pooling) * cfg.width, cfg, rngs=rngs)

  def hidden_states(self, token_ids, mask=None, token_types=None, *,
                    deterministic: bool = True, dropout_key=None):
    """[B, T] ids (mask default: ids > 0) -> [B, T, D] float32: BertModel's last_hidden_state."""
    if token_ids.shape[-1] > self.cfg.max_text_tokens:
      raise ValueError(f"BertEmbedder: {token_ids.shape[-1]} tokens > the "
                       f"{self.cfg.max_text_tokens} positions; truncate (tokenizer max_length)")
    mask = token_ids > 0 if mask is None else mask
    rngs = None
    if not deterministic and self.cfg.dropout > 0:
      if dropout_key is None:
        raise ValueError("BertEmbedder: deterministic=False with dropout > 0 needs a dropout_key")
      rngs = nnx.Rngs(dropout=dropout_key)
    x = constrain(self.stems["text"].embed(token_ids, token_types), ("batch", "length", None))
    for block in self.blocks:
      x = block(x, mask, deterministic, rngs)
    return x.astype(jnp.float32)

  def __call__(self, token_ids, mask=None, token_types=None, *, deterministic: bool = True,
               dropout_key=None):
    mask = token_ids > 0 if mask is None else mask
    hidden = self.hidden_states(token_ids, mask, token_types, deterministic=deterministic,
                                dropout_key=dropout_key)
    embeddings = self.dense(pool(hidden, mask, self.cfg.pooling))
    if not self.cfg.normalize:
      return embeddings
    from gemb.model.encoder import l2_normalize  # pylint: disable=g-import-not-at-top
    return l2_normalize(embeddings)  # (not at the top: the Encoder imports this module)
