"""gemb.datasets: data sources found by name, a new one registered without touching the pipeline."""
import pytest

from configs import common
from gemb import datasets
from gemb.data import pipeline
from gemb.datasets import toyworld

MODEL = common.model("tiny")


class Letters:
  """A registered source: example i asks for the letter chr(97 + i % 26) by its upper case."""

  skipped_lines = 0

  def __init__(self, data_cfg):
    self.data_cfg = data_cfg

  def tasks(self):
    return ["upper_to_lower"]

  def task(self, name, fcfg, where):
    if name != "upper_to_lower":
      raise datasets.unknown_task(where, name, "letters", self.tasks())
    source = [{"query": [{"text": chr(65 + i % 26)}], "positive": [{"text": chr(97 + i % 26)}]}
              for i in range(52)]
    return datasets.Task(source, {"query": {"text": 1}, "positive": {"text": 1}}, "lower case")


def test_get_builds_the_named_dataset_and_names_the_key_when_unknown():
  dataset = datasets.get("toyworld", pipeline.data_config(common.data()))
  assert dataset.tasks() == list(toyworld.TASKS)
  with pytest.raises(ValueError, match=r"config.data.source='s3' is not a known data source; "
                     r"known: \['hf', 'manifest', 'tfds', 'toyworld'\]"):
    datasets.get("s3", {})


def test_a_registered_dataset_feeds_the_pipeline_and_known_tasks(monkeypatch):
  monkeypatch.setattr(datasets, "_MODULES", dict(datasets._MODULES))  # for this test only
  datasets.register("letters", Letters)
  config = {"data": common.data(source="letters")}
  assert pipeline.known_tasks(config) == ["upper_to_lower"]
  it = pipeline.make_iterator(common.data(source="letters", task_string_dropout=0.0), MODEL,
                              {"upper_to_lower": {"rate": 1.0, "batch_size": 4}})
  task, batch = next(it)
  it.close()
  assert task == "upper_to_lower"
  assert batch["query"]["text_tokens"].shape[0] == 4
  assert len(set(batch["query_id"].tolist())) == 4  # four different letters
  with pytest.raises(ValueError, match=r"mixture.digits: letters has no task 'digits'"):
    pipeline.make_iterator(common.data(source="letters"), MODEL,
                           {"digits": {"rate": 1.0, "batch_size": 4}})


def test_register_adds_a_source_by_module_path(monkeypatch):
  monkeypatch.setattr(datasets, "_MODULES", dict(datasets._MODULES))
  datasets.register("toy_again", "gemb.datasets.toyworld")
  assert (datasets.get("toy_again", pipeline.data_config(common.data())).tasks()
          == list(toyworld.TASKS))
