"""Text -> token ids. Byte-level UTF-8 by default; SentencePiece when the config names a model.

Ids follow the data contract: 0 is padding and never produced, 1 = bos/cls, 2 = eos.

  byte-level     id = byte + 3 for each UTF-8 byte; needs config.model.vocab_size >= 259.
                 Every language and every string works, nothing to train.
  SentencePiece  config.model.tokenizer = "path/to/x.model", trained with pad_id=0 (as
                 `python -m launch.train_tokenizer` does); ids are the model's own ids.
  "toyworld"     the shipped SentencePiece model of ToyWorld's texts (1024 BPE pieces, byte
                 fallback): a caption is ~15 tokens instead of ~60 bytes.

`encode` adds no bos/eos: an input is embedded by mean pooling, so no special token is needed.
"""
from __future__ import annotations

import os

import numpy as np

BYTE_OFFSET = 3  # ids 0, 1, 2 are padding, bos/cls, eos
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


# Tokenizers shipped with gemb, by name: name -> .model path.
SHIPPED = {"toyworld": os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "datasets", "toyworld", "tokenizer.model")}


def resolve(name: str) -> str:
  """The .model path of a shipped tokenizer's name; any other name as is."""
  return SHIPPED.get(name, name)


class ByteTokenizer:
  """UTF-8 bytes shifted by BYTE_OFFSET."""

  vocab_size = BYTE_VOCAB_SIZE

  def encode(self, text: str) -> np.ndarray:  # int32[L]
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET

  def decode(self, ids) -> str:
    ids = np.asarray(ids)
    ids = ids[ids >= BYTE_OFFSET] - BYTE_OFFSET
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def __eq__(self, other):
    return isinstance(other, ByteTokenizer)

  def __hash__(self):
    return hash(ByteTokenizer)


class SentencePieceTokenizer:
  """A SentencePiece model whose pad id is 0. Picklable: it reloads from its bytes."""

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.model.tokenizer names {path!r}, which does not exist; "
                              "train one with `python -m launch.train_tokenizer` or use 'bytes'")
    with open(path, "rb") as f:
      self._proto = f.read()
    self.path = path
    self._load()

  def _load(self):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    if self._sp.pad_id() != PAD_ID:
      raise ValueError(f"SentencePiece model {self.path!r} has pad_id={self._sp.pad_id()}; gemb "
                       "needs pad_id=0 (0 is padding in packed batches). Retrain it with "
                       "`python -m launch.train_tokenizer`, which sets pad_id=0")
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str) -> np.ndarray:  # int32[L]
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in np.asarray(ids) if i != PAD_ID])

  def __getstate__(self):
    return {"_proto": self._proto, "path": self.path}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()


def make_tokenizer(name: str = "bytes", vocab_size: int | None = None):
  """Returns the tokenizer `config.model.tokenizer` names ("bytes" or a .model path).

  Checks that every id it can produce fits `vocab_size` (config.model.vocab_size) if given.
  """
  tokenizer = (ByteTokenizer() if name in ("", "bytes")
               else SentencePieceTokenizer(resolve(name)))
  if vocab_size is not None and tokenizer.vocab_size > vocab_size:
    raise ValueError(f"tokenizer {name!r} produces ids up to {tokenizer.vocab_size - 1} but "
                     f"config.model.vocab_size={vocab_size}; set vocab_size >= "
                     f"{tokenizer.vocab_size}")
  return tokenizer
