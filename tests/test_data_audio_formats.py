"""Audio files beyond WAV (FLAC, OGG/Vorbis, MP3) decode to the same mono wave, in manifests too."""
import io
import json

import numpy as np
import pytest
import soundfile

from configs import common
from gemb.data import audio, features
from gemb.datasets import manifest

RATE = 22050
TIME = np.arange(RATE // 2) / RATE
# Two channels that differ, so averaging them is checked: 440 Hz left, 660 Hz right.
STEREO = np.stack([0.5 * np.sin(2 * np.pi * 440 * TIME), 0.3 * np.sin(2 * np.pi * 660 * TIME)],
                  axis=1).astype(np.float32)
MONO = STEREO.mean(axis=1)


def _correlation(wave: np.ndarray) -> float:
  n = min(len(wave), len(MONO))
  return float(np.corrcoef(wave[:n], MONO[:n])[0, 1])


@pytest.mark.parametrize("fmt, exact", [("FLAC", True), ("OGG", False), ("MP3", False)])
def test_compressed_audio_decodes_to_the_averaged_channels(tmp_path, fmt, exact):
  path = tmp_path / f"a.{fmt.lower()}"
  soundfile.write(path, STEREO, RATE, format=fmt)
  wave, rate = audio.load_audio(str(path))
  assert rate == RATE and wave.dtype == np.float32 and wave.ndim == 1
  if exact:  # lossless: the samples themselves, to 16-bit precision
    np.testing.assert_allclose(wave, MONO, atol=1e-4)
  else:  # lossy codecs (and MP3's encoder delay) keep the waveform, not every sample
    assert abs(len(wave) - len(MONO)) < 0.1 * len(MONO)
    assert _correlation(wave) > 0.99
  # The same bytes from memory (a dataset column holds bytes, not paths).
  from_bytes, _ = audio.load_audio(io.BytesIO(path.read_bytes()))
  np.testing.assert_array_equal(from_bytes, wave)


def test_a_manifest_reads_flac_resampled_to_the_model_rate(tmp_path):
  soundfile.write(tmp_path / "a.flac", STEREO, RATE, format="FLAC")
  line = {"task": "t", "query": [{"text": "a tone"}], "positive": [{"audio": "a.flac"}]}
  (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n")
  cfg = features.FeatureConfig.from_config(common.model("tiny"))
  index = manifest.scan_manifest(str(tmp_path / "m.jsonl"))
  wave = manifest.ManifestSource(index, "t", cfg)[0]["positive"][0]["audio"]
  want = audio.resample(MONO, RATE, features.RAW_AUDIO_RATE)
  assert wave.shape == want.shape
  np.testing.assert_allclose(wave, want, atol=1e-3)


def test_an_unreadable_audio_file_is_an_error_naming_it(tmp_path):
  (tmp_path / "bad.ogg").write_bytes(b"not an ogg file")
  cfg = features.FeatureConfig.from_config(common.model("tiny"))
  with pytest.raises(ValueError, match=r"cannot decode audio file .*bad.ogg"):
    features.load_part({"audio": "bad.ogg"}, cfg, str(tmp_path))
