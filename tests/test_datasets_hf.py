"""Hugging Face `datasets` sources (gemb/datasets/hf.py) on datasets this test writes."""
import io

import numpy as np
import pytest
import soundfile
from PIL import Image

from configs import common
from gemb.data import audio, features, pipeline
from gemb.datasets import hf

hf_datasets = pytest.importorskip("datasets")
MODEL = common.model("tiny")
FCFG = features.FeatureConfig.from_config(MODEL)
RNG = np.random.default_rng(0)
N = 12


def _png(i: int) -> bytes:
  pixels = np.zeros((16, 24, 3), np.uint8)
  pixels[:, : 2 * (i + 1)] = (20 * i, 255 - 20 * i, 7 * i)  # each image differs
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


def _flac(i: int) -> bytes:
  t = np.arange(8000) / 8000
  out = io.BytesIO()
  soundfile.write(out, (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 8000,
                  format="FLAC")
  return out.getvalue()


def _rows():
  return {"caption": [f"caption number {i}" for i in range(N)],
          "label": [i % 3 for i in range(N)],
          "image": [{"bytes": _png(i), "path": None} for i in range(N)],
          "sound": [{"bytes": _flac(i), "path": None} for i in range(N)],
          "meta": [{"title": f"title {i}"} for i in range(N)]}


def _dataset(rows):
  """The rows with an Image, a ClassLabel, a struct and an Audio column, as the Hub has them
  (Audio is cast, not encoded: writing it would need torchcodec)."""
  features = hf_datasets.Features({
      "caption": hf_datasets.Value("string"),
      "label": hf_datasets.ClassLabel(names=["circle", "square", "star"]),
      "image": hf_datasets.Image(),
      "sound": {"bytes": hf_datasets.Value("binary"), "path": hf_datasets.Value("string")},
      "meta": {"title": hf_datasets.Value("string")}})
  data = hf_datasets.Dataset.from_dict(rows, features=features)
  return data.cast_column("sound", hf_datasets.Audio())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  data = _dataset(_rows())
  data.save_to_disk(str(root / "saved"))
  data.to_parquet(str(root / "part.parquet"))
  hf_datasets.Dataset.from_dict({"q": [f"q{i}" for i in range(N)],
                                 "d": [f"d{i}" for i in range(N)]}).to_csv(str(root / "t.csv"))
  return root


def _data_cfg(root, **entries):
  return common.data(source="hf", hf={name: dict(entry) for name, entry in entries.items()})


def _source(entry, root):
  return hf.Dataset(_data_cfg(root, t=entry)).task("t", FCFG, "mixture").source


@pytest.mark.parametrize("path", ["saved", "part.parquet"])
def test_rows_become_parts_by_column(saved, path):
  source = _source(dict(path=str(saved / path), query="text:caption,image:image",
                        positive="text:label,audio:sound,text:meta/title",
                        cache_dir=str(saved / "cache")), saved)
  assert len(source) == N
  example = source[5]
  query, positive = example["query"], example["positive"]
  assert query[0] == {"text": "caption number 5"}
  np.testing.assert_array_equal(query[1]["image"], np.asarray(Image.open(io.BytesIO(_png(5)))))
  assert positive[0] == {"text": "star"}  # a ClassLabel gives its name (label 5 % 3 = 2)
  want = audio.resample(soundfile.read(io.BytesIO(_flac(5)), dtype="float32")[0], 8000,
                        features.RAW_AUDIO_RATE)
  np.testing.assert_allclose(positive[1]["audio"], want, atol=1e-6)
  assert positive[2] == {"text": "title 5"}


def test_a_hf_task_trains_through_the_pipeline_and_resumes_on_the_next_batch(saved):
  data = _data_cfg(saved, captions=dict(path=str(saved / "saved"), query="text:caption",
                                       positive="image:image"),
                   pairs=dict(path=str(saved / "t.csv"), query="text:q", positive="text:d",
                              cache_dir=str(saved / "cache")))
  mixture = {"captions": {"rate": 1.0, "batch_size": 4}, "pairs": {"rate": 1.0, "batch_size": 2}}
  assert pipeline.known_tasks({"data": data}) == ["captions", "pairs"]
  it = pipeline.make_iterator(data, MODEL, mixture)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  rest = [next(it) for _ in range(3)]
  it.close()
  again = pipeline.make_iterator(data, MODEL, mixture)
  again.set_state(state)
  resumed = [next(again) for _ in range(3)]
  again.close()
  assert {task for task, _ in first + rest} == {"captions", "pairs"}
  for (task, batch), (task2, batch2) in zip(rest, resumed):
    assert task == task2
    np.testing.assert_array_equal(batch["query_id"], batch2["query_id"])
    np.testing.assert_array_equal(batch["query"]["text_tokens"], batch2["query"]["text_tokens"])


def test_a_missing_value_is_a_bad_record_naming_the_row_and_column(saved):
  rows = _rows()
  rows["caption"][3] = None
  _dataset(rows).save_to_disk(str(saved / "holes"))
  source = _source(dict(path=str(saved / "holes"), query="text:caption", positive="image:image"),
                   saved)
  with pytest.raises(features.BadRecordError,
                     match=r"config.data.hf.t row 3 query text:caption: the value is missing"):
    source[3]
  data = _data_cfg(saved, t=dict(path=str(saved / "holes"), query="text:caption",
                                 positive="image:image"))
  data.on_bad_record = "skip"
  it = pipeline.make_iterator(data, MODEL, {"t": {"rate": 1.0, "batch_size": N}})
  next(it)  # row 3 is replaced by another row of the task, and counted
  assert it.metrics()["skipped/t"] >= 1
  it.close()


@pytest.mark.parametrize("entry, message", [
    (dict(path="nowhere/*.parquet", query="text:q", positive="text:d"),
     r"config.data.hf.t.path='nowhere/\*.parquet': no such file"),
    (dict(path="SAVED", query="text:nope", positive="image:image"),
     r"config.data.hf.t: columns \['nope'\] are not in"),
    (dict(path="SAVED", query="pixels:image", positive="text:caption"),
     r"config.data.hf.t.query='pixels:image': each part is 'modality:feature/path'"),
    (dict(path="SAVED", query="text:caption"), r"config.data.hf.t.positive is missing"),
    (dict(path="SAVED", query="text:caption", positive="text:caption", rows=3),
     r"config.data.hf.t has unknown keys \['rows'\]"),
])
def test_config_errors_name_the_key(saved, entry, message):
  if entry.get("path") == "SAVED":
    entry = dict(entry, path=str(saved / "saved"))
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    len(_source(entry, saved))


# Streaming: the same files read as a stream, in order, by position.


@pytest.fixture(scope="module")
def streamed(saved):
  """The rows in 3 parquet files (4 rows each, in order), with holes too, and as JSON lines."""
  root = saved / "streamed"
  for name, rows in (("p", _rows()), ("holes", dict(_rows(), caption=[
      None if i == 3 else f"caption number {i}" for i in range(N)]))):
    data = _dataset(rows)
    for k in range(3):
      data.shard(3, k, contiguous=True).to_parquet(str(root / name / f"{k}.parquet"))
  hf_datasets.Dataset.from_dict({"q": [f"q{i}" for i in range(N)],
                                 "d": [f"d{i}" for i in range(N)]}).to_json(str(root / "t.jsonl"))
  return root


def _stream(root, seed=0, **entry):
  entry = dict(dict(path=str(root / "p" / "*.parquet"), query="text:caption,image:image",
                    positive="text:label", streaming=True), **entry)
  data = _data_cfg(root, t=entry)
  data.seed = seed
  return hf.Dataset(data).task("t", FCFG, "mixture").source


def _captions(source, positions):
  return [source[p]["query"][0]["text"] for p in positions]


def test_an_unshuffled_stream_yields_the_random_access_rows_every_epoch(saved, streamed):
  stream = _stream(streamed, shuffle_buffer=0)
  rows = _source(dict(path=str(streamed / "p" / "*.parquet"), query="text:caption,image:image",
                      positive="text:label", cache_dir=str(saved / "cache")), saved)
  assert len(stream) == len(rows) == N
  for position in [*range(2 * N), 5, N + 1]:  # two epochs, then earlier rows again (reopens)
    got, want = stream[position], rows[position % N]
    assert got["query"][0] == want["query"][0] and got["positive"] == want["positive"]
    np.testing.assert_array_equal(got["query"][1]["image"], want["query"][1]["image"])
  json_stream = _stream(streamed, path=str(streamed / "t.jsonl"), query="text:q",
                        positive="text:d", shuffle_buffer=0)
  assert len(json_stream) == N  # counted in one pass
  assert [json_stream[p]["positive"][0]["text"] for p in (0, 11, 12)] == ["d0", "d11", "d0"]


def test_a_shuffled_stream_is_a_seeded_new_order_every_epoch(streamed):
  stream = _stream(streamed, seed=1, shuffle_buffer=5)
  epochs = [_captions(stream, range(e * N, (e + 1) * N)) for e in (0, 1)]
  for captions in epochs:
    assert sorted(captions) == sorted(f"caption number {i}" for i in range(N))
  assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])
  # The same seed gives the same order, read in any order (each jump back reopens the stream).
  positions = np.random.default_rng(0).permutation(2 * N)
  assert _captions(_stream(streamed, seed=1, shuffle_buffer=5), positions) == [
      (epochs[0] + epochs[1])[p] for p in positions]
  assert _captions(_stream(streamed, seed=2, shuffle_buffer=5), range(N)) != epochs[0]


def _assert_same_batches(got, want):
  assert len(got) == len(want)
  for (task, batch), (task2, batch2) in zip(got, want):
    assert task == task2
    for side in ("query", "positive"):
      for key in batch[side]:
        np.testing.assert_array_equal(batch[side][key], batch2[side][key])
    np.testing.assert_array_equal(batch["query_id"], batch2["query_id"])


def test_a_streamed_task_resumes_on_exactly_the_next_batch(streamed):
  data = _data_cfg(streamed, t=dict(path=str(streamed / "p" / "*.parquet"), query="text:caption",
                                    positive="image:image", streaming=True, shuffle_buffer=5),
                   pairs=dict(path=str(streamed / "t.jsonl"), query="text:q", positive="text:d",
                              streaming=True))
  mixture = {"t": {"rate": 2.0, "batch_size": 4}, "pairs": {"rate": 1.0, "batch_size": 5}}
  it = pipeline.make_iterator(data, MODEL, mixture)
  uninterrupted = [next(it) for _ in range(12)]  # t: 3 batches an epoch; pairs: 12 / 5
  assert [task for task, _ in uninterrupted].count("t") > 3  # into t's second epoch
  for step in (2, 7):  # mid-epoch, and after an epoch of each task ended
    it.set_state({"step": step})
    _assert_same_batches([next(it) for _ in range(12 - step)], uninterrupted[step:])
  it.close()
  data.read_threads, data.prefetch = 3, 4  # each thread reads from its own open stream
  threaded = pipeline.make_iterator(data, MODEL, mixture)
  _assert_same_batches([next(threaded) for _ in range(12)], uninterrupted)
  threaded.close()
  data.worker_count = 2  # a restart in new processes, each reading (and skipping) every row
  restarted = pipeline.make_iterator(data, MODEL, mixture)
  restarted.set_state({"step": 7})
  try:
    _assert_same_batches([next(restarted) for _ in range(5)], uninterrupted[7:])
  finally:
    restarted.close()


def test_bad_records_in_a_stream_raise_or_are_replaced_by_a_later_row(streamed):
  holes = dict(path=str(streamed / "holes" / "*.parquet"), query="text:caption",
               positive="image:image", streaming=True, shuffle_buffer=0)
  with pytest.raises(features.BadRecordError,
                     match=r"config.data.hf.t row 3 query text:caption: the value is missing"):
    _stream(streamed, **holes)[3]
  data = _data_cfg(streamed, t=holes)
  mixture = {"t": {"rate": 1.0, "batch_size": N}}
  with pytest.raises(features.BadRecordError, match=r"row 3 query text:caption"):
    next(pipeline.make_iterator(data, MODEL, mixture))
  data.on_bad_record = "skip"
  it = pipeline.make_iterator(data, MODEL, mixture)
  _, batch = next(it)
  assert it.metrics()["skipped/t"] == 1
  it.close()
  tokens = batch["query"]["text_tokens"]
  assert tokens.shape[0] == N
  others = [tokens[row] for row in range(N) if row != 3]  # each row once, in stream order
  assert len({row.tobytes() for row in others}) == N - 1
  assert any(np.array_equal(tokens[3], row) for row in others)  # the hole: a copy of another


@pytest.mark.parametrize("entry, message", [
    (dict(path="SAVED", streaming=True),
     r"config.data.hf.t.streaming: .* is a folder \(save_to_disk\)"),
    (dict(shuffle_buffer=10), r"config.data.hf.t.shuffle_buffer shuffles a stream: set "
                              r"config.data.hf.t.streaming=True"),
    (dict(streaming=True, shuffle_buffer=-1), r"config.data.hf.t.shuffle_buffer=-1"),
])
def test_streaming_config_errors_name_the_key(saved, streamed, entry, message):
  entry = dict(dict(path=str(streamed / "p" / "*.parquet"), query="text:caption",
                    positive="text:label"), **entry)
  if entry["path"] == "SAVED":
    entry["path"] = str(saved / "saved")
  with pytest.raises(ValueError, match=message):
    len(_source(entry, saved))
