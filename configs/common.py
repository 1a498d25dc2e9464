"""What the configs share, called by name (big_vision's configs/proj/image_text/common.py).

Recipe snippets: `model(preset)`, `toyworld_model(preset)`, `conv_stems(model, ...)`,
`mixture(rates, batch_size)`, TOYWORLD_TASKS. And the default of every block that is not the
recipe itself, one function each, with keyword overrides: `data(...)`, `loss(...)`, `optim(...)`,
`checkpoint(...)`, `eval_settings(...)`, `export(...)` and `run(...)` (the top-level settings).
These are the only defaults: the code reads every key from the config, and
gemb/train/config_check.py names a key that is missing.
"""
from __future__ import annotations

from typing import Any

import ml_collections

# ToyWorld's training tasks: retrieval in every modality pairing, and the text tasks.
TOYWORLD_TASKS = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_image",
                  "text_to_video", "video_to_text", "image_question_to_answer", "code_to_image",
                  "bitext", "sts", "classification")

MODEL_SIZES = {
    # preset: (width, depth, num_heads, embed_dim)
    "tiny": (64, 2, 4, 64),  # CPU tests and the ToyWorld runs: seconds to compile
    "S": (384, 12, 6, 384),  # ~22M encoder params (ViT-S widths), one GPU/TPU host
    "B": (768, 12, 12, 768),  # ~86M (ViT-B / BERT-base widths)
    "L": (1024, 24, 16, 1024),  # ~300M (ViT-L / BERT-large widths), remat on
}


def _block(defaults: dict[str, Any], overrides: dict[str, Any],
           name: str) -> ml_collections.ConfigDict:
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise ValueError(f"common.{name}() has no key(s) {unknown}; keys: {sorted(defaults)}")
  return ml_collections.ConfigDict({**defaults, **overrides})


def model(preset: str = "tiny") -> ml_collections.ConfigDict:
  """config.model of size `preset`, with its input limits.

  The input limits (max_text_tokens, max_image_size, patch_size, n_mels, max_audio_frames, ...)
  are also what gemb.data.packing.Layout.from_config reads, so the data pipeline and the
  encoder's position tables agree by construction.
  """
  if preset not in MODEL_SIZES:
    raise ValueError(f"unknown model preset {preset!r}; known: {sorted(MODEL_SIZES)}")
  width, depth, num_heads, embed_dim = MODEL_SIZES[preset]
  tiny = preset == "tiny"
  c = ml_collections.ConfigDict()
  # Transformer.
  c.backbone = "gemb"  # or "bert" / "gemma": pretrained, from a Hugging Face folder (gemb.model.hf)
  c.pooling = "mean"  # or "cls": the first text slot's first token
  # Or "identity" (embed_dim == width): the pooled vector is the embedding; or "dense": a
  # sentence-transformers folder's Dense layers (embed_dim == their last width).
  c.projection = "linear"
  c.width = width
  c.depth = depth
  c.num_heads = num_heads
  c.mlp_ratio = 4.0
  c.dropout = 0.0
  c.remat = not tiny and preset != "S"  # recompute block activations in the backward pass
  c.attention_impl = "xla"  # or "cudnn": cuDNN's fused attention on NVIDIA GPUs
  c.scan_layers = not tiny  # blocks under nnx.scan: compile time flat in depth
  c.dtype = "float32" if tiny else "bfloat16"  # compute dtype; parameters stay float32
  # Output embedding and its Matryoshka prefixes.
  c.embed_dim = embed_dim
  # A tuple, so that `--config.model.mrl_dims="(32, 64)"` can override it.
  c.mrl_dims = (16, 32, 64) if tiny else (64, 128, 256, embed_dim)
  # Inputs: an input is a list of at most max_parts parts; the whole side is one sequence.
  c.tokenizer = "bytes"  # or the path of a SentencePiece .model
  c.vocab_size = 264  # byte-level: ids 3..258 are bytes + 3, 0 = padding, a few spare ids
  c.max_parts = 8
  c.max_seq_len = 512 if tiny else 2048
  c.max_text_tokens = 64 if tiny else 256
  c.patch_size = 8 if tiny else 16
  c.max_image_size = (32, 32) if tiny else (224, 224)
  # Channels of 3x3 convolutions before the patch embedding; () = linear patches (ViT).
  c.image_conv_channels = ()
  c.image_conv_strides = ()  # 1 or 2 per convolution; () = all 2
  c.video_conv_channels = ()  # the video stem's; () = the image stem's layout
  c.video_conv_strides = ()
  c.patch_colour_gain = 0.0  # > 0: conv stems also see each patch's mean colour, times this
  c.stem_norm = False  # LayerNorm on image/audio/video tokens (set for pretrained backbones)
  c.n_mels = 32 if tiny else 128
  c.max_audio_frames = 64 if tiny else 1024  # 10 ms hop: 0.64 s / 10.24 s
  # (frames, mel bins) per token; tiny: 40 ms of the whole spectrum, so a pitch is one token.
  c.audio_patch = (4, 32) if tiny else (16, 16)
  c.max_video_frames = 8 if tiny else 16
  c.video_size = (32, 32) if tiny else (128, 128)
  c.tubelet_frames = 2
  return c


def toyworld_model(preset: str = "tiny") -> ml_collections.ConfigDict:
  """`model(preset)` with ToyWorld's tokenizer and audio statistics."""
  c = model(preset)
  # ToyWorld's SentencePiece tokenizer (gemb/datasets/toyworld/tokenizer.model): a query with its
  # task string is at most ~40 tokens (~150 bytes), so a step reads 4x fewer text tokens.
  c.tokenizer = "toyworld"
  c.vocab_size = 1024
  c.max_text_tokens = 48
  c.audio_mean, c.audio_std = -6.0, 3.0  # ToyWorld's log-mel statistics (mean -5.9, std 3.1)
  return c


def conv_stems(model_cfg: ml_collections.ConfigDict, colour_gain: float) -> None:
  """Sets ToyWorld's convolutional pixel stems on `model_cfg`, each patch's mean colour at
  `colour_gain` (docs/results.md has the runs behind each choice)."""
  # Objects are 5-10 px wide: stride-1 convolutions first (edges at full resolution) and last
  # (each 8x8 patch sees 31 px, a whole object).
  model_cfg.image_conv_channels = (16, 32, 64, 64, 64)
  model_cfg.image_conv_strides = (1, 2, 2, 2, 1)
  model_cfg.video_conv_channels = (16, 32, 64)  # 8 frames: the deeper image front costs too much
  model_cfg.patch_colour_gain = colour_gain
  model_cfg.audio_patch = (8, 32)  # 80 ms per token: a pulse of the fastest sound fits in one


def toyworld_world(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.data.toyworld for `model_cfg`: sounds as long as the model hears (10 ms hop)."""
  return {"audio_seconds": round(model_cfg.max_audio_frames * 0.01, 2)}


def mixture(rates: dict[str, float], batch_size: int) -> ml_collections.ConfigDict:
  """A stage's mixture: {task: {rate, batch_size}}, every task at `batch_size`."""
  return ml_collections.ConfigDict(
      {task: {"rate": float(rate), "batch_size": batch_size} for task, rate in rates.items()})


def run(**overrides) -> ml_collections.ConfigDict:
  """The top-level settings of a training run; the blocks are added by the config."""
  return _block(dict(
      job="train",
      seed=0,
      mesh={"data": -1, "fsdp": 1, "tensor": 1},
      # One program per train step (best on accelerators), or small programs per side layout,
      # which compile several times faster when a mixture has many tasks (best on a CPU).
      fused_step=False,
      compilation_cache_dir="",  # persistent compilation cache: '' = WORKDIR/jax_cache, None = off
      compilation_cache_min_seconds=0.0,  # cache every program (tiny ones compile in < 0.5 s)
      log_every=50,
  ), overrides, "run")


def data(**overrides) -> ml_collections.ConfigDict:
  """config.data: where tasks come from and how batches are read (gemb/data/pipeline.py)."""
  return _block(dict(
      source="toyworld",  # a gemb.datasets name: 'toyworld' | 'manifest' | 'tfds' | registered
      seed=0,  # shuffles, task draws, task-string dropout, replacements (a stage's seed wins)
      split="train",  # ToyWorld / TFDS split
      toyworld_size=100_000,  # examples per ToyWorld task (a finite seeded stream)
      toyworld_seed=0,  # which ToyWorld universe
      toyworld=None,  # ToyWorld WorldConfig overrides (gemb/datasets/toyworld/scenes.py)
      manifest="",  # path of a JSONL manifest (gemb/datasets/manifest.py)
      tfds=None,  # {task: {name, split, data_dir, query, positive[, negative]}}
      # {task: {path, format, split, query, positive[, negative][, streaming, shuffle_buffer]}}
      hf=None,  # (gemb/datasets/hf.py)
      worker_count=0,  # worker processes (0: batches are built in this process' threads)
      worker_buffer_size=2,  # batches each worker keeps ready
      read_threads=1,  # threads building batches in each process (0: on demand)
      prefetch=2,  # batches the threads keep ready
      task_string_dropout=0.0,  # probability of leaving the task string out of a query
      on_bad_record="raise",  # or 'skip': log, count and replace a bad record
      max_replacements=100,  # with 'skip': records tried for one slot before an error
      truncate=True,  # cut over-long text/audio/video to config.model's limits
  ), overrides, "data")


def loss(**overrides) -> ml_collections.ConfigDict:
  """config.loss (gemb/losses.py); a stage's `loss` overrides some of it."""
  return _block(dict(
      type="nce",  # or "siglip"
      temperature=0.05,  # initial value when learned
      learn_temperature=True,
      temperature_min=0.01,
      temperature_max=1.0,
      # Gemini Embedding's loss is one-directional (query -> target, with the hard negative);
      # True averages in the target -> query direction (the hard negative's weight halves).
      symmetric=False,
      block_size=0,  # 0: all gathered targets at once; N: blockwise in chunks of N
      mrl_weights=None,  # None: uniform over model.mrl_dims
      siglip_bias=-10.0,
  ), overrides, "loss")


def optim(**overrides) -> ml_collections.ConfigDict:
  """config.optim: AdamW with warmup and a schedule; a stage's `optim` overrides some of it."""
  return _block(dict(
      lr=1e-3,
      schedule="cosine",  # or "constant"
      warmup_steps=100,
      final_lr_fraction=0.05,
      weight_decay=0.05,
      b1=0.9,
      b2=0.98,
      eps=1e-8,
      clip_norm=1.0,
      accumulate_steps=1,
      # K > 1: GradCache, the batch embedded in K chunks so activations are one chunk's; the
      # loss and gradients stay the whole batch's (needs fused_step=True; K x shards | batch).
      grad_cache_chunks=1,
      # The backbone (text stem, blocks, final norm: what a pretrained checkpoint gives) at this
      # multiple of the lr for the first backbone_multiplier_steps steps (0: all); 0 freezes it.
      backbone_lr_multiplier=1.0,
      backbone_multiplier_steps=0,
  ), overrides, "optim")


def checkpoint(**overrides) -> ml_collections.ConfigDict:
  """config.checkpoint: orbax, every `every` steps, the last `keep` kept."""
  return _block(dict(every=100, keep=2, async_save=True), overrides, "checkpoint")


def eval_settings(**overrides) -> ml_collections.ConfigDict:
  """config.eval: what every evaluator of config.evals shares."""
  return _block(dict(
      batch_size=128,
      mrl=True,  # also score each Matryoshka prefix of model.mrl_dims
      quantized=True,  # also score the entries that ask for int8 / binary embeddings
      seed=0,
  ), overrides, "eval_settings")


def export(**overrides) -> ml_collections.ConfigDict:
  """config.export: the serving bundle (gemb/export/bundle.py), limits the model lacks."""
  return _block(dict(
      # Modality sets to export, e.g. [["text"], ["image"], ["image", "text"]]; None: every
      # non-empty set whose input of one part per modality fits config.model.max_seq_len.
      modality_sets=None,
      platforms=("cpu", "cuda", "tpu"),  # jax.export lowers for each; the loader picks its own
      max_batch=32,  # inputs per exported-function call in the service
      # How long a batch waits for more requests; 0: it takes what queued while the previous
      # batch ran (no added latency).
      batch_timeout_ms=0.0,
      max_inputs_per_request=64,
      max_request_bytes=16 * 2**20,
      max_image_pixels=4096 * 4096,  # raw pixels of an image or video frame, before resizing
  ), overrides, "export")
