"""The grain mixture pipeline: determinism, exact resumption, sharding, task mixtures, task
strings, bad records, and layouts the model accepts."""
import json

import grain
import numpy as np
import pytest

from configs import common
from configs import smoke
from gemb.data import features, image, pipeline
from gemb.datasets import manifest, toyworld
from gemb.data.tokenizer import ByteTokenizer
from gemb.model import inputs

MODEL = common.model("tiny")
TOK = ByteTokenizer()


def _texts(side):
  """Decodes every row's first text part back to a string (byte tokenizer)."""
  return [TOK.decode(row[0]) for row in side["text_tokens"]]


def _assert_batches_equal(a, b):
  assert a[0] == b[0]
  flat_a, flat_b = _flatten(a[1]), _flatten(b[1])
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def _flatten(batch):
  out = {}
  for key, value in batch.items():
    if isinstance(value, dict):
      out.update({f"{key}/{k}": v for k, v in value.items()})
    else:
      out[key] = value
  return out


def _take(it, n):
  batches = [next(it) for _ in range(n)]
  it.close()
  return batches


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
  """A manifest: task 'cap' (12 lines: unique caption -> unique image), task 'qa' (6 lines:
  image + question -> answer, with a hard negative)."""
  rng = np.random.default_rng(0)
  examples = [{"task": "cap", "query": [{"text": f"caption {i}"}],
               "positive": [{"image": rng.integers(0, 256, (24, 24, 3), np.uint8)}]}
              for i in range(12)]
  examples += [{"task": "qa", "query": [{"image": rng.integers(0, 256, (16, 16, 3), np.uint8)},
                                        {"text": f"question {i}?"}],
                "positive": [{"text": f"answer {i}"}], "negative": [{"text": f"wrong {i}"}]}
               for i in range(6)]
  path = str(tmp_path_factory.mktemp("manifest") / "m.jsonl")
  manifest.write_manifest(path, examples, fps=8.0)
  return path


def _manifest_iterator(path, mixture, **data):
  return pipeline.make_iterator(common.data(source="manifest", manifest=path, **data), MODEL,
                                mixture)


def test_batches_hold_each_example_once_per_epoch_and_reshuffle(captions):
  it = _manifest_iterator(captions, {"cap": {"rate": 1.0, "batch_size": 4}})
  batches = _take(it, 6)  # two epochs of 12
  epochs = [sum((_texts(b["query"]) for _, b in batches[e * 3:(e + 1) * 3]), []) for e in (0, 1)]
  for texts in epochs:
    assert sorted(texts) == sorted(f"caption {i}" for i in range(12))
  assert epochs[0] != epochs[1]
  # Each row's positive is the featurised image of the same manifest line.
  index = manifest.scan_manifest(captions)
  source = manifest.ManifestSource(index, "cap", features.FeatureConfig.from_config(MODEL))
  by_text = {source[i]["query"][0]["text"]: source[i]["positive"][0]["image"] for i in range(12)}
  _, batch = batches[0]
  for row, text in enumerate(_texts(batch["query"])):
    expected = image.featurise_image(by_text[text], (32, 32), 8, 0.5, 0.5)
    np.testing.assert_allclose(batch["positive"]["image"][row, 0, :24, :24], expected)
    assert list(batch["positive"]["image_hw"][row, 0]) == [24, 24]
    assert batch["positive_id"][row] == features.content_id([{"image": by_text[text]}])


def test_same_seed_same_batches_other_seed_others(captions):
  mixture = {"cap": {"rate": 1.0, "batch_size": 4}, "qa": {"rate": 1.0, "batch_size": 2}}
  first = _take(_manifest_iterator(captions, mixture, seed=3, read_threads=0), 5)
  again = _take(_manifest_iterator(captions, mixture, seed=3, read_threads=3, prefetch=4), 5)
  for a, b in zip(first, again):
    _assert_batches_equal(a, b)
  other = _take(_manifest_iterator(captions, mixture, seed=4), 5)
  assert [t for t, _ in first] != [t for t, _ in other] or any(
      _texts(a[1]["query"]) != _texts(b[1]["query"]) for a, b in zip(first, other)
      if a[0] == b[0] == "cap")


def test_resumed_iterator_equals_uninterrupted(captions):
  mixture = {"cap": {"rate": 2.0, "batch_size": 4}, "qa": {"rate": 1.0, "batch_size": 2}}
  data = dict(seed=1, task_string_dropout=0.5)
  uninterrupted = _take(_manifest_iterator(captions, mixture, **data), 9)
  it = _manifest_iterator(captions, mixture, **data)
  _take(it, 4)
  state = json.loads(json.dumps(it.get_state()))  # what orbax stores
  assert state["step"] == 4
  resumed = _manifest_iterator(captions, mixture, **data)
  resumed.set_state(state)
  for a, b in zip(uninterrupted[4:], _take(resumed, 5)):
    _assert_batches_equal(a, b)


def test_worker_processes_give_the_same_batches_and_resume(captions):
  mixture = {"cap": {"rate": 1.0, "batch_size": 4}, "qa": {"rate": 1.0, "batch_size": 2}}
  reference = _take(_manifest_iterator(captions, mixture), 6)
  it = _manifest_iterator(captions, mixture, worker_count=2)
  try:
    for expected in reference[:4]:
      _assert_batches_equal(next(it), expected)
    it.set_state({"step": 2})
    for expected in reference[2:6]:
      _assert_batches_equal(next(it), expected)
  finally:
    it.close()


def test_processes_read_disjoint_slices_of_the_global_batch():
  mixture = {"bitext": {"rate": 1.0, "batch_size": 4}, "sts": {"rate": 2.0, "batch_size": 6}}
  data = common.data(source="toyworld", toyworld_size=50)
  whole = _take(pipeline.make_iterator(data, MODEL, mixture,
                                       shard=grain.sharding.ShardOptions(0, 1)), 6)
  halves = [_take(pipeline.make_iterator(data, MODEL, mixture,
                                         shard=grain.sharding.ShardOptions(p, 2)), 6)
            for p in (0, 1)]
  for step, (task, batch) in enumerate(whole):
    (task0, part0), (task1, part1) = halves[0][step], halves[1][step]
    assert task0 == task1 == task  # every host draws the same task
    assert part0["query_id"].shape[0] == mixture[task]["batch_size"] // 2
    joined = {k: np.concatenate([_flatten(part0)[k], _flatten(part1)[k]])
              for k in _flatten(part0)}
    for key, value in _flatten(batch).items():
      np.testing.assert_array_equal(joined[key], value, err_msg=key)
  with pytest.raises(ValueError, match=r"mixture.sts.batch_size=6 must be a positive multiple "
                                       r"of the number of processes \(4\)"):
    pipeline.make_iterator(data, MODEL, mixture, shard=grain.sharding.ShardOptions(0, 4))


def test_task_draws_follow_the_rates_and_count_earlier_draws():
  rates = np.array([0.6, 0.3, 0.1])
  schedule = pipeline.TaskSchedule(rates, seed=5)
  draws = [schedule(s) for s in range(3000)]
  tasks = np.array([t for t, _ in draws])
  freq = np.bincount(tasks, minlength=3) / len(tasks)
  assert np.all(np.abs(freq - rates) < 4 * np.sqrt(rates * (1 - rates) / len(tasks)))
  seen = [0, 0, 0]
  for t, k in draws:  # k = how many earlier steps drew the same task
    assert k == seen[t]
    seen[t] += 1
  fresh = pipeline.TaskSchedule(rates, seed=5)  # random access agrees with the sequential pass
  assert [fresh(s) for s in (2999, 1024, 0, 1500)] == [draws[s] for s in (2999, 1024, 0, 1500)]


def test_task_strings_are_prefixed_and_dropped_with_the_configured_probability():
  mixture = {"sts": {"rate": 1.0, "batch_size": 8}}
  data = common.data(source="toyworld", toyworld_size=100)
  prefix = f"task: {toyworld.TASKS['sts'].task_string} | query: "

  def queries(dropout, steps=1):
    batches = _take(pipeline.make_iterator(dict(data, task_string_dropout=dropout), MODEL,
                                           mixture), steps)
    return sum((_texts(b["query"]) for _, b in batches), [])

  kept, dropped = queries(0.0), queries(1.0)
  assert all(q.startswith(prefix) for q in kept)
  assert not any(q.startswith("task:") for q in dropped)
  assert [q[len(prefix):] for q in kept] == [q[:MODEL.max_text_tokens - len(prefix)]
                                             for q in dropped]
  half = queries(0.5, steps=25)
  share = np.mean([q.startswith(prefix) for q in half])
  assert abs(share - 0.5) < 4 * np.sqrt(0.25 / len(half))
  custom = _take(pipeline.make_iterator(
      data, MODEL, {"sts": {"rate": 1.0, "batch_size": 2, "task_string": "find twins"}}), 1)
  assert _texts(custom[0][1]["query"])[0].startswith("task: find twins | query: ")


def test_equal_positives_get_equal_ids():
  mixture = {"classification": {"rate": 1.0, "batch_size": 16}}
  _, batch = _take(pipeline.make_iterator(common.data(source="toyworld", toyworld_size=200),
                                          MODEL, mixture), 1)[0]
  labels = _texts(batch["positive"])
  assert len(set(labels)) < len(labels)  # 16 rows, 5 classes: duplicates
  for i in range(16):
    for j in range(16):
      assert (batch["positive_id"][i] == batch["positive_id"][j]) == (labels[i] == labels[j])
  assert batch["positive_id"].dtype == np.int32 and batch["positive_id"].min() >= 0


def test_every_toyworld_task_batch_fits_the_model():
  mixture = {task: {"rate": 1.0, "batch_size": 2} for task in toyworld.TASKS}
  it = pipeline.make_iterator(common.data(source="toyworld", toyworld_size=20), MODEL, mixture)
  seen = {}
  for _ in range(80):
    task, batch = next(it)
    seen[task] = batch
    if len(seen) == len(mixture):
      break
  it.close()
  assert set(seen) == set(toyworld.TASKS)
  for task, batch in seen.items():
    spec = toyworld.TASKS[task]
    assert ("negative" in batch) == spec.has_negative
    for side in ("query", "positive", "negative"):
      if side in batch:
        inputs.check_side(batch[side], MODEL)
        assert np.isfinite(batch[side].get("audio", np.zeros(1))).all()
    present = [m for m in ("text", "image", "audio", "video") if f"{m}_part" in batch["query"]]
    assert present == [m for m in ("text", "image", "audio", "video")
                       if m in spec.query_modalities]


def test_hard_negatives_can_be_left_out():
  mixture = {"bitext": {"rate": 1.0, "batch_size": 2}}
  data = common.data(source="toyworld", toyworld_size=10)
  assert "negative" in _take(pipeline.make_iterator(data, MODEL, mixture), 1)[0][1]
  batch = _take(pipeline.make_iterator(data, MODEL, mixture, hard_negatives=False), 1)[0][1]
  assert sorted(batch) == ["positive", "positive_id", "query", "query_id"]


def test_train_iterator_reads_the_stage_and_known_tasks_the_source():
  config = smoke.get_config()
  config.data.on_bad_record = "raise"
  assert set(pipeline.known_tasks(config)) == set(toyworld.TASKS)
  it = pipeline.train_iterator(config, "prefinetune")
  task, batch = next(it)
  it.close()
  assert batch["query_id"].shape == (config.stages.prefinetune.mixture[task].batch_size,)
  assert ("negative" in batch) == (config.stages.prefinetune.hard_negatives
                                   and toyworld.TASKS[task].has_negative)


@pytest.mark.parametrize("mixture,data,message", [
    ({"nope": {"rate": 1.0, "batch_size": 2}}, {}, r"mixture.nope: ToyWorld has no task 'nope'"),
    ({"sts": {"rate": 0.0, "batch_size": 2}}, {}, r"mixture.sts.rate=0.0 must be > 0"),
    ({"sts": {"rate": 1.0}}, {}, r"mixture.sts.batch_size is missing"),
    ({"sts": {"rate": 1.0, "batch_size": 2, "weight": 1}}, {}, r"mixture.sts has unknown keys"),
    ({}, {}, r"mixture is empty"),
    ({"sts": {"rate": 1.0, "batch_size": 2}}, {"workers": 2},
     r"config.data has unknown keys config.data.workers"),
    ({"sts": {"rate": 1.0, "batch_size": 2}}, {"on_bad_record": "ignore"},
     r"config.data.on_bad_record='ignore'"),
    ({"sts": {"rate": 1.0, "batch_size": 2}}, {"source": "s3"},
     r"config.data.source='s3' is not a known data source"),
])
def test_config_errors_name_the_key(mixture, data, message):
  with pytest.raises(ValueError, match=message):
    pipeline.make_iterator(dict(common.data(source="toyworld", toyworld_size=10), **data), MODEL,
                           mixture)


def test_a_layout_longer_than_the_model_sequence_is_an_error(tmp_path):
  path = tmp_path / "m.jsonl"
  line = {"task": "long", "query": [{"text": "a"}] * 9, "positive": [{"text": "b"}]}
  path.write_text(json.dumps(line) + "\n")
  with pytest.raises(ValueError, match=r"mixture.long query: the layout \{'text': 9\} does not "
                                       r"fit config.model"):
    _manifest_iterator(str(path), {"long": {"rate": 1.0, "batch_size": 1}})


# ---------------------------------------------------------------- bad records

@pytest.fixture()
def with_bad_lines(tmp_path):
  """10 lines of task 't', lines 3 and 7 broken (a missing image, an empty text)."""
  rng = np.random.default_rng(1)
  examples = [{"task": "t", "query": [{"text": f"good {i}"}],
               "positive": [{"image": rng.integers(0, 256, (8, 8, 3), np.uint8)}]}
              for i in range(10)]
  path = tmp_path / "m.jsonl"
  manifest.write_manifest(str(path), examples, fps=8.0)
  lines = path.read_text().splitlines()
  lines[2] = lines[2].replace("media/00003_positive_0.png", "media/missing.png")
  lines[6] = lines[6].replace('"good 6"', '""')
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_bad_records_raise_naming_the_line_and_field(with_bad_lines):
  it = _manifest_iterator(with_bad_lines, {"t": {"rate": 1.0, "batch_size": 10}})
  with pytest.raises(features.BadRecordError,
                     match=r"m.jsonl:(3 positive\[0\].image: image file .*missing.png' does not "
                           r"exist|7 query\[0\].text: empty text)"):
    next(it)
  it.close()


def test_skipped_bad_records_are_replaced_counted_and_kept_in_the_state(with_bad_lines):
  mixture = {"t": {"rate": 1.0, "batch_size": 5}}
  it = _manifest_iterator(with_bad_lines, mixture, on_bad_record="skip")
  batches = _take(it, 4)  # two epochs: each bad line is hit twice
  for _, batch in batches:
    assert batch["query_id"].shape == (5,)
    texts = _texts(batch["query"])
    assert all(t.startswith("good ") for t in texts) and "good 2" not in texts
    assert (np.abs(batch["positive"]["image"][:, 0, :8, :8]).sum(axis=(1, 2, 3)) > 0).all()
  assert it.metrics()["skipped_records"] >= 4
  assert it.metrics()["skipped/t"] == it.get_state()["skipped"]["t"]
  resumed = _manifest_iterator(with_bad_lines, mixture, on_bad_record="skip")
  resumed.set_state(it.get_state())
  assert resumed.metrics() == it.metrics()


def test_over_long_text_is_a_bad_record_unless_truncated(tmp_path):
  limit = MODEL.max_text_tokens
  path = tmp_path / "m.jsonl"
  path.write_text(json.dumps({"task": "t", "query": [{"text": "x" * (limit + 9)}],
                              "positive": [{"text": "y"}]}) + "\n")
  mixture = {"t": {"rate": 1.0, "batch_size": 1}}
  it = _manifest_iterator(str(path), mixture, truncate=False)
  with pytest.raises(features.BadRecordError,
                     match=rf"m.jsonl:1 query\[0\].text: text has {limit + 9} tokens > "
                           rf"config.model.max_text_tokens={limit}"):
    next(it)
  _, batch = next(_manifest_iterator(str(path), mixture))
  assert _texts(batch["query"]) == ["x" * limit]
