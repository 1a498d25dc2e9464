"""The gemb encoder: stems -> one sequence -> bidirectional transformer -> pooled unit embedding.

Each modality's stem turns its part slots into tokens; every token also gets a learned
part-index embedding (its `*_part` value), and the token buffers of all modalities are
concatenated into one sequence [B, N, D] with a padding mask. Under bidirectional attention
and masked mean pooling the physical order of tokens does not matter; the part-index
embedding carries the order of the parts in the input. (A RoPE backbone is the exception:
gemma numbers the real tokens in this concatenated order.)

`config.model.backbone` picks the text stem and the blocks: gemb's own, or a pretrained
family (bert, gemma) whose Hugging Face folder gemb/model/hf.py reads (`encoder_config`,
`read_params`).

Parameters stay float32; `config.model.dtype` sets the compute dtype of the transformer.
Pooling, the projection and the normalisation run in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gemb.model import bert, gemma, inputs
from gemb.model.attention import Attention
from gemb.model.stems import STEMS, SHARED_INIT
from gemb.sharding import constrain, logical_axes

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_config(cfg) -> None:
  """Raises ValueError naming the `config.model` key whose value the encoder cannot use."""
  def need(ok, key, why):
    if not ok:
      raise ValueError(f"config.model.{key}={cfg.get(key)!r}: {why}")
  need(cfg.dtype in DTYPES, "dtype", f"must be one of {sorted(DTYPES)}")
  need(cfg.backbone in BACKBONES, "backbone", f"must be one of {sorted(BACKBONES)}")
  if cfg.backbone == "gemma":
    gemma.check_config(cfg)  # kv heads, head_dim, layer types, band
    need(cfg.attention_impl == "xla", "attention_impl", "must be 'xla' for the gemma backbone "
         "(its attention, with grouped kv heads and a local band, is its own)")
  else:
    need(cfg.width % cfg.num_heads == 0, "num_heads", f"must divide width={cfg.width}")
  p = cfg.patch_size
  need(all(s % p == 0 for s in cfg.max_image_size), "max_image_size",
       f"must be multiples of patch_size={p}")
  need(all(s % p == 0 for s in cfg.video_size), "video_size",
       f"must be multiples of patch_size={p}")
  need(len(cfg.audio_patch) == 2 and cfg.max_audio_frames % cfg.audio_patch[0] == 0
       and cfg.n_mels % cfg.audio_patch[1] == 0, "audio_patch",
       f"must be (frames, mels) dividing max_audio_frames={cfg.max_audio_frames} and "
       f"n_mels={cfg.n_mels}")
  need(cfg.max_video_frames % cfg.tubelet_frames == 0, "tubelet_frames",
       f"must divide max_video_frames={cfg.max_video_frames}")
  need(all(0 < d <= cfg.embed_dim for d in cfg.mrl_dims) and list(cfg.mrl_dims)
       == sorted(set(cfg.mrl_dims)), "mrl_dims",
       f"must be increasing dims in (0, embed_dim={cfg.embed_dim}]")
  need(cfg.pooling in ("mean", "cls"), "pooling", "must be 'mean' or 'cls'")
  dense_dims = tuple(cfg.dense_dims) if cfg.projection == "dense" else ()
  need(cfg.projection == "linear"
       or (cfg.projection == "identity" and cfg.embed_dim == cfg.width)
       or (dense_dims and cfg.embed_dim == dense_dims[-1]), "projection",
       f"must be 'linear', 'identity' with embed_dim == width ({cfg.width}), or 'dense' with "
       f"embed_dim == dense_dims[-1] (dense_dims={dense_dims}: the Dense layers of a "
       "sentence-transformers folder, set by gemb.model.hf.encoder_config)")
  need(0.0 <= cfg.dropout < 1.0, "dropout", "must lie in [0, 1)")
  need(cfg.attention_impl in ("xla", "cudnn"), "attention_impl", "must be 'xla' or 'cudnn'")
  need(isinstance(cfg.scan_layers, bool), "scan_layers", "must be True or False")
  for modality in ("image", "video"):
    channels = tuple(cfg.get(f"{modality}_conv_channels", ()) or ())
    strides = tuple(cfg.get(f"{modality}_conv_strides", ()) or ())
    need(not strides or (len(strides) == len(channels) and all(s in (1, 2) for s in strides)),
         f"{modality}_conv_strides", f"must be empty (all 2) or one stride, 1 or 2, per entry "
         f"of {modality}_conv_channels={channels}")
    halvings = list(strides).count(2) if strides else len(channels)
    need(all(c > 0 for c in channels) and p % (1 << halvings) == 0,
         f"{modality}_conv_channels", f"must be positive channel counts with at most "
         f"log2(patch_size={p}) stride-2 convolutions (each halves the image; a patch must "
         "stay whole)")
  gain = cfg.get("patch_colour_gain", 0.0)
  need(gain >= 0 and (not gain or cfg.get("image_conv_channels", ())), "patch_colour_gain",
       "must be >= 0, and > 0 only with image_conv_channels (linear patches hold the pixels)")


class Mlp(nnx.Module):
  """D -> mlp_ratio * D -> D with a GELU."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    hidden = int(cfg.width * cfg.mlp_ratio)
    self.up = nnx.Linear(cfg.width, hidden, dtype=dtype, rngs=rngs,
                         kernel_metadata=logical_axes("embed", "mlp"),
                         bias_metadata=logical_axes("mlp"))
    self.down = nnx.Linear(hidden, cfg.width, dtype=dtype, rngs=rngs,
                           kernel_metadata=logical_axes("mlp", "embed"),
                           bias_metadata=logical_axes("embed"))

  def __call__(self, x):
    # Both products take the tokens as the rows of one matrix, [B * N, D]. Over [B, N, D] the
    # weight gradients contract two axes, which XLA's CPU backend transposes and copies first:
    # this block's forward + backward at [128, 48, 128] took 2.1x as long, and a toyworld train
    # step ~5% longer. The reshapes are free.
    rows = x.reshape(-1, x.shape[-1])  # [B * N, D]
    hidden = jax.nn.gelu(self.up(rows)).reshape(*x.shape[:-1], -1)  # [B, N, F]
    hidden = constrain(hidden, ("batch", "length", "mlp"))
    return self.down(hidden.reshape(rows.shape[0], -1)).reshape(x.shape)


def _layer_norm(cfg, dtype, rngs):
  return nnx.LayerNorm(cfg.width, epsilon=1e-6, dtype=dtype, rngs=rngs,
                       scale_metadata=logical_axes("embed"), bias_metadata=logical_axes("embed"))


class Block(nnx.Module):
  """Pre-LN transformer block: x + Attention(LN(x)), then x + Mlp(LN(x))."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.attention_norm = _layer_norm(cfg, dtype, rngs)
    self.attention = Attention(cfg, dtype, rngs=rngs)
    self.mlp_norm = _layer_norm(cfg, dtype, rngs)
    self.mlp = Mlp(cfg, dtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)  # keys come with each call (see Encoder.__call__)

  def __call__(self, x, mask, deterministic: bool, rngs: nnx.Rngs | None = None):
    x = x + self.dropout(self.attention(self.attention_norm(x), mask),
                         deterministic=deterministic, rngs=rngs)
    x = x + self.dropout(self.mlp(self.mlp_norm(x)), deterministic=deterministic, rngs=rngs)
    return constrain(x, ("batch", "length", None))


# config.model.backbone -> (text stem, block, final norm or None), each built as f(cfg, dtype,
# rngs); the other modalities' stems serve every backbone. A post-LN backbone (bert) ends
# normalised. gemma's blocks also take RoPE positions and their layer index (Encoder.__call__).
BACKBONES = {
    "gemb": (STEMS["text"], Block, _layer_norm),
    "bert": (bert.TextStem, bert.Block, None),
    "gemma": (gemma.TextStem, gemma.Block,
              lambda cfg, dtype, rngs: gemma.RMSNorm(cfg.width, cfg.rms_norm_eps, "embed")),
}


class Encoder(nnx.Module):
  """Embeds a packed side (gemb/data/packing.py) as float32 unit vectors [B, embed_dim]."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    check_config(cfg)
    self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: part of the static graph
    dtype = DTYPES[cfg.dtype]
    text_stem, block_class, final_norm = BACKBONES[cfg.backbone]
    stems = {**STEMS, "text": text_stem}
    self.stems = nnx.Dict({m: stems[m](cfg, dtype, rngs=rngs) for m in inputs.MODALITIES})
    # A pretrained backbone gets its own text embeddings normalised (BERT's embedding LayerNorm),
    # and fresh stems' tokens ~10x smaller: a post-LN backbone then embeds every image alike
    # (cosine 0.999 between ToyWorld images at init) and the loss starts flat. `stem_norm`
    # layer-normalises the other modalities' tokens to the same scale.
    self.stem_norms = (nnx.Dict({m: _layer_norm(cfg, dtype, rngs) for m in inputs.MODALITIES
                                 if m != "text"}) if cfg.get("stem_norm") else nnx.data(None))
    self.part_embed = nnx.Param(SHARED_INIT(rngs.params(), (cfg.max_parts, cfg.width)),
                                **logical_axes("parts", "embed"))
    if cfg.scan_layers:
      # One Block whose parameters carry a leading [depth] axis (logical name "layers"), run
      # by nnx.scan: one block is traced and compiled, whatever the depth.
      @nnx.split_rngs(splits=cfg.depth)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stacked_blocks(rngs):
        return block_class(cfg, dtype, rngs=rngs)
      self.blocks = stacked_blocks(rngs)
    else:
      self.blocks = nnx.List([block_class(cfg, dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.final_norm = final_norm(cfg, dtype, rngs) if final_norm else nnx.data(None)
    # No bias (as in CLIP): a shared offset would only pull every embedding towards one
    # direction, and the contrastive loss first falls by collapsing onto it.
    # "identity": a backbone whose pooled output already is its embedding (a pretrained one).
    self.projection = (nnx.Linear(cfg.width, cfg.embed_dim, use_bias=False, rngs=rngs,
                                  kernel_metadata=logical_axes("embed", "projection"))
                       if cfg.projection == "linear" else nnx.data(None))
    # "dense": a sentence-transformers folder's Dense layers (EmbeddingGemma's 768 -> 3072 ->
    # 768), where its embedders keep them, so that gemb.model.hf.read_params fills them.
    self.dense = (bert.Dense(cfg.width, cfg, rngs=rngs) if cfg.projection == "dense"
                  else nnx.data(None))

  def __call__(self, side: dict, *, deterministic: bool = True,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Embeds a packed side. With deterministic=False and dropout > 0, `dropout_key` (a PRNG key)
    draws the dropout masks: the model holds no RNG state, so a train step is a pure function of
    (params, batch, key) under any jax transform."""
    inputs.check_side(side, self.cfg)
    dropout = not deterministic and self.cfg.dropout > 0
    if dropout and dropout_key is None:
      raise ValueError("Encoder: deterministic=False with dropout > 0 needs a dropout_key")
    streams = [self.stems[m](side) for m in inputs.present_modalities(side)]
    if self.stem_norms is not None:
      streams = [(self.stem_norms[m](tokens) if m in self.stem_norms else tokens, mask, part)
                 for m, (tokens, mask, part) in zip(inputs.present_modalities(side), streams)]
    x = jnp.concatenate([tokens for tokens, _, _ in streams], axis=1)  # [B, N, D]
    mask = jnp.concatenate([mask for _, mask, _ in streams], axis=1)  # [B, N]
    part = jnp.concatenate([part for _, _, part in streams], axis=1)  # [B, N]
    x = x + self.part_embed[...][jnp.clip(part, 0, self.cfg.max_parts - 1)].astype(x.dtype)
    x = constrain(x, ("batch", "length", None))

    # One dropout key per block, passed in as an array: a remat'd function must not close
    # over an nnx.Rngs (its counter would be mutated from inside the remat trace).
    keys = jax.random.split(dropout_key, self.cfg.depth) if dropout else None  # [depth]
    # RoPE (gemma) numbers the real tokens of the whole sequence 0, 1, ... in order, across
    # part slots and modalities: one right-padded text gets 0..T-1, as transformers gives it.
    positions = jnp.cumsum(mask, axis=1) - 1 if self.cfg.backbone == "gemma" else None  # [B, N]

    def apply_block(block, x, mask, positions, key, layer):
      rngs = None if key is None else nnx.Rngs(dropout=key)
      if positions is None:
        return block(x, mask, deterministic, rngs)
      return block(x, mask, deterministic, rngs, positions, layer)
    if self.cfg.remat:
      apply_block = nnx.remat(apply_block)
    if self.cfg.scan_layers:  # the layer index is scanned too (gemma's RoPE base and band)
      in_axes = (0, nnx.Carry, None, None, None if keys is None else 0, 0)
      x = nnx.scan(apply_block, in_axes=in_axes, out_axes=nnx.Carry)(
          self.blocks, x, mask, positions, keys, jnp.arange(self.cfg.depth))
    else:
      for i, block in enumerate(self.blocks):
        x = apply_block(block, x, mask, positions, None if keys is None else keys[i], i)

    if self.final_norm is not None:
      x = self.final_norm(x)
    x = x.astype(jnp.float32)
    weights = mask.astype(jnp.float32)[..., None]  # [B, N, 1]
    count = weights.sum(axis=1)  # [B, 1]
    pooled = (x[:, 0] if self.cfg.pooling == "cls"  # text slot 0's [CLS]
              else (x * weights).sum(axis=1) / jnp.maximum(count, 1.0))  # [B, D]
    if self.projection is not None:
      pooled = self.projection(pooled)
    if self.dense is not None:
      pooled = self.dense(pooled)
    embeddings = l2_normalize(pooled)  # [B, embed_dim]
    # An example with no parts at all (a padding row of an eval batch) embeds to zeros.
    return jnp.where(count > 0, embeddings, 0.0)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / |x| along the last axis (a zero vector stays zero)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def mrl_prefixes(embeddings: jax.Array, dims) -> list[jax.Array]:
  """Matryoshka prefixes: for each d in `dims`, the first d coordinates re-normalised [B, d]."""
  for d in dims:
    if not 0 < d <= embeddings.shape[-1]:
      raise ValueError(f"MRL dim {d} is outside (0, {embeddings.shape[-1]}] "
                       "(config.model.mrl_dims)")
  return [l2_normalize(embeddings[..., :d]) for d in dims]
