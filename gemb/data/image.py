"""Images: decode (Pillow), resize to fit the model's limits, normalise.

Patchification happens in the model's image stem; this module produces float32[H, W, 3] with
H and W positive multiples of patch_size and at most max_image_size.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def load_image(path: str) -> np.ndarray:
  """Decodes an image file to uint8[H, W, 3] (RGB). Raises OSError/ValueError when unreadable."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"), np.uint8)


def fit_size(height: int, width: int, max_size: tuple[int, int],
             patch_size: int) -> tuple[int, int]:
  """The (h, w) an image is resized to: aspect ratio kept, never enlarged unless needed to reach
  a multiple of patch_size, each side a multiple of patch_size within max_size."""
  hmax, wmax = max_size
  scale = min(1.0, hmax / height, wmax / width)
  patches = lambda side, limit: int(np.clip(np.floor(side * scale / patch_size + 0.5), 1,
                                            limit // patch_size))  # nearest, halves up
  return patches(height, hmax) * patch_size, patches(width, wmax) * patch_size


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8[H, W, 3] -> uint8[h, w, 3] with antialiased bicubic resampling (Pillow)."""
  h, w = size
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC), np.uint8)


def normalise(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
  """uint8 pixels -> float32 (x / 255 - mean) / std."""
  return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def check_pixels(image: np.ndarray, what: str = "image") -> np.ndarray:
  """Checks a raw image is uint8[H, W, 3] (grey [H, W] and RGBA are converted)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{what} must be uint8 pixels, got {image.dtype}")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.ndim == 3 and image.shape[-1] == 4:
    image = image[..., :3]
  if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
    raise ValueError(f"{what} must be [H, W, 3] with H, W > 0, got shape {list(image.shape)}")
  return image


def featurise_image(image: np.ndarray, max_size: tuple[int, int], patch_size: int, mean: float,
                    std: float) -> np.ndarray:
  """uint8[H, W, 3] -> float32[h, w, 3] normalised, (h, w) = fit_size(H, W, ...)."""
  image = check_pixels(image)
  size = fit_size(image.shape[0], image.shape[1], max_size, patch_size)
  return normalise(resize(image, size), mean, std)
