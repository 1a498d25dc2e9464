"""Tokenizers: byte-level ids by the data contract; SentencePiece from launch/train_tokenizer."""
import pickle

import numpy as np
import pytest

from gemb.data import tokenizer
from launch import train_tokenizer

TEXTS = ["a small red circle", "ein kleiner roter Kreis", "日本語のテキスト",
         "emoji 🙂 ok", "x"]


def test_byte_ids_are_utf8_bytes_plus_three():
  tok = tokenizer.ByteTokenizer()
  for text in TEXTS:
    ids = tok.encode(text)
    expected = np.array(list(text.encode("utf-8")), np.int32) + 3  # data contract: byte + 3
    np.testing.assert_array_equal(ids, expected)
    assert ids.dtype == np.int32 and ids.min() >= 3 and ids.max() < tok.vocab_size == 259
    assert tok.decode(ids) == text


def test_vocab_size_check_names_the_config_key():
  with pytest.raises(ValueError, match="config.model.vocab_size=200"):
    tokenizer.make_tokenizer("bytes", vocab_size=200)
  assert tokenizer.make_tokenizer("bytes", vocab_size=264).vocab_size == 259


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tok")
  corpus = folder / "corpus.txt"
  lines = [f"the {c} {s} is {p}" for c in ("red", "green", "blue", "white")
           for s in ("circle", "square", "cross") for p in ("left", "right", "at the top")]
  corpus.write_text("\n".join(lines * 20) + "\n", encoding="utf-8")
  return train_tokenizer.train([str(corpus)], str(folder / "tok"), vocab_size=286,
                               character_coverage=1.0)


def test_trained_sentencepiece_has_gemb_ids(sentencepiece_model):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=sentencepiece_model)
  assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
  tok = tokenizer.make_tokenizer(sentencepiece_model, vocab_size=286)
  for text in ["the red circle is left", "unseen wörds 日本"]:  # byte fallback: no unknowns
    ids = tok.encode(text)
    np.testing.assert_array_equal(ids, sp.encode(text))
    assert ids.min() >= 1 and not (ids == sp.unk_id()).any()
    assert tok.decode(ids) == text
  # Frequent words are single pieces: fewer ids than bytes.
  assert len(tok.encode("the red circle is left")) < len("the red circle is left")


def test_sentencepiece_tokenizer_pickles_for_grain_workers(sentencepiece_model):
  tok = tokenizer.make_tokenizer(sentencepiece_model)
  copy = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(copy.encode("the blue cross"), tok.encode("the blue cross"))


def test_sentencepiece_without_pad_zero_is_rejected(tmp_path):
  import sentencepiece as spm
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(["abc def ghi"] * 50), encoding="utf-8")
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"),
                                 vocab_size=14, minloglevel=2)  # default ids: pad_id=-1
  with pytest.raises(ValueError, match="pad_id=0"):
    tokenizer.make_tokenizer(str(tmp_path / "m.model"))
  with pytest.raises(FileNotFoundError, match="train_tokenizer"):
    tokenizer.make_tokenizer(str(tmp_path / "missing.model"))


def test_shipped_toyworld_tokenizer_round_trips_and_fits_the_recipe():
  from configs import common
  from gemb.datasets import toyworld
  model = common.toyworld_model("tiny")
  tok = tokenizer.make_tokenizer("toyworld", model.vocab_size)
  assert tok.vocab_size == model.vocab_size == 1024
  lengths = []
  for text in toyworld.texts("eval", examples_per_task=40):  # held-out scenes included
    ids = tok.encode(text)
    assert ids.min() > tokenizer.PAD_ID and ids.max() < model.vocab_size
    assert tok.decode(ids) == text
    lengths.append(ids.size)
  # Every query with its task string fits the recipe's text limit, untruncated.
  assert max(lengths) <= model.max_text_tokens
  # Subwords, not bytes: several ToyWorld bytes per token on average.
  assert np.mean(lengths) < 0.4 * np.mean([len(t.encode()) for t in toyworld.texts("eval", 40)])
