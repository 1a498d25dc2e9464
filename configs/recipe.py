"""The Gemini Embedding recipe as a config: pre-finetuning -> fine-tuning -> model soup.

`recipe(model, ...)` returns the whole ConfigDict; configs/smoke.py, configs/toyworld.py and the
TPU/GPU-scale configs are this recipe at different sizes. Every number lives here or in the
config that calls it, none in the code.
"""
import ml_collections

from configs import model_presets

# ToyWorld tasks by training stage. Pre-finetuning: large batches of noisy pairs, no hard
# negatives. Fine-tuning: a task mixture with hard negatives, one task per batch.
RETRIEVAL_TASKS = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_image",
                   "text_to_video", "video_to_text", "image_question_to_answer", "code_to_image",
                   "bitext", "sts", "classification")


def mixture(rates: dict, batch_size: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {task: {"rate": float(rate), "batch_size": batch_size} for task, rate in rates.items()})


def toyworld_model(name: str = "tiny") -> ml_collections.ConfigDict:
  """The model preset `name` with ToyWorld's text and audio settings (the recipe's and the
  distillation's models)."""
  model = model_presets.get_model_config(name)
  # ToyWorld's own SentencePiece tokenizer (gemb/datasets/toyworld/tokenizer.model): a query with its
  # task string is at most ~40 tokens (~150 bytes), so a step reads 4x fewer text tokens.
  model.tokenizer = "toyworld"
  model.vocab_size = 1024
  model.max_text_tokens = 48
  # Log-mels standardised with ToyWorld's statistics (mean -5.9, std 3.1).
  model.audio_mean, model.audio_std = -6.0, 3.0
  return model


def conv_stems(model: ml_collections.ConfigDict, colour_gain: float) -> None:
  """Sets ToyWorld's convolutional pixel stems on `model`, with each patch's mean colour at
  `colour_gain` (the smoke and toyworld configs; README has the runs behind each choice).

  Convolutions before the patch embedding: ToyWorld's objects are 5-10 px wide, and a linear
  embedding of 8x8 patches must learn each shape at every offset within a patch. Images: a
  stride-1 convolution first (edges at full resolution) and a stride-1 one last (each 8x8
  patch's features see 31 px, a whole object): the classification task trained alone for 300
  steps reaches 0.57 on held-out shapes, vs 0.36 with three stride-2 convolutions. Video
  frames keep those three: 8 frames per video made the deeper front cost 40% of the run.
  Audio: 80 ms of the whole spectrum per token, half the tokens of (4, 32); a pulse of the
  fastest (12 Hz) sound fits in one token (single-task text->audio R@1 0.39 vs 0.35).
  """
  model.image_conv_channels = (16, 32, 64, 64, 64)
  model.image_conv_strides = (1, 2, 2, 2, 1)
  model.video_conv_channels = (16, 32, 64)
  model.patch_colour_gain = colour_gain
  model.audio_patch = (8, 32)


def recipe(model: str = "tiny", prefinetune_steps: int = 1000, finetune_steps: int = 500,
           prefinetune_batch: int = 256, finetune_batch: int = 64, lr: float = 1e-3,
           soup_last: int = 3, checkpoint_every: int = 100) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "train"
  c.seed = 0
  c.model = toyworld_model(model)
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  # One program per train step (best on accelerators), or small programs per side layout,
  # which compile several times faster when a mixture has many tasks (best on a CPU).
  c.fused_step = False
  # Persistent compilation cache: '' = WORKDIR/jax_cache, None = off.
  c.compilation_cache_dir = ""
  c.compilation_cache_min_seconds = 0.0  # cache every program (tiny ones compile in < 0.5 s)

  c.data = ml_collections.ConfigDict()
  c.data.source = "toyworld"
  c.data.seed = 0
  c.data.worker_count = 0
  c.data.prefetch = 2
  c.data.task_string_dropout = 0.1
  c.data.on_bad_record = "raise"
  # ToyWorld sounds as long as the model hears (max_audio_frames at a 10 ms hop).
  c.data.toyworld = {"audio_seconds": round(c.model.max_audio_frames * 0.01, 2)}

  c.loss = ml_collections.ConfigDict()
  c.loss.type = "nce"  # or "siglip"
  c.loss.temperature = 0.05  # initial value when learned
  c.loss.learn_temperature = True
  c.loss.temperature_min = 0.01
  c.loss.temperature_max = 1.0
  c.loss.symmetric = True  # add the target->query direction (cross-modal pairs)
  c.loss.block_size = 0  # 0: all gathered targets at once; N: blockwise in chunks of N
  c.loss.mrl_weights = None  # None: uniform over model.mrl_dims
  c.loss.siglip_bias = -10.0

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = lr
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.05
  c.optim.weight_decay = 0.05
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-8
  c.optim.clip_norm = 1.0
  c.optim.accumulate_steps = 1

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = checkpoint_every
  c.checkpoint.keep = max(soup_last, 2)
  c.checkpoint.async_save = True
  c.log_every = 50

  c.eval = ml_collections.ConfigDict()
  c.eval.suite = "toyworld"  # or "manifest" (your data: every task as retrieval), "" for none
  c.eval.manifest = ""  # the JSONL manifest of the "manifest" suite
  c.eval.split = "eval"
  c.eval.num_candidates = 256
  c.eval.batch_size = 128
  c.eval.mrl = True
  c.eval.quantized = True
  c.eval.seed = 0

  c.stage_order = ("prefinetune", "finetune", "soup")
  c.stages = ml_collections.ConfigDict()
  c.stages.prefinetune = ml_collections.ConfigDict(dict(
      type="train", steps=prefinetune_steps, init="random", hard_negatives=False, eval_every=0,
      mixture=mixture({task: 1.0 for task in RETRIEVAL_TASKS}, prefinetune_batch)))
  c.stages.finetune = ml_collections.ConfigDict(dict(
      type="train", steps=finetune_steps, init="previous", hard_negatives=True, eval_every=0,
      optim={"lr": lr / 2, "warmup_steps": min(50, finetune_steps // 10)},
      mixture=mixture({task: 1.0 for task in RETRIEVAL_TASKS}, finetune_batch)))
  ingredients = [f"finetune:{finetune_steps - i * checkpoint_every}" for i in range(soup_last)]
  c.stages.soup = ml_collections.ConfigDict(dict(
      type="soup", ingredients=tuple(i for i in ingredients if int(i.split(":")[1]) > 0),
      weights=None))
  return c
