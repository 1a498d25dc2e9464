"""JSONL manifests: round trip through files, layout scan, errors naming line and field, and
the shipped example manifest."""
import json
import os

import numpy as np
import pytest

from configs import common
from gemb.data import features
from gemb.datasets import make_example_manifest, manifest, toyworld

MODEL = common.model("tiny")
CFG = features.FeatureConfig.from_config(MODEL)


def _raw_examples():
  rng = np.random.default_rng(0)
  return [
      {"task": "a",
       "query": [{"text": "ünï 1"}, {"image": rng.integers(0, 256, (9, 7, 3), np.uint8)}],
       "positive": [{"audio": rng.uniform(-1, 1, 999).astype(np.float32)}], "label": np.int64(3)},
      {"task": "a", "query": [{"text": "two"}],
       "positive": [{"video": rng.integers(0, 256, (3, 6, 5, 3), np.uint8)}, {"text": "x"}]},
      {"task": "b", "query": [{"text": "q"}], "positive": [{"text": "p"}],
       "negative": [{"image": rng.integers(0, 256, (4, 4, 3), np.uint8)}], "score": 2.5},
  ]


def _assert_parts_equal(got, expected):
  assert [features.modality_of(p) for p in got] == [features.modality_of(p) for p in expected]
  for g, e in zip(got, expected):
    (m,) = e
    if m == "text":
      assert g[m] == e[m]
    elif m == "audio":  # 16-bit WAV: rounded to multiples of 1 / 32768
      np.testing.assert_allclose(g[m], e[m], atol=0.5 / 32768 + 1e-9)
    else:
      np.testing.assert_array_equal(g[m], e[m])


def test_manifest_round_trip(tmp_path):
  examples = _raw_examples()
  path = str(tmp_path / "m.jsonl")
  manifest.write_manifest(path, examples, fps=8.0, video_format="npy")
  index = manifest.scan_manifest(path)
  assert sorted(index.tasks) == ["a", "b"] and index.bad_lines == ()
  read = [manifest.ManifestSource(index, "a", CFG)[i] for i in range(2)]
  read.append(manifest.ManifestSource(index, "b", CFG)[0])
  for got, expected in zip(read, examples):
    assert got["task"] == expected["task"]
    for side in ("query", "positive", "negative"):
      assert (side in got) == (side in expected)
      if side in expected:
        _assert_parts_equal(got[side], expected[side])
  assert read[0]["label"] == 3 and read[2]["score"] == 2.5
  assert read[1]["origin"] == f"{path}:2"
  # Paths are relative to the manifest: moving the folder keeps it readable.
  os.rename(tmp_path, str(tmp_path) + "_moved")
  moved = manifest.scan_manifest(str(tmp_path) + "_moved/m.jsonl")
  _assert_parts_equal(manifest.ManifestSource(moved, "b", CFG)[0]["negative"],
                      examples[2]["negative"])


def test_gif_video_round_trip_keeps_frames(tmp_path):
  clip = toyworld.example("text_to_video", "train", 0)["positive"][0]["video"]  # [8, 32, 32, 3]
  path = str(tmp_path / "m.jsonl")
  manifest.write_manifest(path, [{"task": "v", "query": [{"text": "q"}],
                                  "positive": [{"video": clip}]}], fps=8.0)
  got = manifest.ManifestSource(manifest.scan_manifest(path), "v", CFG)[0]["positive"][0]["video"]
  assert got.shape == clip.shape  # every frame sampled once at the model fps
  assert np.abs(got.astype(int) - clip).mean() < 8  # GIF palettes are lossy


def _write_lines(tmp_path, lines):
  path = tmp_path / "m.jsonl"
  path.write_text("\n".join(json.dumps(l) if not isinstance(l, str) else l for l in lines) + "\n")
  return str(path)


def test_scan_finds_each_task_side_layout(tmp_path):
  path = _write_lines(tmp_path, [
      {"task": "t", "query": [{"text": "a"}], "positive": [{"image": "1.png"}]},
      {"task": "t", "query": [{"image": "2.png"}, {"text": "b"}, {"text": "c"}],
       "positive": [{"image": "1.png"}, {"image": "3.png"}]},
      "",
      {"task": "u", "query": [{"audio": "a.wav"}], "positive": [{"text": "p"}],
       "negative": [{"text": "n"}]},
  ])
  index = manifest.scan_manifest(path)
  t, u = index.tasks["t"], index.tasks["u"]
  assert t.max_parts == {"query": {"text": 2, "image": 1}, "positive": {"image": 2}}
  assert not t.has_negative and u.has_negative
  assert list(t.lines) == [1, 2] and list(u.lines) == [4]
  assert u.max_parts["negative"] == {"text": 1}


@pytest.mark.parametrize("line,message", [
    ("{not json", r"m.jsonl:2: Expecting property name"),
    ({"query": [{"text": "a"}], "positive": [{"text": "b"}]}, r"m.jsonl:2: field 'task'"),
    ({"task": "t", "query": [{"text": "a"}]}, r"m.jsonl:2: field 'positive' is missing"),
    ({"task": "t", "query": [], "positive": [{"text": "b"}]}, r"m.jsonl:2: field 'query' must"),
    ({"task": "t", "query": [{"smell": "a"}], "positive": [{"text": "b"}]},
     r"m.jsonl:2: query\[0\]: unknown modality 'smell'"),
    ({"task": "t", "query": [{"text": "a"}], "positive": [{"image": 3}]},
     r"m.jsonl:2: positive\[0\].image must be a file path"),
])
def test_bad_lines_raise_naming_the_line_or_are_skipped_and_counted(tmp_path, line, message):
  good = {"task": "t", "query": [{"text": "a"}], "positive": [{"text": "b"}]}
  path = _write_lines(tmp_path, [good, line, good])
  with pytest.raises(features.BadRecordError, match=message):
    manifest.scan_manifest(path)
  index = manifest.scan_manifest(path, on_bad_record="skip")
  assert len(index.bad_lines) == 1 and list(index.tasks["t"].lines) == [1, 3]


def test_a_task_needs_negatives_on_all_lines_or_none(tmp_path):
  path = _write_lines(tmp_path, [
      {"task": "t", "query": [{"text": "a"}], "positive": [{"text": "b"}]},
      {"task": "t", "query": [{"text": "a"}], "positive": [{"text": "b"}],
       "negative": [{"text": "c"}]}])
  with pytest.raises(features.BadRecordError, match="'negative' on line 2 but none on line 1"):
    manifest.scan_manifest(path)


@pytest.mark.filterwarnings("ignore::scipy.io.wavfile.WavFileWarning")
def test_missing_and_corrupt_files_name_the_line_and_field(tmp_path):
  (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
  path = _write_lines(tmp_path, [
      {"task": "t", "query": [{"text": "a"}], "positive": [{"text": "b"}, {"image": "gone.png"}]},
      {"task": "t", "query": [{"audio": "bad.wav"}], "positive": [{"text": "b"}]}])
  source = manifest.ManifestSource(manifest.scan_manifest(path), "t", CFG)
  with pytest.raises(features.BadRecordError,
                     match=r"m.jsonl:1 positive\[1\].image: image file .*gone.png' does not exist"):
    source[0]
  with pytest.raises(features.BadRecordError, match=r"m.jsonl:2 query\[0\].audio: cannot decode"):
    source[1]


_KIND = {"png": "image", "wav": "audio", "gif": "video"}


def test_shipped_example_manifest_is_small_and_up_to_date(tmp_path):
  shipped = make_example_manifest.DEFAULT_DIR
  size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(shipped) for f in fs)
  assert size < 1_000_000
  fresh = make_example_manifest.write(str(tmp_path))
  with open(fresh) as f, open(os.path.join(shipped, "manifest.jsonl")) as g:
    assert f.read() == g.read(), "run `python -m gemb.datasets.make_example_manifest`"
  names = sorted(os.listdir(tmp_path / "media"))
  assert names == sorted(os.listdir(os.path.join(shipped, "media")))
  for name in names:  # decoded, with room for last-bit float differences between CPUs
    fresh_part, shipped_part = (
        features.load_part({_KIND[name[-3:]]: os.path.join(folder, "media", name)}, CFG)
        for folder in (str(tmp_path), shipped))
    ((kind, a),), ((_, b),) = fresh_part.items(), shipped_part.items()
    difference = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert difference.mean() < {"image": 1.0, "audio": 2 / 32768, "video": 2.0}[kind], name
  index = manifest.scan_manifest(os.path.join(shipped, "manifest.jsonl"))
  assert set(index.tasks) == set(make_example_manifest.EXAMPLES)
  kinds = {m for t in index.tasks.values() for side in t.max_parts.values() for m in side}
  assert kinds == {"text", "image", "audio", "video"}
