"""TFDS datasets as tasks, on tfds.testing.mock_data (random examples, no download, no TF)."""
import numpy as np
import pytest

from configs import common
from gemb.data import features, image, pipeline
from gemb.datasets import tfds as tfds_source
from gemb.data.tokenizer import ByteTokenizer

tfds = pytest.importorskip("tensorflow_datasets")

MODEL = common.model("tiny")


class GembMockCaptions(tfds.core.GeneratorBasedBuilder):
  """An image-caption dataset with a clip and a sound, only ever read through mock_data."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        "clip": tfds.features.Tensor(shape=(None, 24, 24, 3), dtype=np.uint8),
        "sound": tfds.features.Tensor(shape=(None,), dtype=np.int16),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    yield 0, {}


def test_mnist_as_image_to_class_name_retrieval():
  data = common.data(source="tfds", tfds={"digits": {"name": "mnist", "query": "image:image",
                                                      "positive": "text:label"}})
  mixture = {"digits": {"rate": 1.0, "batch_size": 4}}
  with tfds.testing.mock_data(num_examples=8):
    reference = tfds.data_source("mnist", split="train")
    names = reference.dataset_info.features["label"].names
    it = pipeline.make_iterator(data, MODEL, mixture)
    task, batch = next(it)
    it.close()
    assert task == "digits"
    labels = [ByteTokenizer().decode(row[0]) for row in batch["positive"]["text_tokens"]]
    all_labels = {names[int(reference[i]["label"])] for i in range(8)}
    assert set(labels) <= all_labels
    assert batch["query"]["image"].shape == (4, 1, 32, 32, 3)
    assert (batch["query"]["image_hw"][:, 0] == [32, 32]).all()  # 28 -> nearest multiple of 8
    source = tfds_source.TfdsSource.from_config("digits", data["tfds"]["digits"], "train")
    raw = source[0]
    expected = image.featurise_image(reference[0]["image"], (32, 32), 8, 0.5, 0.5)
    featurised = features.featurise_part(raw["query"][0], features.FeatureConfig.from_config(MODEL))
    np.testing.assert_allclose(featurised["image"], expected)
    assert raw["positive"][0]["text"] == names[int(reference[0]["label"])]


def test_custom_caption_dataset_maps_nested_features_to_parts():
  entry = {"name": "gemb_mock_captions", "query": "text:captions/text",
           "positive": "image:image,video:clip", "negative": "audio:sound", "sample_rate": 8000}
  with tfds.testing.mock_data(num_examples=5):
    reference = tfds.data_source("gemb_mock_captions", split="train")
    source = tfds_source.TfdsSource.from_config("caps", entry, "train")
    assert len(source) == 5
    assert source.max_parts == {"query": {"text": 1}, "positive": {"image": 1, "video": 1},
                                "negative": {"audio": 1}}
    raw = source[2]
    record = reference[2]
    assert raw["query"] == [{"text": str(record["captions"]["text"][0])}]
    np.testing.assert_array_equal(raw["positive"][0]["image"], record["image"])
    np.testing.assert_array_equal(raw["positive"][1]["video"], record["clip"])
    sound = record["sound"].astype(np.float32) / 32768  # 8 kHz -> 16 kHz: twice the samples
    assert raw["negative"][0]["audio"].shape == (2 * sound.size,)
    np.testing.assert_allclose(raw["negative"][0]["audio"][::2].mean(), sound.mean(), atol=0.05)
    with pytest.raises(features.BadRecordError, match=r"tfds gemb_mock_captions/train #0 query "
                                                      r"text:caps/text: .*not found"):
      tfds_source.TfdsSource.from_config("caps", dict(entry, query="text:caps/text"), "train")[0]


@pytest.mark.parametrize("entry,message", [
    ({"query": "image:image", "positive": "text:label"}, r"config.data.tfds.t.name is missing"),
    ({"name": "mnist", "query": "picture:image", "positive": "text:label"},
     r"config.data.tfds.t.query='picture:image'"),
    ({"name": "mnist", "query": "image:image", "positive": "text:label", "shuffle": True},
     r"config.data.tfds.t has unknown keys \['shuffle'\]"),
])
def test_tfds_config_errors_name_the_key(entry, message):
  with pytest.raises(ValueError, match=message):
    tfds_source.TfdsSource.from_config("t", entry, "train")
