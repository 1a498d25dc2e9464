"""Video: decode (GIF, a folder of frames, .npy, .mp4 via av), sample at a fixed fps, resize.

Frames are sampled at the centres of the model's frame intervals, t_k = (k + 1/2) / fps, from
files that carry timing (GIF frame durations, mp4 timestamps). A .npy array [T, H, W, 3] uint8,
a folder of frames and an in-memory array are taken to be at the model's fps already.
Tubelets are cut by the model's video stem; this module produces float32[T, Hv, Wv, 3].
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageSequence

from gemb.data import image as image_lib

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def sample_times(durations_s: np.ndarray, fps: float, max_frames: int) -> np.ndarray:
  """Indices of the frames shown at t_k = (k + 1/2) / fps, k < max_frames, within the clip.

  Args:
    durations_s: float[T] display duration of each decoded frame, in seconds.
  Returns:
    int[K] frame indices, K <= max_frames.
  """
  ends = np.cumsum(durations_s)
  k = np.arange(max_frames)
  times = (k + 0.5) / fps
  times = times[times < ends[-1]] if ends.size else times[:0]
  return np.searchsorted(ends, times, side="right")


def _load_gif(path: str, fps: float, max_frames: int) -> np.ndarray:
  with Image.open(path) as gif:
    frames, durations = [], []
    for frame in ImageSequence.Iterator(gif):
      frames.append(np.asarray(frame.convert("RGB"), np.uint8))
      durations.append(frame.info.get("duration", 1000.0 / fps) / 1000.0)
  keep = sample_times(np.asarray(durations), fps, max_frames)
  return np.stack([frames[i] for i in keep]) if keep.size else np.zeros((0, 1, 1, 3), np.uint8)


def _load_mp4(path: str, fps: float, max_frames: int) -> np.ndarray:
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("decoding .mp4 needs the package 'av' (in requirements.txt); or "
                     "convert the clip to a GIF, a folder of frames or a .npy array") from e
  frames, starts = [], []
  with av.open(path) as container:
    for frame in container.decode(video=0):
      if frame.time is None:
        raise ValueError("the video stream has frames without timestamps")
      starts.append(float(frame.time))
      frames.append(frame.to_ndarray(format="rgb24"))
      if starts[-1] - starts[0] > (max_frames + 1) / fps:  # past the last sample time
        break
  if not frames:
    return np.zeros((0, 1, 1, 3), np.uint8)
  starts = np.asarray(starts) - starts[0]
  last = starts[-1] - starts[-2] if len(starts) > 1 else 1.0 / fps
  durations = np.diff(np.append(starts, starts[-1] + last))
  return np.stack([frames[i] for i in sample_times(durations, fps, max_frames)])


def _load_folder(path: str, max_frames: int) -> np.ndarray:
  names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
  if not names:
    raise ValueError(f"folder has no frames (files ending in {FRAME_EXTENSIONS})")
  frames = [image_lib.load_image(os.path.join(path, n)) for n in names[:max_frames]]
  if len({f.shape for f in frames}) > 1:
    raise ValueError(f"frames in the folder differ in size: {sorted({f.shape for f in frames})}")
  return np.stack(frames)


def load_video(path: str, fps: float, max_frames: int) -> np.ndarray:
  """Decodes up to `max_frames` frames at `fps` from a file or folder -> uint8[T, H, W, 3].

  Callers that must detect a clip longer than their limit pass limit + 1.
  """
  if os.path.isdir(path):
    return _load_folder(path, max_frames)
  lower = path.lower()
  if lower.endswith(".npy"):
    return np.array(np.load(path, allow_pickle=False, mmap_mode="r")[:max_frames])
  if lower.endswith(".gif"):
    return _load_gif(path, fps, max_frames)
  if lower.endswith((".mp4", ".webm", ".mov", ".mkv", ".avi")):
    return _load_mp4(path, fps, max_frames)
  raise ValueError("unknown video format; use a .gif, a .npy uint8 [T, H, W, 3] array, a "
                   "folder of frames, or .mp4")


def featurise_video(video: np.ndarray, size: tuple[int, int], mean: float,
                    std: float) -> np.ndarray:
  """uint8[T, H, W, 3] -> float32[T, Hv, Wv, 3]: each frame resized to `size`, normalised."""
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape[1:]:
    raise ValueError(f"video must be uint8 [T, H, W, 3], got {video.dtype}{list(video.shape)}")
  if video.shape[0] == 0:
    raise ValueError("video has no frames")
  frames = np.stack([image_lib.resize(np.ascontiguousarray(f), size) for f in video])
  return image_lib.normalise(frames, mean, std)
