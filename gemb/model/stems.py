"""Stems: one per modality, each turns the part slots of a side into tokens of width D.

Every stem returns
  tokens  [B, N, D]  patch/token embedding + positions + a learned modality embedding
  mask    [B, N]     True for a real token of a present part
  part    [B, N]     index of the token's part in its input (-1 for an absent part slot)
where N = part slots x tokens per slot. Position tables are sized by the config limits
(max_text_tokens, max_image_size, ...) and a smaller buffer reads their first rows, so a
token's embedding does not depend on how much padding surrounds it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gemb.sharding import logical_axes

EMBED_INIT = nnx.initializers.normal(stddev=0.02)  # token embeddings
# Position, modality and part embeddings start at zero. They are the same for every input, so
# random ones would add an offset shared by all inputs, which mean pooling keeps whole while it
# averages the tokens' own content down: every input would start as nearly the same embedding
# (cosine ~0.98 on ToyWorld) and the contrastive loss would sit at log(batch) until training
# removed the offset. From zero they grow with their gradients (on ToyWorld text->image the
# loss after 150 steps falls to 1.5 instead of 2.3).
SHARED_INIT = nnx.initializers.zeros


def _table(rngs: nnx.Rngs, shape: tuple[int, ...], *names: str) -> nnx.Param:
  """A learned float32 table (positions, modality or part embeddings), zero at init."""
  return nnx.Param(SHARED_INIT(rngs.params(), shape, jnp.float32), **logical_axes(*names))


def _patch_embed(in_features: int, cfg, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, cfg.width, dtype=dtype, param_dtype=jnp.float32,
                    kernel_metadata=logical_axes("patch", "embed"),
                    bias_metadata=logical_axes("embed"), rngs=rngs)


def _flatten(tokens: jax.Array, mask: jax.Array, part: jax.Array):
  """[B, P, *grid, D], [B, P, *grid], [B, P] -> [B, N, D], [B, N], [B, N]."""
  batch, width = tokens.shape[0], tokens.shape[-1]
  part = jnp.broadcast_to(part.reshape(part.shape + (1,) * (mask.ndim - 2)), mask.shape)
  return (tokens.reshape(batch, -1, width), mask.reshape(batch, -1), part.reshape(batch, -1))


class TextStem(nnx.Module):
  """Token ids [B, Pt, Lt] (0 = padding) -> token embedding + learned 1-D positions."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.token_embed = nnx.Embed(cfg.vocab_size, cfg.width, param_dtype=jnp.float32,
                                 embedding_init=EMBED_INIT,
                                 embedding_metadata=logical_axes("vocab", "embed"), rngs=rngs)
    self.positions = _table(rngs, (cfg.max_text_tokens, cfg.width), "positions", "embed")
    self.modality = _table(rngs, (cfg.width,), "embed")

  def __call__(self, side):
    tokens, part = side["text_tokens"], side["text_part"]  # [B, Pt, Lt], [B, Pt]
    length = tokens.shape[2]
    x = self.token_embed(tokens) + self.positions[:length] + self.modality[...]  # [B, Pt, Lt, D]
    mask = (tokens > 0) & (part >= 0)[..., None]
    return _flatten(x.astype(self.dtype), mask, part)


class PixelConvs(nnx.Module):
  """The convolutional front of the image and video stems (Xiao et al. 2021, "Early
  convolutions help transformers see better"): k 3x3 stride-2 convolutions with GELUs,
  k = len(config.model.image_conv_channels), before the linear patch embedding.

  Their local detectors (edges, corners) are the same at every pixel offset, where a linear
  patch embedding must learn each shape at each offset within a patch. Outputs beyond a frame's
  real size are zeroed, as the convolutions' own padding is, so a token's embedding does not
  depend on how much padding surrounds the image (a GELU of the bias would leak in otherwise).
  """

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    channels = (3, *conv_channels(cfg))
    self.out_channels = channels[-1]
    self.patch_size = cfg.patch_size
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, (3, 3), strides=2, padding="SAME", dtype=dtype,
                 param_dtype=jnp.float32, kernel_metadata=logical_axes(None, None, None, None),
                 bias_metadata=logical_axes(None), rngs=rngs)
        for c_in, c_out in zip(channels[:-1], channels[1:])])

  @property
  def patch_features(self) -> int:
    """Features of one frame's p x p patch on the output grid: (p / 2^k)^2 x channels."""
    q = self.patch_size >> len(self.convs)
    return q * q * self.out_channels

  def __call__(self, pixels: jax.Array, real_hw: jax.Array) -> jax.Array:
    """pixels [N, H, W, 3], real_hw [N, 2] (0 for a padding frame) -> [N, H/2^k, W/2^k, C]."""
    x = pixels
    for i, conv in enumerate(self.convs, 1):
      x = jax.nn.gelu(conv(x))  # [N, H / 2^i, W / 2^i, C_i]
      real = ((jnp.arange(x.shape[1])[None, :, None] < (real_hw[:, None, 0:1] >> i))
              & (jnp.arange(x.shape[2])[None, None, :] < (real_hw[:, None, 1:2] >> i)))
      x = x * real[..., None].astype(x.dtype)
    return x


def conv_channels(cfg) -> tuple[int, ...]:
  """Output channels of the pixel stems' stride-2 convolutions (() = linear patch embedding)."""
  return tuple(int(c) for c in cfg.get("image_conv_channels", ()) or ())


def _patch_grid(x: jax.Array, lead: int, rows: int, cols: int) -> jax.Array:
  """[*L, rows * q, cols * q, C] -> [*L, rows, cols, q * q * C]: the features of each patch,
  (row, col, channel)-major, where `lead` = len(L)."""
  shape = x.shape[:lead]
  q = x.shape[lead] // rows
  x = x.reshape(*shape, rows, q, cols, q, x.shape[-1])
  order = tuple(range(lead)) + tuple(lead + i for i in (0, 2, 1, 3, 4))
  return x.transpose(order).reshape(*shape, rows, cols, -1)


class ImageStem(nnx.Module):
  """Images [B, Pi, H, W, 3] -> one token per p x p patch (a linear embedding of its pixels, or
  of the PixelConvs' output over it) + learned row and column positions; patches outside the
  real (height, width) in `image_hw` are masked out."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.patch_size = cfg.patch_size
    p = cfg.patch_size
    hmax, wmax = cfg.max_image_size
    self.pixel_convs = PixelConvs(cfg, dtype, rngs=rngs)
    self.patch_embed = _patch_embed(self.pixel_convs.patch_features, cfg, dtype, rngs)
    self.row_positions = _table(rngs, (hmax // p, cfg.width), "positions", "embed")
    self.col_positions = _table(rngs, (wmax // p, cfg.width), "positions", "embed")
    self.modality = _table(rngs, (cfg.width,), "embed")

  def __call__(self, side):
    images, hw, part = side["image"], side["image_hw"], side["image_part"]
    batch, slots, height, width, channels = images.shape
    p = self.patch_size
    rows, cols = height // p, width // p
    x = images.astype(self.dtype)
    if self.pixel_convs.convs:
      x = self.pixel_convs(x.reshape(batch * slots, height, width, channels),
                           hw.reshape(batch * slots, 2))
      x = x.reshape(batch, slots, *x.shape[1:])
    x = self.patch_embed(_patch_grid(x, 2, rows, cols))  # [B, Pi, rows, cols, D]
    positions = self.row_positions[:rows][:, None] + self.col_positions[:cols][None]
    x = x + (positions + self.modality[...]).astype(self.dtype)
    real_rows = jnp.arange(rows) < (hw[..., 0] // p)[..., None]  # [B, Pi, rows]
    real_cols = jnp.arange(cols) < (hw[..., 1] // p)[..., None]  # [B, Pi, cols]
    mask = real_rows[..., :, None] & real_cols[..., None, :] & (part >= 0)[..., None, None]
    return _flatten(x, mask, part)


class AudioStem(nnx.Module):
  """Log-mel spectrograms [B, Pa, F, M] -> linear embedding of (frames x mels) patches +
  learned time and frequency positions; patches starting at or after `audio_frames` are
  masked out."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.audio_patch = tuple(cfg.audio_patch)
    pf, pm = self.audio_patch
    self.patch_embed = _patch_embed(pf * pm, cfg, dtype, rngs)
    self.time_positions = _table(rngs, (cfg.max_audio_frames // pf, cfg.width), "positions",
                                 "embed")
    self.freq_positions = _table(rngs, (cfg.n_mels // pm, cfg.width), "positions", "embed")
    self.modality = _table(rngs, (cfg.width,), "embed")

  def __call__(self, side):
    audio, frames, part = side["audio"], side["audio_frames"], side["audio_part"]
    batch, slots, n_frames, n_mels = audio.shape
    pf, pm = self.audio_patch
    steps, bands = n_frames // pf, n_mels // pm
    patches = audio.reshape(batch, slots, steps, pf, bands, pm)
    patches = patches.transpose(0, 1, 2, 4, 3, 5).reshape(batch, slots, steps, bands, pf * pm)
    x = self.patch_embed(patches.astype(self.dtype))  # [B, Pa, steps, bands, D]
    positions = self.time_positions[:steps][:, None] + self.freq_positions[...][None]
    x = x + (positions + self.modality[...]).astype(self.dtype)
    real_steps = jnp.arange(steps) * pf < frames[..., None]  # [B, Pa, steps]
    mask = (real_steps & (part >= 0)[..., None])[..., None] & jnp.ones(bands, bool)
    return _flatten(x, mask, part)


class VideoStem(nnx.Module):
  """Videos [B, Pv, T, Hv, Wv, 3] -> one token per (tubelet_frames x p x p) tubelet (a linear
  embedding of its pixels, or of the PixelConvs' output of its frames) + learned temporal, row
  and column positions; tubelets starting at or after `video_frames` are masked out."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.patch_size = cfg.patch_size
    self.tubelet_frames = cfg.tubelet_frames
    p, tf = cfg.patch_size, cfg.tubelet_frames
    hv, wv = cfg.video_size
    self.pixel_convs = PixelConvs(cfg, dtype, rngs=rngs)
    self.patch_embed = _patch_embed(tf * self.pixel_convs.patch_features, cfg, dtype, rngs)
    self.time_positions = _table(rngs, (cfg.max_video_frames // tf, cfg.width), "positions",
                                 "embed")
    self.row_positions = _table(rngs, (hv // p, cfg.width), "positions", "embed")
    self.col_positions = _table(rngs, (wv // p, cfg.width), "positions", "embed")
    self.modality = _table(rngs, (cfg.width,), "embed")

  def __call__(self, side):
    video, frames, part = side["video"], side["video_frames"], side["video_part"]
    batch, slots, n_frames, height, width, channels = video.shape
    p, tf = self.patch_size, self.tubelet_frames
    steps, rows, cols = n_frames // tf, height // p, width // p
    x = video.astype(self.dtype)
    if self.pixel_convs.convs:
      real = jnp.arange(n_frames) < frames[..., None]  # [B, Pv, T]
      real_hw = jnp.where(real[..., None], jnp.array([height, width], jnp.int32), 0)
      x = self.pixel_convs(x.reshape(-1, height, width, channels), real_hw.reshape(-1, 2))
      x = x.reshape(batch, slots, n_frames, *x.shape[1:])
    x = _patch_grid(x, 3, rows, cols)  # [B, Pv, T, rows, cols, F]
    x = x.reshape(batch, slots, steps, tf, rows, cols, -1).transpose(0, 1, 2, 4, 5, 3, 6)
    x = x.reshape(batch, slots, steps, rows, cols, -1)  # a tubelet's frames side by side
    x = self.patch_embed(x)  # [B, Pv, steps, rows, cols, D]
    positions = (self.time_positions[:steps][:, None, None] + self.row_positions[...][:, None]
                 + self.col_positions[...][None])
    x = x + (positions + self.modality[...]).astype(self.dtype)
    real_steps = jnp.arange(steps) * tf < frames[..., None]  # [B, Pv, steps]
    mask = (real_steps & (part >= 0)[..., None])[..., None, None] & jnp.ones((rows, cols), bool)
    return _flatten(x, mask, part)


STEMS = {"text": TextStem, "image": ImageStem, "audio": AudioStem, "video": VideoStem}
