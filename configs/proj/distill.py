"""Distilling domain specialists into one universal model (issue 7), CPU-sized on ToyWorld.

  python -m launch.main --config=configs/proj/distill.py --workdir=runs/distill

Four domains that differ in modality or style: captions -> images, programs -> images,
captions -> sounds, captions -> videos. One specialist per domain is trained on it alone; the
fused baseline (all domains, contrastive loss) and each distilled student (KL of in-batch
similarity distributions, alone or plus the contrastive loss; L2 of the similarities) get the
same budget: `steps` batches of `batch_size` from the same domain mixture, 4x a specialist's
steps, so that every model sees each domain equally often. Report: WORKDIR/distill/report.json
and report.md. The full run takes ~20 min on a 2-core CPU (README, "Distilling specialists into
one universal model").

Arg 'tiny' shrinks everything to a smoke run (two domains, 4 steps each; ~1.5 min on 2 cores).
Any domain can also be a manifest or TFDS task: add `source='manifest'` (or 'tfds') to its
config.domains entry and to its specialist's mixture, and set config.data.manifest /
config.data.tfds (and config.eval.manifest for held-out examples in their own file).
An outside model as a specialist: config.specialists.<domain> = dict(type='table', path=...)
(a .npz of embeddings per example id; see gemb/proj/distill/teachers.py).
"""
import ml_collections

from configs import recipe

DOMAINS = ("text_to_image", "code_to_image", "text_to_audio", "text_to_video")


def _model(tiny: bool) -> ml_collections.ConfigDict:
  # The recipe's ToyWorld tokenizer and log-mel statistics: a single-object caption or program is
  # at most 16 tokens, so every one fits whole (tests/test_distill.py).
  model = recipe.toyworld_model("tiny")
  if tiny:
    model.width, model.depth, model.num_heads, model.embed_dim = 32, 1, 2, 32
    model.mrl_dims = (8, 32)
  return model


def _data(tiny: bool) -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.source = "toyworld"
  data.seed = 0
  data.toyworld_size = 256 if tiny else 4096  # training examples per domain
  data.toyworld = {
      "count_weights": (1.0,),  # one object per scene: short captions, fast to learn
      "audio_seconds": round(_model(tiny).max_audio_frames * 0.01, 2),  # what the model hears
  }
  # No task strings: each domain's queries already say what they are, and they would double
  # the text the tiny model reads. Evaluation follows (no task strings either).
  data.task_string_dropout = 1.0
  data.worker_count = 0
  data.prefetch = 2
  data.on_bad_record = "raise"
  return data


def _optim(lr: float, warmup_steps: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=lr, schedule="cosine", warmup_steps=warmup_steps, final_lr_fraction=0.05,
      weight_decay=0.05, b1=0.9, b2=0.98, eps=1e-8, clip_norm=1.0, accumulate_steps=1))


def train_config(rates: dict, steps: int, batch_size: int, tiny: bool, lr: float,
                 warmup_steps: int, checkpoint_every: int) -> ml_collections.ConfigDict:
  """A one-stage gemb training config (a specialist or the fused baseline)."""
  c = recipe.recipe(model="tiny", lr=lr, checkpoint_every=checkpoint_every)
  c.model = _model(tiny)
  c.data = _data(tiny)
  c.optim = _optim(lr, warmup_steps)
  c.loss.temperature = 0.05
  c.checkpoint.keep = 1
  c.log_every = max(steps // 4, 1)
  c.eval.suite = ""  # the distillation report evaluates every model on every domain itself
  c.stage_order = ("train",)
  c.stages = ml_collections.ConfigDict()
  c.stages.train = ml_collections.ConfigDict(dict(
      type="train", steps=steps, init="random", hard_negatives=False, eval_every=0,
      mixture=recipe.mixture(rates, batch_size)))
  return c


def get_config(arg=None):
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/proj/distill.py takes no arg or 'tiny', got {arg!r}")
  if tiny:
    return build(tiny=True, domains=DOMAINS[:2], steps=4, specialist_steps=4, batch_size=8,
                 lr=2e-3, warmup=1, checkpoint_every=2, num_candidates=32)
  # Each specialist: 250 batches of its domain. The universal models: 4 x 250 batches of the
  # four-domain mixture, so that each sees every domain as often as its specialist does (and
  # costs what the four specialists cost together).
  return build(tiny=False, domains=DOMAINS, steps=1000, specialist_steps=250, batch_size=64,
               lr=1e-3, warmup=40, checkpoint_every=100, num_candidates=512)


def build(tiny: bool, domains, steps: int, specialist_steps: int, batch_size: int, lr: float,
          warmup: int, checkpoint_every: int, num_candidates: int) -> ml_collections.ConfigDict:
  """The experiment's config. `steps` is the universal models' budget (the fused model and every
  student: `steps` batches of `batch_size` from the domain mixture); `specialist_steps` batches
  of `batch_size` train each specialist on its domain alone."""
  c = ml_collections.ConfigDict()
  c.job = "distill"
  c.seed = 0
  c.model = _model(tiny)
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  c.data = _data(tiny)
  c.domains = {d: {"rate": 1.0} for d in domains}
  c.steps = steps
  c.batch_size = batch_size
  c.optim = _optim(lr, warmup)
  c.checkpoint = ml_collections.ConfigDict(dict(every=checkpoint_every, keep=1, async_save=True))
  c.log_every = max(steps // 4, 1)
  c.compilation_cache_dir = ""  # '' = WORKDIR/jax_cache
  c.compilation_cache_min_seconds = 0.5

  # Specialists: one gemb training config per domain (or dict(type='table', path=...)).
  # 'on_the_fly' runs each frozen specialist on its batches; 'precomputed' first embeds every
  # training example of its domain into DIR/specialists/<domain>/teacher_table.npz: the same
  # embeddings (tests/test_distill.py), and each example is embedded once instead of once per
  # draw per student (the students draw each ToyWorld example ~4 times each).
  c.teacher_embeddings = "precomputed"
  c.specialists = {d: ml_collections.ConfigDict(dict(type="gemb", train=train_config(
      {d: 1.0}, specialist_steps, batch_size, tiny, lr, warmup, checkpoint_every)))
                   for d in domains}
  c.fusion = train_config({d: 1.0 for d in domains}, steps, batch_size, tiny, lr, warmup,
                          checkpoint_every)

  # Students: the loss is sum_term weights[term] * term over kl, l2, contrastive.
  def student(**weights):
    return ml_collections.ConfigDict(dict(
        weights={"kl": 0.0, "l2": 0.0, "contrastive": 0.0, **weights},
        teacher_temperature=0.05, student_temperature=0.05,  # the KL's softmax temperatures
        contrastive_temperature=0.05, symmetric=True, mrl_weights=None))
  c.students = ml_collections.ConfigDict()
  c.students.kl = student(kl=1.0)
  c.students.l2 = student(l2=1.0)
  # The optional added contrastive loss: KL to the teachers plus the in-batch loss on
  # the labels, weighted equally.
  c.students.kl_contrastive = student(kl=1.0, contrastive=1.0)

  c.eval = ml_collections.ConfigDict(dict(
      split="eval", num_candidates=num_candidates, ks=(1, 5, 10), batch_size=128,
      manifest=""))
  c.goal_margin = 0.02  # the goal: the KL student within 2 points of R@1 of every specialist
  return c
