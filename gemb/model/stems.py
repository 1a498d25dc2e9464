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


class PixelPatches(nnx.Module):
  """The features of each p x p patch of a frame, which the image and video stems embed
  linearly: its p*p*3 pixels (the ViT patch embedding), or, when the stem's conv_layout is
  not empty, the outputs over it of a convolutional front (Xiao et al. 2021, "Early
  convolutions help transformers see better"): 3x3 convolutions with GELUs, of stride 1 or 2,
  and, when config.model.patch_colour_gain > 0, the patch's mean colour times that gain.

  The convolutions' local detectors (edges, corners) are the same at every pixel offset, where
  a linear patch embedding must learn each shape at each offset within a patch. Conv outputs
  beyond a frame's real size are zeroed, as the convolutions' own padding is, so a token's
  embedding does not depend on how much padding surrounds the image (a GELU of the bias would
  leak in otherwise).

  The mean colour is a shortcut to what the convolutions learn more slowly, and a strong one
  starves the rest (gradient starvation, Pezeshki et al. 2021): in the ToyWorld smoke, gain 1
  gives a perfect colour probe and a near-chance shape probe (1.00, 0.30), gain 0 the reverse
  (colour 0.36, shape 0.55); gains of 0.1 and 0.25 learn both (README has the numbers).
  """

  def __init__(self, cfg, modality: str, dtype, *, rngs: nnx.Rngs):
    layout = conv_layout(cfg, modality)
    channels = (3, *(c for c, _ in layout))
    self.features = patch_features(cfg, modality)  # the width of what __call__ returns
    self.patch_size = cfg.patch_size
    self.strides = tuple(s for _, s in layout)
    self.colour_gain = float(cfg.get("patch_colour_gain", 0.0)) if layout else 0.0
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, (3, 3), strides=stride, padding="SAME", dtype=dtype,
                 param_dtype=jnp.float32, kernel_metadata=logical_axes(None, None, None, None),
                 bias_metadata=logical_axes(None), rngs=rngs)
        for c_in, c_out, stride in zip(channels[:-1], channels[1:], self.strides)])

  def __call__(self, pixels: jax.Array, real_hw: jax.Array) -> jax.Array:
    """pixels [N, H, W, 3], real_hw [N, 2] (0 for a padding frame) -> [N, H/p, W/p, features]."""
    rows, cols = pixels.shape[1] // self.patch_size, pixels.shape[2] // self.patch_size
    x, halvings = pixels, 0
    for conv, stride in zip(self.convs, self.strides):
      x = jax.nn.gelu(conv(x))  # [N, H / 2^halvings, W / 2^halvings, C_i]
      halvings += stride == 2
      real = ((jnp.arange(x.shape[1])[None, :, None] < (real_hw[:, None, 0:1] >> halvings))
              & (jnp.arange(x.shape[2])[None, None, :] < (real_hw[:, None, 1:2] >> halvings)))
      x = x * real[..., None].astype(x.dtype)
    x = _patch_grid(x, 1, rows, cols)
    if not self.colour_gain:
      return x
    # Padding pixels are zeros (packing fills buffers with them), so their mean colour is zero.
    p = self.patch_size
    colour = pixels.reshape(-1, rows, p, cols, p, 3).mean((2, 4))  # [N, rows, cols, 3]
    return jnp.concatenate([x, (self.colour_gain * colour).astype(x.dtype)], axis=-1)


def conv_layout(cfg, modality: str = "image") -> tuple[tuple[int, int], ...]:
  """(output channels, stride) of each 3x3 convolution of the image or video stem's
  PixelPatches; () = the linear patch embedding.

  From config.model.{image,video}_conv_channels and _conv_strides (empty strides = 2 for every
  convolution). The video stem uses the image stem's layout unless video_conv_channels is set.
  """
  if modality not in ("image", "video"):
    raise ValueError(f"conv_layout: pixel stems are 'image' and 'video', not {modality!r}")
  if modality == "video" and not cfg.get("video_conv_channels", ()):
    modality = "image"
  channels = tuple(int(c) for c in cfg.get(f"{modality}_conv_channels", ()) or ())
  strides = tuple(int(s) for s in cfg.get(f"{modality}_conv_strides", ()) or ())
  return tuple(zip(channels, strides or (2,) * len(channels)))


def patch_features(cfg, modality: str) -> int:
  """Features of one frame's p x p patch that the image or video stem embeds linearly: p*p*3
  pixels, or (p / 2^k)^2 x C conv outputs (k stride-2 convolutions, C the last one's channels),
  plus 3 for the mean colour when patch_colour_gain > 0."""
  layout = conv_layout(cfg, modality)
  if not layout:
    return cfg.patch_size ** 2 * 3
  q = cfg.patch_size >> [s for _, s in layout].count(2)  # patch side on the convolved grid
  return q * q * layout[-1][0] + (3 if cfg.get("patch_colour_gain", 0.0) else 0)


def _patch_grid(x: jax.Array, lead: int, rows: int, cols: int) -> jax.Array:
  """[*L, rows * q, cols * q, C] -> [*L, rows, cols, q * q * C]: the features of each patch,
  (row, col, channel)-major, where `lead` = len(L)."""
  shape = x.shape[:lead]
  q = x.shape[lead] // rows
  x = x.reshape(*shape, rows, q, cols, q, x.shape[-1])
  order = tuple(range(lead)) + tuple(lead + i for i in (0, 2, 1, 3, 4))
  return x.transpose(order).reshape(*shape, rows, cols, -1)


class ImageStem(nnx.Module):
  """Images [B, Pi, H, W, 3] -> one token per p x p patch (a linear embedding of its
  PixelPatches features: pixels, or conv outputs when configured) + learned row and column
  positions; patches outside the real (height, width) in `image_hw` are masked out."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.patch_size = cfg.patch_size
    p = cfg.patch_size
    hmax, wmax = cfg.max_image_size
    self.pixel_patches = PixelPatches(cfg, "image", dtype, rngs=rngs)
    self.patch_embed = _patch_embed(self.pixel_patches.features, cfg, dtype, rngs)
    self.row_positions = _table(rngs, (hmax // p, cfg.width), "positions", "embed")
    self.col_positions = _table(rngs, (wmax // p, cfg.width), "positions", "embed")
    self.modality = _table(rngs, (cfg.width,), "embed")

  def __call__(self, side):
    images, hw, part = side["image"], side["image_hw"], side["image_part"]
    batch, slots, height, width, channels = images.shape
    p = self.patch_size
    rows, cols = height // p, width // p
    x = images.astype(self.dtype).reshape(batch * slots, height, width, channels)
    x = self.pixel_patches(x, hw.reshape(batch * slots, 2))  # [B * Pi, rows, cols, F]
    x = self.patch_embed(x.reshape(batch, slots, rows, cols, -1))  # [B, Pi, rows, cols, D]
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
  embedding of its frames' PixelPatches features side by side) + learned temporal, row
  and column positions; tubelets starting at or after `video_frames` are masked out."""

  def __init__(self, cfg, dtype, *, rngs: nnx.Rngs):
    self.dtype = dtype
    self.patch_size = cfg.patch_size
    self.tubelet_frames = cfg.tubelet_frames
    p, tf = cfg.patch_size, cfg.tubelet_frames
    hv, wv = cfg.video_size
    self.pixel_patches = PixelPatches(cfg, "video", dtype, rngs=rngs)
    self.patch_embed = _patch_embed(tf * self.pixel_patches.features, cfg, dtype, rngs)
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
    real = jnp.arange(n_frames) < frames[..., None]  # [B, Pv, T]
    real_hw = jnp.where(real[..., None], jnp.array([height, width], jnp.int32), 0)
    x = self.pixel_patches(video.astype(self.dtype).reshape(-1, height, width, channels),
                           real_hw.reshape(-1, 2))  # [B * Pv * T, rows, cols, F]
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
