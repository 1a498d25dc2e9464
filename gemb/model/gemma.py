"""The Gemma 3 family (Gemma 3 text, EmbeddingGemma) as a bidirectional backbone: Hugging Face
`Gemma3TextModel`'s computation with `use_bidirectional_attention=True`, in Flax NNX, with gemb's
logical axis names on every parameter, so the mesh rules shard it (fsdp over `embed`, tensor
over `heads`, `mlp`, `vocab`), and the reading of its Hugging Face checkpoints (config.json and
tensor names, for gemb/model/hf.py).

Token embeddings scaled by sqrt(width); RMSNorm x / rms(x) * (1 + w) in float32; grouped-query
attention with query/key RMSNorm, RoPE (its own base on local and global layers) and queries
scaled by query_pre_attn_scalar ** -0.5; local layers see a symmetric band of the sequence,
global layers all of it; pre- and post-norms around attention and the GeGLU (tanh GELU) MLP.
No causal mask: padding keys are the only keys masked out. A block is called with its layer
index, a Python int or (under the Encoder's scan_layers) a scanned array, which picks the
layer's RoPE base and band: every layer has the same parameters. `GemmaEmbedder` adds what a
sentence-transformers folder (EmbeddingGemma's) puts on top: pooling, Dense layers,
normalisation.

The config (an ml_collections.ConfigDict; names as in config.model where it has them):
  vocab_size, width, depth, num_heads, num_kv_heads, head_dim, mlp_dim, rms_norm_eps,
  max_text_tokens (the checkpoint's positions; informative, RoPE has no table), layer_types
  (per layer "sliding" | "full"), sliding_window (as config.json writes it: a local layer's
  query sees keys at most sliding_window // 2 positions away, which is what transformers'
  bidirectional Gemma 3 computes), rope_theta (global layers), rope_local_theta
  (local layers), query_pre_attn_scalar, attn_logit_softcapping (0 = off), dtype, dropout
                                                             the backbone
  pooling (as gemb.model.bert.pool), dense_dims, dense_bias, dense_activation (one entry per
  Dense layer, in order), normalize                          GemmaEmbedder's head
Parameters stay float32; `dtype` sets the compute dtype. Pooling and the head run in float32.
`dropout` applies to the attention and MLP outputs before they join the residual stream.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gemb.model.bert import Dense, check_pooling, pool
from gemb.model.stems import _flatten
from gemb.sharding import constrain, logical_axes

INIT = nnx.initializers.normal(stddev=0.02)  # Gemma's initializer_range, for a random model
LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}
GELUS_TANH = ("gelu_pytorch_tanh", "gelu_new")  # GeGLU's GELU: the tanh approximation
FULL_RADIUS = int(jnp.iinfo(jnp.int32).max)  # a global layer's "band": every key


class RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) * (1 + scale) in float32, returned in x's dtype (Gemma's norm:
  the scale starts at zero)."""

  def __init__(self, dim: int, eps: float, axis_name: str):
    self.eps = eps
    self.scale = nnx.Param(jnp.zeros((dim,), jnp.float32), **logical_axes(axis_name))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + self.scale[...])).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding of x [B, T, N, K] at positions [B or 1, T], rotating the pairs
  (i, i + K/2) as transformers' rotate_half does; angles in float32."""
  dim = x.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [K / 2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, K / 2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, K]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-second, first], axis=-1) * sin


class Attention(nnx.Module):
  """Bidirectional grouped-query self-attention: num_heads query heads share num_kv_heads key
  and value heads (query head h reads kv head h // (num_heads / num_kv_heads)); padding keys
  and, on a sliding layer, keys outside the band are masked out."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.dtype = dtype
    # Per layer: RoPE base, and how far a query sees (a global layer: every key).
    sliding = [t == "sliding" for t in cfg.layer_types]
    self.thetas = tuple(cfg.rope_local_theta if s else cfg.rope_theta for s in sliding)
    self.radii = tuple(cfg.sliding_window // 2 if s else FULL_RADIUS for s in sliding)
    self.scale = cfg.query_pre_attn_scalar ** -0.5
    self.softcap = cfg.attn_logit_softcapping

    # Key and value kernels [D, N_kv, K] name their heads "heads" too: split over `tensor`
    # where it divides N_kv, replicated otherwise (EmbeddingGemma has one kv head).
    def projection(n):  # [B, T, D] -> [B, T, n, K]
      return nnx.Einsum("btd,dnk->btnk", (cfg.width, n, head_dim), None, dtype=dtype,
                        kernel_init=INIT, rngs=rngs,
                        kernel_metadata=logical_axes("embed", "heads", "kv"))
    self.query, self.key, self.value = projection(heads), projection(kv_heads), projection(kv_heads)
    self.query_norm = RMSNorm(head_dim, cfg.rms_norm_eps, "kv")
    self.key_norm = RMSNorm(head_dim, cfg.rms_norm_eps, "kv")
    self.out = nnx.Einsum("btnk,nkd->btd", (heads, head_dim, cfg.width), None, dtype=dtype,
                          kernel_init=INIT, rngs=rngs,
                          kernel_metadata=logical_axes("heads", "kv", "embed"))

  def __call__(self, x, mask, positions, layer):
    # x [B, T, D], mask [B, T], positions [B or 1, T], layer an int or int32 scalar array
    theta = jnp.asarray(self.thetas, jnp.float32)[layer]
    radius = jnp.asarray(self.radii, jnp.int32)[layer]
    head_spec = ("batch", "length", "heads", "kv")
    q = rope(self.query_norm(constrain(self.query(x), head_spec)), positions, theta)
    k = rope(self.key_norm(constrain(self.key(x), head_spec)), positions, theta)
    v = constrain(self.value(x), head_spec)
    batch, length, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    q = q.reshape(batch, length, k.shape[2], groups, head_dim)  # [B, T, N_kv, G, K]
    logits = jnp.einsum("btngk,bsnk->bngts", q, k, preferred_element_type=jnp.float32)
    logits = logits * self.scale
    if self.softcap:
      logits = jnp.tanh(logits / self.softcap) * self.softcap
    distance = jnp.abs(positions[:, :, None] - positions[:, None, :])  # [B or 1, T, S]
    allowed = mask[:, None, :] & (distance <= radius)  # [B, T, S]: real keys in the band
    # A query whose allowed keys are all padding gets uniform weights, not NaN.
    logits = jnp.where(allowed[:, None, None], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # [B, N_kv, G, T, S]
    attended = jnp.einsum("bngts,bsnk->btngk", weights, v).reshape(q.shape[:2] + (heads, -1))
    return self.out(constrain(attended, head_spec))


class Mlp(nnx.Module):
  """GeGLU: down(gelu_tanh(gate(x)) * up(x)), D -> mlp_dim -> D, no biases."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    def linear(n_in, n_out, axes):
      return nnx.Linear(n_in, n_out, use_bias=False, dtype=dtype, kernel_init=INIT, rngs=rngs,
                        kernel_metadata=logical_axes(*axes))
    self.gate = linear(cfg.width, cfg.mlp_dim, ("embed", "mlp"))
    self.up = linear(cfg.width, cfg.mlp_dim, ("embed", "mlp"))
    self.down = linear(cfg.mlp_dim, cfg.width, ("mlp", "embed"))

  def __call__(self, x):
    rows = x.reshape(-1, x.shape[-1])  # [B * T, D]: see encoder.Mlp for why rows
    hidden = jax.nn.gelu(self.gate(rows), approximate=True) * self.up(rows)
    hidden = constrain(hidden.reshape(*x.shape[:-1], -1), ("batch", "length", "mlp"))
    return self.down(hidden.reshape(rows.shape[0], -1)).reshape(x.shape)


class Block(nnx.Module):
  """x + post_norm(Attention(norm(x))), then x + post_norm(Mlp(norm(x))); called with its
  index `layer` in cfg.layer_types: a local ("sliding") or global ("full") attention layer."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    def norm():
      return RMSNorm(cfg.width, cfg.rms_norm_eps, "embed")
    self.attention_norm, self.post_attention_norm = norm(), norm()
    self.attention = Attention(cfg, dtype, rngs=rngs)
    self.mlp_norm, self.post_mlp_norm = norm(), norm()
    self.mlp = Mlp(cfg, dtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, mask, deterministic: bool, rngs: nnx.Rngs | None, positions, layer):
    """x [B, T, D], mask [B, T], positions [B or 1, T] (RoPE's and the band's), layer: this
    block's index, an int or an int32 scalar array."""
    attended = self.post_attention_norm(self.attention(self.attention_norm(x), mask, positions,
                                                       layer))
    x = x + self.dropout(attended, deterministic=deterministic, rngs=rngs)
    x = x + self.dropout(self.post_mlp_norm(self.mlp(self.mlp_norm(x))),
                         deterministic=deterministic, rngs=rngs)
    return constrain(x, ("batch", "length", None))


class TextStem(nnx.Module):
  """Gemma's token embedding as a gemb text stem: each text part slot's token embeddings
  scaled by sqrt(width), no position table (RoPE places tokens inside the blocks)."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.scale = cfg.width ** 0.5
    self.token_embed = nnx.Embed(cfg.vocab_size, cfg.width, param_dtype=jnp.float32,
                                 embedding_init=INIT, rngs=rngs,
                                 embedding_metadata=logical_axes("vocab", "embed"))

  def embed(self, token_ids):
    """token ids [..., T] -> [..., T, D] in the compute dtype, scaled by sqrt(width) rounded to
    that dtype, as transformers does (sqrt(3072) is 55.5 in bfloat16)."""
    x = self.token_embed(token_ids).astype(self.dtype)
    return x * jnp.asarray(self.scale, self.dtype)

  def __call__(self, side):
    tokens, part = side["text_tokens"], side["text_part"]  # [B, Pt, Lt], [B, Pt]
    mask = (tokens > 0) & (part >= 0)[..., None]
    return _flatten(self.embed(tokens), mask, part)


def check_config(cfg) -> None:
  """Raises ValueError naming the gemma config key whose value the backbone cannot use (an
  Encoder's config.model with backbone "gemma" too)."""
  def need(ok, key, why):
    if not ok:
      raise ValueError(f"gemma config: {key}={cfg.get(key)!r} {why}")
  need(cfg.num_heads % cfg.num_kv_heads == 0, "num_kv_heads",
       f"must divide num_heads={cfg.num_heads}")
  need(cfg.head_dim % 2 == 0, "head_dim", "must be even (RoPE rotates pairs)")
  need(len(cfg.layer_types) == cfg.depth and set(cfg.layer_types) <= {"sliding", "full"},
       "layer_types", f"must name 'sliding' or 'full' for each of the depth={cfg.depth} layers")
  need(cfg.sliding_window > 0 or "sliding" not in cfg.layer_types, "sliding_window",
       "must be positive when a layer is 'sliding'")


class GemmaEmbedder(nnx.Module):
  """Token ids [B, T] (0 = padding) -> sentence embeddings [B, E] float32, as a
  sentence-transformers folder defines them (EmbeddingGemma: mean pooling, Dense 768 -> 3072
  -> 768 without bias, Normalize): Gemma -> pooling -> Dense layers -> optional L2
  normalisation. Its parameters sit where an Encoder would keep a gemma backbone's
  (stems/text/..., blocks/i/..., final_norm), as gemb.model.bert.BertEmbedder's do."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    check_config(cfg)
    check_pooling(cfg, "gemma")
    self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: part of the static graph
    dtype = jnp.dtype(cfg.dtype)
    self.stems = nnx.Dict({"text": TextStem(cfg, dtype, rngs=rngs)})
    self.blocks = nnx.List([Block(cfg, dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.final_norm = RMSNorm(cfg.width, cfg.rms_norm_eps, "embed")
    self.dense = Dense(len(cfg.pooling) * cfg.width, cfg, rngs=rngs)

  def encode(self, x, mask, positions=None, *, deterministic: bool = True, dropout_key=None):
    """The blocks and the final norm over embedded tokens x [B, T, D] (text, or any stem's)
    with mask [B, T] (True = real token) -> [B, T, D] float32. positions [B, T] (default
    0..T-1) set RoPE's angles and the local layers' band."""
    rngs = None
    if not deterministic and self.cfg.dropout > 0:
      if dropout_key is None:
        raise ValueError("GemmaEmbedder: deterministic=False with dropout > 0 needs a "
                         "dropout_key")
      rngs = nnx.Rngs(dropout=dropout_key)
    x = constrain(x, ("batch", "length", None))
    positions = jnp.arange(x.shape[1])[None] if positions is None else positions
    for layer, block in enumerate(self.blocks):
      x = block(x, mask, deterministic, rngs, positions, layer)
    return self.final_norm(x).astype(jnp.float32)

  def hidden_states(self, token_ids, mask=None, *, deterministic: bool = True,
                    dropout_key=None):
    """[B, T] ids (mask default: ids > 0, Gemma's <pad> being 0) -> [B, T, D] float32:
    Gemma3TextModel's last_hidden_state under bidirectional attention."""
    mask = token_ids > 0 if mask is None else mask
    return self.encode(self.stems["text"].embed(token_ids), mask, deterministic=deterministic,
                       dropout_key=dropout_key)

  def __call__(self, token_ids, mask=None, *, deterministic: bool = True, dropout_key=None):
    mask = token_ids > 0 if mask is None else mask
    hidden = self.hidden_states(token_ids, mask, deterministic=deterministic,
                                dropout_key=dropout_key)
    embeddings = self.dense(pool(hidden, mask, self.cfg.pooling))
    if not self.cfg.normalize:
      return embeddings
    from gemb.model.encoder import l2_normalize  # pylint: disable=g-import-not-at-top
    return l2_normalize(embeddings)  # (not at the top: an Encoder would import this module)


# ---------------------------------------------------------------- Hugging Face checkpoints

def hf_config(config: dict, dtype: str = "float32") -> ml_collections.ConfigDict:
  """A Gemma 3 text config.json (a dict, model_type "gemma3_text") -> the config of
  GemmaEmbedder, with the family's default pooling (mean) and no Dense layers (gemb.model.hf's
  read_config sets the folder's). max_text_tokens is the checkpoint's max_position_embeddings.

  Reads RoPE bases from transformers 5's `rope_parameters` or the older `rope_theta` +
  `rope_local_base_freq`. The checkpoint's `attn_logit_softcapping` is not used: transformers'
  Gemma 3 stores but never applies it (released Gemma 3 checkpoints set it to null), and a
  checkpoint loads to the model that transformers runs. `final_logit_softcapping` caps a
  language model's vocabulary logits, which an embedding backbone never computes. A causal
  checkpoint (use_bidirectional_attention false) loads too; gemb runs it bidirectionally, with
  the band transformers gives it when the flag is set.
  """
  def need(ok, key, why):
    if not ok:
      raise ValueError(f"config.json {key}={config.get(key)!r}: {why}")
  need(config.get("model_type") == "gemma3_text", "model_type",
       "gemb's gemma loads Gemma 3 text models ('gemma3_text'; for a multimodal 'gemma3' "
       "checkpoint use its text_config and language_model tensors)")
  need(config.get("hidden_activation", "gelu_pytorch_tanh") in GELUS_TANH, "hidden_activation",
       f"gemb's gemma has the tanh GELU ({GELUS_TANH})")
  need(not config.get("attention_bias", False), "attention_bias", "gemb's gemma has no biases")
  depth, heads = config["num_hidden_layers"], config["num_attention_heads"]
  layer_types = config.get("layer_types") or [  # older configs: every 6th layer is global
      "full_attention" if (i + 1) % config.get("sliding_window_pattern",
                                               config.get("_sliding_window_pattern", 6)) == 0
      else "sliding_attention" for i in range(depth)]
  need(set(layer_types) <= set(LAYER_TYPES), "layer_types",
       f"gemb's gemma knows {sorted(LAYER_TYPES)}")
  rope = config.get("rope_parameters") or {
      "full_attention": dict(config.get("rope_scaling") or {"rope_type": "default"},
                             rope_theta=config.get("rope_theta", 1_000_000.0)),
      "sliding_attention": {"rope_type": "default",
                            "rope_theta": config.get("rope_local_base_freq", 10_000.0)}}
  for kind in set(layer_types):
    rope_type = rope.get(kind, {}).get("rope_type", rope.get(kind, {}).get("type", "default"))
    need(rope_type == "default", "rope_parameters" if "rope_parameters" in config else
         "rope_scaling", f"{kind} layers use rope_type {rope_type!r}; gemb's gemma has the "
         "default RoPE only")
  return ml_collections.ConfigDict(dict(
      vocab_size=config["vocab_size"], width=config["hidden_size"], depth=depth, num_heads=heads,
      num_kv_heads=config.get("num_key_value_heads", heads),
      head_dim=config.get("head_dim") or config["hidden_size"] // heads,
      mlp_dim=config["intermediate_size"], rms_norm_eps=config.get("rms_norm_eps", 1e-6),
      max_text_tokens=config.get("max_position_embeddings", 2048),
      layer_types=tuple(LAYER_TYPES[t] for t in layer_types),
      sliding_window=config.get("sliding_window") or 0,
      rope_theta=float(rope["full_attention"]["rope_theta"]),
      rope_local_theta=float(rope["sliding_attention"]["rope_theta"]),
      query_pre_attn_scalar=float(config.get("query_pre_attn_scalar", 256)),
      attn_logit_softcapping=0.0, dtype=dtype, dropout=0.0,
      pooling=("mean",), dense_dims=(), dense_bias=(), dense_activation=(), normalize=False))


def hf_weights(cfg) -> dict[str, tuple[str, str]]:
  """Checkpoint tensor name (prefix removed) -> (GemmaEmbedder parameter path, layout of
  gemb.model.hf.HF_SHAPES)."""
  table = {"embed_tokens.weight": ("stems/text/token_embed/embedding", "same"),
           "norm.weight": ("final_norm/scale", "same")}
  for i in range(cfg.depth):
    hf_layer, gemb = f"layers.{i}.", f"blocks/{i}/"
    table.update({
        f"{hf_layer}input_layernorm.weight": (f"{gemb}attention_norm/scale", "same"),
        f"{hf_layer}self_attn.q_proj.weight": (f"{gemb}attention/query/kernel", "heads_in"),
        f"{hf_layer}self_attn.k_proj.weight": (f"{gemb}attention/key/kernel", "heads_in"),
        f"{hf_layer}self_attn.v_proj.weight": (f"{gemb}attention/value/kernel", "heads_in"),
        f"{hf_layer}self_attn.q_norm.weight": (f"{gemb}attention/query_norm/scale", "same"),
        f"{hf_layer}self_attn.k_norm.weight": (f"{gemb}attention/key_norm/scale", "same"),
        f"{hf_layer}self_attn.o_proj.weight": (f"{gemb}attention/out/kernel", "heads_out"),
        f"{hf_layer}post_attention_layernorm.weight": (f"{gemb}post_attention_norm/scale",
                                                       "same"),
        f"{hf_layer}pre_feedforward_layernorm.weight": (f"{gemb}mlp_norm/scale", "same"),
        f"{hf_layer}mlp.gate_proj.weight": (f"{gemb}mlp/gate/kernel", "transposed"),
        f"{hf_layer}mlp.up_proj.weight": (f"{gemb}mlp/up/kernel", "transposed"),
        f"{hf_layer}mlp.down_proj.weight": (f"{gemb}mlp/down/kernel", "transposed"),
        f"{hf_layer}post_feedforward_layernorm.weight": (f"{gemb}post_mlp_norm/scale", "same"),
    })
  return table


# Checkpoint tensors the backbone does not use: a causal LM's (untied) output head.
IGNORED = re.compile(r"lm_head\.")
