"""Text -> token ids. Byte-level UTF-8 by default; SentencePiece when the config names a model;
a Hugging Face tokenizer.json when it names a checkpoint folder ("hf:PATH").

Ids follow the data contract: 0 is padding and never produced, 1 = bos/cls, 2 = eos.

  byte-level     id = byte + 3 for each UTF-8 byte; needs config.model.vocab_size >= 259.
                 Every language and every string works, nothing to train.
  SentencePiece  config.model.tokenizer = "path/to/x.model", trained with pad_id=0 (as
                 `python -m launch.train_tokenizer` does); ids are the model's own ids.
  "toyworld"     the shipped SentencePiece model of ToyWorld's texts (1024 BPE pieces, byte
                 fallback): a caption is ~15 tokens instead of ~60 bytes.

  "hf:PATH"      the tokenizer.json of a Hugging Face folder (gemb.model.hf.tokenizer): the
                 checkpoint's own ids, special tokens and template, which its weights expect.
  "x.json"       a tokenizer.json by itself, e.g. a serving bundle's copy: needs no folder, and
                 no gemb.model (flax), so a server builds it from the bundle alone.

`encode` adds no bos/eos (an input is embedded by mean pooling, so no special token is needed),
except for a Hugging Face tokenizer, whose template adds what the checkpoint was trained with.
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


class HuggingFaceTokenizer:
  """A Hugging Face `tokenizers` tokenizer.json, as a pretrained checkpoint ships it: its own
  normaliser, special tokens and template (BERT's [CLS] ... [SEP]); `encode` truncates to
  `max_length` ids, special tokens included. Its pad id must be 0. Picklable: it reloads from
  its JSON."""

  def __init__(self, path: str, max_length: int | None = None, lowercase: bool = False):
    with open(path) as f:
      self._json = f.read()
    self.path, self.max_length, self.lowercase = path, max_length, lowercase
    self._load()

  def _load(self):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._tokenizer = tokenizers.Tokenizer.from_str(self._json)
    padding = self._tokenizer.padding
    pad_id = padding["pad_id"] if padding else next(
        (self._tokenizer.token_to_id(t) for t in ("[PAD]", "<pad>")
         if self._tokenizer.token_to_id(t) is not None), PAD_ID)
    if pad_id != PAD_ID:
      raise ValueError(f"tokenizer {self.path!r} pads with id {pad_id}; gemb needs pad id 0 "
                       "(0 is padding in packed batches)")
    self._tokenizer.no_padding()
    if self.max_length:
      self._tokenizer.enable_truncation(self.max_length)
    else:
      self._tokenizer.no_truncation()
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> np.ndarray:  # int32[L], L <= max_length
    return np.asarray(self._tokenizer.encode(text.lower() if self.lowercase else text).ids,
                      np.int32)

  def decode(self, ids) -> str:
    return self._tokenizer.decode([int(i) for i in np.asarray(ids) if i != PAD_ID])

  def __getstate__(self):
    return {"_json": self._json, "path": self.path, "max_length": self.max_length,
            "lowercase": self.lowercase}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()


def make_tokenizer(name: str = "bytes", vocab_size: int | None = None,
                   max_length: int | None = None):
  """Returns the tokenizer `config.model.tokenizer` names ("bytes", a .model path, a
  tokenizer.json path, or "hf:FOLDER" for the tokenizer.json of a Hugging Face checkpoint folder;
  these two truncate to `max_length` (config.model.max_text_tokens) themselves, keeping their
  closing special token).

  Checks that every id it can produce fits `vocab_size` (config.model.vocab_size) if given.
  """
  if name.startswith("hf:"):
    from gemb.model import hf  # pylint: disable=g-import-not-at-top
    tokenizer = hf.tokenizer(name[len("hf:"):], max_length)
  elif name.endswith(".json"):
    tokenizer = HuggingFaceTokenizer(name, max_length)
  else:
    tokenizer = (ByteTokenizer() if name in ("", "bytes")
                 else SentencePieceTokenizer(resolve(name)))
  if vocab_size is not None and tokenizer.vocab_size > vocab_size:
    raise ValueError(f"tokenizer {name!r} produces ids up to {tokenizer.vocab_size - 1} but "
                     f"config.model.vocab_size={vocab_size}; set vocab_size >= "
                     f"{tokenizer.vocab_size}")
  return tokenizer
