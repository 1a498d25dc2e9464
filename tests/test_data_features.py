"""Featurisation: log-mel against an independent reference, resampling, WAV/GIF/.npy/folder
decoding, image resizing, limits, ids, and packing arbitrary raw inputs for evaluation."""
import math
import os

import numpy as np
import pytest
from PIL import Image
from scipy import signal
from scipy.io import wavfile

from configs import common
from gemb.data import audio, features, image, packing, video

MODEL = common.model("tiny")
CFG = features.FeatureConfig.from_config(MODEL)


# ---------------------------------------------------------------- audio

def _reference_mel(hz: float) -> float:
  """Slaney's mel scale written out: 3 mels per 200 Hz below 1 kHz, 27 mels per factor 6.4
  above."""
  if hz < 1000.0:
    return 3.0 * hz / 200.0
  return 15.0 + 27.0 * math.log(hz / 1000.0) / math.log(6.4)


def _reference_hz(mel: float) -> float:
  if mel < 15.0:
    return 200.0 * mel / 3.0
  return 1000.0 * 6.4 ** ((mel - 15.0) / 27.0)


def _reference_filterbank(sample_rate, n_fft, n_mels, fmin, fmax):
  """Triangles with unit area in Hz, built filter by filter and bin by bin."""
  lo, hi = _reference_mel(fmin), _reference_mel(fmax)
  edges = [_reference_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
  bank = np.zeros((n_fft // 2 + 1, n_mels))
  for m in range(n_mels):
    left, centre, right = edges[m], edges[m + 1], edges[m + 2]
    for k in range(n_fft // 2 + 1):
      f = k * sample_rate / n_fft
      if left < f <= centre:
        bank[k, m] = (f - left) / (centre - left)
      elif centre < f < right:
        bank[k, m] = (right - f) / (right - centre)
    bank[:, m] *= 2.0 / (right - left)
  return bank


def test_mel_scale_hand_values():
  np.testing.assert_allclose(audio.hz_to_mel([0.0, 500.0, 1000.0, 6400.0]), [0, 7.5, 15, 42])
  np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel([123.0, 3000.0])), [123.0, 3000.0])


def test_log_mel_matches_scipy_stft_and_reference_filterbank():
  rng = np.random.default_rng(0)
  sr, n_fft, n_mels = 16000, 512, 32
  t = np.arange(int(0.5 * sr)) / sr
  wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
  got = audio.log_mel(wave, sr, n_mels, window_ms=25, hop_ms=10, n_fft=n_fft, fmin=0.0,
                      fmax=8000.0, log_floor=1e-5)
  # Independent reference: scipy's STFT (its 'spectrum' scaling divides by the window's sum).
  win = signal.get_window("hann", 400)  # periodic Hann
  _, _, spec = signal.stft(wave.astype(np.float64), fs=sr, window=win, nperseg=400,
                           noverlap=400 - 160, nfft=n_fft, boundary=None, padded=False,
                           detrend=False, scaling="spectrum")
  power = np.abs(spec.T * win.sum()) ** 2  # [F, n_fft // 2 + 1]
  expected = np.log(np.maximum(power @ _reference_filterbank(sr, n_fft, n_mels, 0.0, 8000.0),
                               1e-5))
  assert got.shape == expected.shape == (1 + (wave.size - 400) // 160, n_mels)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_log_mel_of_a_tone_peaks_in_the_band_of_its_pitch():
  sr = 16000
  t = np.arange(sr // 2) / sr
  fb = audio.mel_filterbank(sr, 512, 32, 0.0, 8000.0)
  for pitch in (300.0, 1500.0, 5000.0):
    spec = audio.log_mel(np.sin(2 * np.pi * pitch * t), sr, 32, 25, 10, 512, 0.0, 8000.0, 1e-5)
    pitch_bin = int(round(pitch * 512 / sr))
    assert spec.mean(0).argmax() == fb[pitch_bin].argmax()


def test_short_audio_gives_one_zero_padded_frame_and_silence_hits_the_floor():
  spec = audio.log_mel(np.zeros(100, np.float32), 16000, 32, 25, 10, 512, 0.0, 8000.0, 1e-5)
  assert spec.shape == (1, 32)
  np.testing.assert_allclose(spec, np.log(1e-5), rtol=1e-6)


def test_resample_reproduces_a_sine_at_the_new_rate():
  t8 = np.arange(8000) / 8000
  t16 = np.arange(16000) / 16000
  got = audio.resample(np.sin(2 * np.pi * 300 * t8).astype(np.float32), 8000, 16000)
  assert got.shape == (16000,)
  inner = slice(200, -200)  # away from the filter's edge effects
  np.testing.assert_allclose(got[inner], np.sin(2 * np.pi * 300 * t16)[inner], atol=2e-3)


@pytest.mark.parametrize("dtype,scale", [(np.int16, 32768.0), (np.int32, 2.0**31),
                                         (np.float32, 1.0)])
def test_wav_decoding_scales_to_unit_range_and_averages_channels(tmp_path, dtype, scale):
  stereo = np.stack([np.linspace(-0.5, 0.5, 800), np.linspace(0.25, 0.25, 800)], axis=1)
  data = (stereo * scale).astype(dtype) if dtype != np.float32 else stereo.astype(dtype)
  wavfile.write(tmp_path / "a.wav", 16000, data)
  wave, rate = audio.load_wav(str(tmp_path / "a.wav"))
  assert rate == 16000 and wave.dtype == np.float32 and wave.shape == (800,)
  np.testing.assert_allclose(wave, stereo.mean(axis=1), atol=1e-4)


def test_uint8_wav_is_centred(tmp_path):
  wavfile.write(tmp_path / "a.wav", 8000, np.array([0, 128, 255], np.uint8))
  np.testing.assert_allclose(audio.load_wav(str(tmp_path / "a.wav"))[0], [-1, 0, 127 / 128])


def test_audio_over_the_limit_is_cut_or_rejected():
  long = np.zeros(160 * (MODEL.max_audio_frames + 5), np.float32)  # 10 ms hop: too many frames
  cut = features.featurise_part({"audio": long}, CFG)["audio"]
  assert cut.shape == (MODEL.max_audio_frames, MODEL.n_mels)
  strict = features.FeatureConfig.from_config(MODEL, truncate=False)
  with pytest.raises(ValueError, match=f"max_audio_frames={MODEL.max_audio_frames}"):
    features.featurise_part({"audio": long}, strict)
  with pytest.raises(ValueError, match="NaN"):
    features.featurise_part({"audio": np.full(800, np.nan, np.float32)}, CFG)


def test_audio_standardisation_uses_the_configured_statistics():
  wave = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
  raw = features.featurise_part({"audio": wave}, CFG)["audio"]
  assert CFG.audio_mean == 0.0 and CFG.audio_std == 1.0  # default: log-mels as they are
  np.testing.assert_allclose(raw, audio.log_mel(
      wave, CFG.sample_rate, CFG.n_mels, CFG.audio_window_ms, CFG.audio_hop_ms, CFG.audio_n_fft,
      CFG.audio_fmin, CFG.audio_fmax, CFG.audio_log_floor), rtol=1e-6)
  scaled_cfg = features.FeatureConfig.from_config({**MODEL, "audio_mean": -6.0, "audio_std": 3.0})
  scaled = features.featurise_part({"audio": wave}, scaled_cfg)["audio"]
  np.testing.assert_allclose(scaled, (raw + 6.0) / 3.0, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- images

def test_fit_size_keeps_aspect_and_patch_multiples():
  assert image.fit_size(32, 32, (32, 32), 8) == (32, 32)
  assert image.fit_size(64, 128, (32, 32), 8) == (16, 32)  # scaled by 1/4, aspect kept
  assert image.fit_size(20, 30, (32, 32), 8) == (24, 32)  # not scaled; nearest patch multiple
  assert image.fit_size(19, 30, (32, 32), 8) == (16, 32)
  assert image.fit_size(3, 1000, (32, 32), 8) == (8, 32)  # at least one patch


def test_image_featurisation_is_pillow_resize_then_normalise():
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
  got = image.featurise_image(pixels, (32, 32), 8, 0.5, 0.5)
  resized = np.asarray(Image.fromarray(pixels).resize((24, 32), Image.BICUBIC), np.float32)
  np.testing.assert_allclose(got, (resized / 255 - 0.5) / 0.5, atol=1e-6)
  assert got.min() >= -1 and got.max() <= 1
  grey = image.check_pixels(pixels[..., 0])
  np.testing.assert_array_equal(grey[..., 2], pixels[..., 0])


def test_corrupt_image_file_is_a_decode_error(tmp_path):
  (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError, match="cannot decode image"):
    features.load_part({"image": "bad.png"}, CFG, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    features.load_part({"image": "gone.png"}, CFG, str(tmp_path))


# ---------------------------------------------------------------- video

def _numbered_frames(n, size=16):
  """Frame i is uniformly grey level 10 * i, so a decoded frame tells its index."""
  return np.stack([np.full((size, size, 3), 10 * i, np.uint8) for i in range(n)])


def _frame_numbers(frames):
  return [int(round(f.mean() / 10)) for f in frames]


def test_gif_is_sampled_at_the_model_fps(tmp_path):
  frames = _numbered_frames(20)  # 20 frames of 50 ms: 1 s at 20 fps
  pil = [Image.fromarray(f) for f in frames]
  pil[0].save(tmp_path / "v.gif", save_all=True, append_images=pil[1:], duration=50, loop=0)
  got = video.load_video(str(tmp_path / "v.gif"), fps=8.0, max_frames=100)
  # Frame centres at (k + 1/2) / 8 s fall in 50 ms frames floor((k + 1/2) * 2.5).
  assert _frame_numbers(got) == [int((k + 0.5) * 2.5) for k in range(8)]
  assert _frame_numbers(video.load_video(str(tmp_path / "v.gif"), 8.0, max_frames=3)) == [1, 3, 6]


def test_mp4_is_sampled_by_timestamps(tmp_path):
  import av  # pylint: disable=g-import-not-at-top  (installed by requirements.txt)
  with av.open(str(tmp_path / "v.mp4"), "w") as container:
    stream = container.add_stream("mpeg4", rate=20)  # 20 fps, like the GIF above
    stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
    for frame in _numbered_frames(20):
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  got = video.load_video(str(tmp_path / "v.mp4"), fps=8.0, max_frames=100)
  assert _frame_numbers(got) == [int((k + 0.5) * 2.5) for k in range(8)]


def test_npy_and_frame_folder_videos(tmp_path):
  frames = _numbered_frames(5)
  np.save(tmp_path / "v.npy", frames)
  np.testing.assert_array_equal(video.load_video(str(tmp_path / "v.npy"), 8.0, 4), frames[:4])
  os.mkdir(tmp_path / "frames")
  for i, f in enumerate(frames):
    Image.fromarray(f).save(tmp_path / "frames" / f"{i:03d}.png")
  np.testing.assert_array_equal(video.load_video(str(tmp_path / "frames"), 8.0, 10), frames)
  with pytest.raises(ValueError, match="unknown video format"):
    video.load_video(str(tmp_path / "v.txt"), 8.0, 4)


def test_video_featurisation_resizes_frames_and_respects_the_frame_limit():
  frames = _numbered_frames(MODEL.max_video_frames + 4, size=20)
  got = features.featurise_part({"video": frames}, CFG)["video"]
  assert got.shape == (MODEL.max_video_frames, *MODEL.video_size, 3)
  np.testing.assert_allclose(got[3], (30 / 255 - 0.5) / 0.5, atol=1e-6)  # uniform frames
  strict = features.FeatureConfig.from_config(MODEL, truncate=False)
  with pytest.raises(ValueError, match=f"max_video_frames={MODEL.max_video_frames}"):
    features.featurise_part({"video": frames}, strict)


# ---------------------------------------------------------------- text, ids, packing

def test_text_limits_and_empty_text():
  limit = MODEL.max_text_tokens
  text = "é" * limit  # 2 bytes each: twice the limit
  ids = features.featurise_part({"text": text}, CFG)["text"]
  np.testing.assert_array_equal(ids, (np.frombuffer(text.encode(), np.uint8)[:limit] + 3))
  with pytest.raises(ValueError, match=f"{2 * limit} tokens > config.model.max_text_tokens="
                                       f"{limit}"):
    features.featurise_part({"text": text}, features.FeatureConfig.from_config(MODEL, False))
  with pytest.raises(features.BadRecordError, match=r"q\[1\]\.text: empty text"):
    features.featurise_input([{"text": "ok"}, {"text": ""}], CFG, "q")


def test_task_string_goes_into_the_first_text_part_only():
  parts = [{"image": "x.png"}, {"text": "what colour?"}, {"text": "second"}]
  got = features.with_task_string(parts, "answer the question")
  assert got[1] == {"text": "task: answer the question | query: what colour?"}
  assert got[0] == parts[0] and got[2] == parts[2] and parts[1] == {"text": "what colour?"}


def test_content_ids_are_equal_exactly_for_equal_content():
  a = [{"text": "red"}, {"image": np.zeros((8, 8, 3), np.uint8)}]
  same = [{"text": "red"}, {"image": np.zeros((8, 8, 3), np.uint8)}]
  others = [[{"text": "red"}], [{"text": "red"}, {"image": np.ones((8, 8, 3), np.uint8)}],
            [{"text": "red"}, {"image": np.zeros((8, 4, 6), np.uint8)}],
            [{"image": np.zeros((8, 8, 3), np.uint8)}, {"text": "red"}]]
  assert features.content_id(a) == features.content_id(same)
  ids = {features.content_id(p) for p in [a, *others]}
  assert len(ids) == 5 and all(0 <= i < 2**31 for i in ids)
  assert features.key_id("image:1.2") == features.key_id("image:1.2")
  assert features.key_id("image:1.2") != features.key_id("image:1.3")


def test_pack_raw_inputs_equals_featurise_then_pack(tmp_path):
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
  Image.fromarray(img).save(tmp_path / "img.png")
  wave = (0.1 * rng.standard_normal(4000)).astype(np.float32)
  inputs = [[{"text": "what is this?"}, {"image": "img.png"}],
            [{"audio": wave}],
            [{"text": "just text"}]]
  side = features.pack_raw_inputs(inputs, MODEL, task_string="answer", root=str(tmp_path))
  layout = CFG.layout({"text": 1, "image": 1, "audio": 1})
  expected = packing.pack_inputs([
      [{"text": CFG.text_tokenizer.encode("task: answer | query: what is this?")},
       {"image": image.featurise_image(img, (32, 32), 8, 0.5, 0.5)}],
      [{"audio": audio.log_mel(wave, 16000, 32, 25, 10, 512, 0.0, 8000.0, 1e-5)}],
      [{"text": CFG.text_tokenizer.encode("task: answer | query: just text")}]], layout)
  assert side.keys() == expected.keys()
  for key in side:
    np.testing.assert_allclose(side[key], expected[key], err_msg=key)
  with pytest.raises(features.BadRecordError, match=r"input 0\[1\]\.image"):
    features.pack_raw_inputs([[{"text": "x"}, {"image": "missing.png"}]], MODEL,
                             root=str(tmp_path))
