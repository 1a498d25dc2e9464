"""Trains a SentencePiece tokenizer from text files, with the ids gemb expects.

  python -m launch.train_tokenizer --input=corpus.txt[,more.txt] --output=tok/gemb \\
      --vocab_size=8000

writes tok/gemb.model (and .vocab). The shipped ToyWorld tokenizer (config.model.tokenizer =
"toyworld") was made with

  python -m launch.train_tokenizer --toyworld_examples=1000 --vocab_size=1024 --model_type=bpe \
      --character_coverage=1.0 --normalization=identity --output=gemb/datasets/toyworld/tokenizer

Use it with `--config.model.tokenizer=tok/gemb.model
--config.model.vocab_size=8000`. One sentence per line. Ids: 0 = padding (never produced),
1 = bos, 2 = eos, 3 = unknown; byte fallback on, so any UTF-8 text encodes without unknowns.
"""
from __future__ import annotations

import os

from absl import app, flags

from gemb.data import tokenizer
from gemb.datasets import toyworld

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (the tests import this module beside other
  commands)."""
  flags.DEFINE_list("input", None, "Text files, one sentence per line.")
  flags.DEFINE_integer("toyworld_examples", 0, "Instead of --input: train on the texts of this "
                       "many ToyWorld training examples per task (gemb.datasets.toyworld.texts).")
  flags.DEFINE_enum("normalization", "nmt_nfkc", ["nmt_nfkc", "identity"],
                    "SentencePiece normalization rule; 'identity' keeps text as is (and the "
                    ".model file small).")
  flags.DEFINE_string("output", None, "Output prefix: writes PREFIX.model and PREFIX.vocab.")
  flags.DEFINE_integer("vocab_size", 8000, "Vocabulary size, special and byte pieces included.")
  flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "SentencePiece algorithm.")
  flags.DEFINE_float("character_coverage", 0.9995, "Share of characters covered by pieces; the "
                     "rest falls back to bytes (use 1.0 for small alphabets).")
  flags.DEFINE_integer("input_sentence_size", 1_000_000, "Sentences sampled from the input.")
  flags.DEFINE_integer("seed", 0, "Seed of the sentence sampling.")
  flags.mark_flags_as_required(["output"])


def train(inputs: list[str], output: str, vocab_size: int, model_type: str = "unigram",
          character_coverage: float = 0.9995, input_sentence_size: int = 1_000_000,
          seed: int = 0, normalization: str = "nmt_nfkc") -> str:
  """Trains the model; returns the path of the .model file."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  missing = [p for p in inputs if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"--input files not found: {missing}")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  spm.set_random_generator_seed(seed)
  spm.SentencePieceTrainer.train(
      input=inputs, model_prefix=output, vocab_size=vocab_size, model_type=model_type,
      character_coverage=character_coverage, byte_fallback=True,
      pad_id=tokenizer.PAD_ID, bos_id=tokenizer.BOS_ID, eos_id=tokenizer.EOS_ID, unk_id=3,
      input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
      normalization_rule_name=normalization,
      minloglevel=2)
  return output + ".model"


def write_toyworld_corpus(path: str, examples_per_task: int) -> str:
  """Writes the ToyWorld training texts to `path`, one per line (a program's lines apart)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for text in toyworld.texts("train", examples_per_task):
      f.write(text + "\n")
  return path


def main(argv):
  del argv
  if bool(FLAGS.input) == bool(FLAGS.toyworld_examples):
    raise app.UsageError("give exactly one of --input and --toyworld_examples")
  inputs = FLAGS.input or [write_toyworld_corpus(FLAGS.output + ".corpus.txt",
                                                 FLAGS.toyworld_examples)]
  path = train(inputs, FLAGS.output, FLAGS.vocab_size, FLAGS.model_type,
               FLAGS.character_coverage, FLAGS.input_sentence_size, FLAGS.seed,
               FLAGS.normalization)
  tok = tokenizer.make_tokenizer(path)
  print(f"wrote {path}: vocab_size={tok.vocab_size}; set config.model.tokenizer={path!r} and "
        f"config.model.vocab_size >= {tok.vocab_size}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
