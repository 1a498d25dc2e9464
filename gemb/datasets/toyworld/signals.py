"""ToyWorld renderers for pixels and sound: images, videos, audio. Vectorised numpy.

Images: a background (random dark tint plus a linear brightness gradient), each object a
saturated colour (jittered) filling its shape, centred on its grid cell (jittered), then
Gaussian pixel noise. Videos: the same, each object travelling `motion_extent` of the frame
in its motion direction, centred on its cell. Audio: each object sounds a tone whose pitch
is set by its shape, whose harmonics (timbre) by its colour, and whose pulse rate by its
size; the mix is scaled to a random peak and gets Gaussian noise.

Every renderer draws its nuisances from the `rng` it is given, in a fixed order, so the same
scene with the same rng state renders the same, and a hard negative rendered from the same
rng state differs from the positive only where the changed attribute shows.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from gemb.datasets.toyworld.scenes import COLOURS, DEFAULT_CONFIG, GRID, Scene, WorldConfig

COLOUR_RGB = np.array([  # [len(COLOURS), 3], saturated and far apart
    (225, 35, 35),    # red
    (245, 140, 20),   # orange
    (235, 225, 40),   # yellow
    (40, 190, 50),    # green
    (30, 205, 215),   # cyan
    (40, 70, 235),    # blue
    (155, 50, 215),   # purple
    (240, 240, 240),  # white
], np.float32)
assert len(COLOUR_RGB) == len(COLOURS)

# Unit displacement per motion (dy, dx) in image coordinates (y grows downwards).
MOTION_VECTORS = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], np.float32)


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y [H, 1], x [1, W]), float32."""
  return (np.arange(h, dtype=np.float32)[:, None] + 0.5,
          np.arange(w, dtype=np.float32)[None, :] + 0.5)


def shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
  """Boolean mask of a shape of half-extent r at offsets (dy, dx) from its centre."""
  ay, ax = np.abs(dy), np.abs(dx)
  if shape == 0:  # square
    return (ay <= r) & (ax <= r)
  if shape == 1:  # circle
    return dy * dy + dx * dx <= r * r
  if shape == 2:  # triangle, apex up
    return (ay <= r) & (ax <= 0.5 * (dy + r))
  if shape == 3:  # cross
    t = max(r / 3.0, 0.75)
    return ((ax <= t) & (ay <= r)) | ((ay <= t) & (ax <= r))
  if shape == 4:  # diamond
    return ay + ax <= r
  raise ValueError(f"unknown shape index {shape}")


def _background(rng: np.random.Generator, h: int, w: int, config: WorldConfig) -> np.ndarray:
  """float32 [H, W, 3]: a random dark tint plus a linear brightness gradient."""
  u = rng.random(4)
  angle = 2 * math.pi * float(u[3])
  y, x = _pixel_grid(h, w)
  ramp = (math.cos(angle) * config.background_gradient / h) * (y - 0.5 * h) + (
      math.sin(angle) * config.background_gradient / w) * (x - 0.5 * w)  # [H, W]
  return ramp[..., None] + (u[:3] * config.background_max).astype(np.float32)


def _placement(obj, rng: np.random.Generator, h: int, w: int, config: WorldConfig):
  """(centre y, centre x, half-extent, rgb) of one object, nuisances included."""
  row, col = divmod(obj.position, GRID)
  u = 2 * rng.random(6) - 1  # 6 uniforms in [-1, 1): jitter of y, x, size, r, g, b
  cy = ((row + 0.5) / GRID + config.position_jitter * u[0]) * h
  cx = ((col + 0.5) / GRID + config.position_jitter * u[1]) * w
  r = config.object_scale[obj.size] * min(h, w) * (1 + config.size_jitter * u[2])
  rgb = COLOUR_RGB[obj.colour] + config.colour_jitter * u[3:]
  return float(cy), float(cx), float(r), rgb.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
  """float32 [2**20] fixed standard-normal samples. Noise is a slice at a random offset: the
  same distribution as fresh samples for a tenth of the cost, and still deterministic."""
  return np.random.default_rng(20240611).standard_normal(1 << 20, dtype=np.float32)


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
  """float32 noise of `shape` from the noise bank (at most 2**20 values)."""
  bank = _noise_bank()
  n = int(np.prod(shape))
  if n > bank.size:
    raise ValueError(f"noise of shape {shape} needs {n} values > the bank's {bank.size}")
  start = int(rng.integers(bank.size - n + 1))
  return (std * bank[start:start + n]).reshape(shape)


def _finish(pixels: np.ndarray, rng: np.random.Generator, config: WorldConfig) -> np.ndarray:
  """Adds pixel noise and rounds to uint8."""
  pixels += gaussian_noise(rng, pixels.shape, config.pixel_noise)
  np.clip(pixels, 0, 255, out=pixels)
  return np.rint(pixels, out=pixels).astype(np.uint8)


def render_image(scene: Scene, rng: np.random.Generator,
                 config: WorldConfig = DEFAULT_CONFIG) -> np.ndarray:
  """uint8 [H, W, 3] picture of the scene (H, W = config.image_size)."""
  h, w = config.image_size
  pixels = _background(rng, h, w, config)
  y, x = _pixel_grid(h, w)
  for obj in scene:
    cy, cx, r, rgb = _placement(obj, rng, h, w, config)
    pixels[shape_mask(obj.shape, y - cy, x - cx, r)] = rgb
  return _finish(pixels, rng, config)


def render_video(scene: Scene, rng: np.random.Generator,
                 config: WorldConfig = DEFAULT_CONFIG) -> np.ndarray:
  """uint8 [T, H, W, 3]: objects travel through their cell in their motion direction."""
  t = config.video_frames
  h, w = config.video_size
  pixels = np.repeat(_background(rng, h, w, config)[None], t, axis=0)  # [T, H, W, 3]
  y, x = _pixel_grid(h, w)
  progress = np.linspace(-0.5, 0.5, t, dtype=np.float32)[:, None, None]  # [T, 1, 1]
  for obj in scene:
    cy, cx, r, rgb = _placement(obj, rng, h, w, config)
    vy, vx = MOTION_VECTORS[obj.motion] * config.motion_extent
    dy = y[None] - (cy + progress * vy * h)  # [T, H, 1]
    dx = x[None] - (cx + progress * vx * w)  # [T, 1, W]
    pixels[shape_mask(obj.shape, dy, dx, r)] = rgb
  return _finish(pixels, rng, config)


@functools.lru_cache(maxsize=4)
def _time_axis(n: int, sample_rate: int) -> np.ndarray:
  return (np.arange(n, dtype=np.float64) / sample_rate).astype(np.float32)


def object_sound_spec(obj, config: WorldConfig = DEFAULT_CONFIG) -> tuple[float, np.ndarray, float]:
  """(pitch Hz, harmonic amplitudes [1 + len(harmonic_gain)], pulse Hz) before nuisances.

  Pitch comes from the shape, timbre from the colour (bit j of the colour index switches
  harmonic j + 2 on: red is a pure tone, white has every harmonic), pulse rate from the size.
  """
  bits = [(obj.colour >> j) & 1 for j in range(len(config.harmonic_gain))]
  amps = np.array([1.0] + [g * b for g, b in zip(config.harmonic_gain, bits)], np.float32)
  return config.pitch_hz[obj.shape], amps, config.pulse_hz[obj.size]


def render_audio(scene: Scene, rng: np.random.Generator,
                 config: WorldConfig = DEFAULT_CONFIG) -> np.ndarray:
  """float32 [N] mono waveform in [-1, 1] at config.sample_rate, N = rate * audio_seconds."""
  n = int(round(config.sample_rate * config.audio_seconds))
  t = _time_axis(n, config.sample_rate)  # float32 [N]; phase error < 0.01 rad over 1 s
  mix = np.zeros(n, np.float32)
  for obj in scene:
    pitch, amps, pulse = object_sound_spec(obj, config)
    u = rng.random(len(amps) + 3)  # detune, loudness, envelope phase, harmonic phases
    pitch *= 1 + config.detune * (2 * u[0] - 1)
    loudness = 0.7 + 0.3 * u[1]
    on = np.flatnonzero(amps)
    freqs = (2 * np.pi * pitch * (on + 1)).astype(np.float32)
    phases = (2 * np.pi * u[3:][on]).astype(np.float32)
    tone = amps[on] @ np.sin(freqs[:, None] * t[None] + phases[:, None])  # [N]
    envelope = 0.5 - 0.5 * np.cos(np.float32(2 * np.pi * pulse) * t + np.float32(2 * np.pi * u[2]))
    mix += loudness * envelope * tone  # pulses at `pulse` Hz
  peak = np.abs(mix).max()
  if peak > 0:
    lo, hi = config.audio_gain
    mix *= np.float32((lo + (hi - lo) * rng.random()) / peak)
  mix += gaussian_noise(rng, (n,), config.audio_noise)
  return np.clip(mix, -1.0, 1.0)
