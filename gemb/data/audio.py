"""Audio: file decoding (WAV, FLAC, OGG, MP3, ...), resampling to the model's rate, log-mel
spectrogram (numpy).

The log-mel front end, with every number from config.model:

  frames   window_ms (25) long, hop_ms (10) apart, no centre padding: a wave of N samples has
           1 + (N - window) // hop frames (one frame, zero-padded, if N < window).
  STFT     periodic Hann window, |rfft(frame, n_fft)|^2 (power spectrum, n_fft // 2 + 1 bins).
  mel      Slaney mel scale (linear below 1 kHz, logarithmic above) with Slaney area
           normalisation, triangles between fmin and fmax: the librosa/Whisper convention.
  log      natural log of max(mel energy, log_floor).

Patchification of the [F, n_mels] spectrogram happens in the model's audio stem.
"""
from __future__ import annotations

import functools
import math

import numpy as np

_SLANEY_BREAK_HZ = 1000.0  # linear below, logarithmic above
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_STEP = math.log(6.4) / 27.0  # log-Hz per mel above the break


def load_wav(path: str) -> tuple[np.ndarray, int]:
  """Decodes a WAV file to (float32[N] mono in [-1, 1], sample rate). Channels are averaged."""
  from scipy.io import wavfile  # pylint: disable=g-import-not-at-top  (slow import, keep lazy)
  rate, data = wavfile.read(path)
  return to_float_mono(data), int(rate)


def load_audio(source) -> tuple[np.ndarray, int]:
  """Decodes an audio file (a path, or a binary file object such as io.BytesIO) to (float32[N]
  mono in [-1, 1], sample rate): WAV paths with scipy, everything else libsndfile reads (FLAC,
  OGG/Vorbis, Opus, MP3, AIFF, ...) with soundfile."""
  if isinstance(source, str) and source.lower().endswith(".wav"):
    return load_wav(source)
  import soundfile  # pylint: disable=g-import-not-at-top  (optional until a non-WAV file comes)
  data, rate = soundfile.read(source, dtype="float32", always_2d=True)
  return to_float_mono(data), int(rate)


def to_float_mono(data: np.ndarray) -> np.ndarray:
  """int PCM or float samples [N] or [N, C] -> float32[N] in [-1, 1] (channels averaged)."""
  data = np.asarray(data)
  if data.dtype == np.uint8:  # 8-bit WAV is unsigned
    data = (data.astype(np.float32) - 128.0) / 128.0
  elif np.issubdtype(data.dtype, np.integer):
    data = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
  else:
    data = data.astype(np.float32)
  if data.ndim == 2:
    data = data.mean(axis=1)
  if data.ndim != 1:
    raise ValueError(f"audio must be [N] or [N, channels], got shape {list(data.shape)}")
  return data


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """Polyphase resampling (scipy.signal.resample_poly) from one integer rate to another."""
  if from_rate == to_rate:
    return wave
  from scipy import signal  # pylint: disable=g-import-not-at-top  (slow import, keep lazy)
  g = math.gcd(from_rate, to_rate)
  return signal.resample_poly(wave, to_rate // g, from_rate // g).astype(np.float32)


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
  """Slaney mel scale."""
  hz = np.asarray(hz, np.float64)
  log_part = (_SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
              + np.log(np.maximum(hz, 1e-10) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP)
  return np.where(hz < _SLANEY_BREAK_HZ, hz / _SLANEY_HZ_PER_MEL, log_part)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  break_mel = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
  return np.where(mel < break_mel, mel * _SLANEY_HZ_PER_MEL,
                  _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (mel - break_mel)))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                   fmax: float) -> np.ndarray:
  """float32[n_fft // 2 + 1, n_mels]: Slaney-normalised triangular filters on the Slaney scale."""
  if not 0 <= fmin < fmax <= sample_rate / 2:
    raise ValueError(f"mel filterbank needs 0 <= audio_fmin < audio_fmax <= sample_rate / 2, got "
                     f"fmin={fmin}, fmax={fmax}, sample_rate={sample_rate}")
  bin_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # [K]
  edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [n_mels + 2]
  lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
  rising = (bin_hz[None] - lower) / (centre - lower)
  falling = (upper - bin_hz[None]) / (upper - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, K]
  weights *= (2.0 / (upper - lower))  # Slaney normalisation: each filter has unit area in Hz
  return weights.T.astype(np.float32)


def num_frames(num_samples: int, window: int, hop: int) -> int:
  return 1 + max(0, num_samples - window) // hop


def log_mel(wave: np.ndarray, sample_rate: int, n_mels: int, window_ms: float, hop_ms: float,
            n_fft: int, fmin: float, fmax: float, log_floor: float) -> np.ndarray:
  """float32[N] at `sample_rate` -> float32[F, n_mels] log-mel spectrogram (module docstring)."""
  window = int(round(sample_rate * window_ms / 1000))
  hop = int(round(sample_rate * hop_ms / 1000))
  if window > n_fft:
    raise ValueError(f"audio window of {window} samples is longer than audio_n_fft={n_fft}")
  # float64 throughout: numpy's float32 FFT is several times slower on CPU.
  wave = np.asarray(wave, np.float64)
  if wave.size < window:
    wave = np.pad(wave, (0, window - wave.size))
  f = num_frames(wave.size, window, hop)
  frames = np.lib.stride_tricks.sliding_window_view(wave, window)[::hop][:f]  # [F, window]
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic
  power = np.abs(np.fft.rfft(frames * hann, n=n_fft, axis=-1)) ** 2  # [F, n_fft // 2 + 1]
  # einsum, not `@`: multi-threaded BLAS on matrices this small can be 100x slower.
  mel = np.einsum("fk,km->fm", power, _filterbank(sample_rate, n_fft, n_mels, fmin, fmax))
  return np.log(np.maximum(mel, log_floor)).astype(np.float32)  # [F, n_mels]


@functools.lru_cache(maxsize=8)
def _filterbank(sample_rate, n_fft, n_mels, fmin, fmax) -> np.ndarray:
  return mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).astype(np.float64)


def max_samples(num_frames_: int, sample_rate: int, window_ms: float, hop_ms: float) -> int:
  """Samples needed for `num_frames_` frames: a longer wave can be cut here before the STFT."""
  window = int(round(sample_rate * window_ms / 1000))
  hop = int(round(sample_rate * hop_ms / 1000))
  return (num_frames_ - 1) * hop + window
