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
(a .npz of embeddings per example id; see gemb/train/teachers.py).

Every model is trained by gemb.train.trainer from its own config here: a specialist's and the
fused model's are contrastive training stages; a student's is a distillation stage (type
'distill') whose teachers gemb/proj/distill/run.py sets to the trained specialists.
"""
import ml_collections

from configs import common

DOMAINS = ("text_to_image", "code_to_image", "text_to_audio", "text_to_video")


def _model(tiny: bool) -> ml_collections.ConfigDict:
  # ToyWorld's tokenizer and log-mel statistics: a single-object caption or program is at most
  # 16 tokens, so every one fits whole (tests/test_distill.py).
  model = common.toyworld_model("tiny")
  if tiny:
    model.width, model.depth, model.num_heads, model.embed_dim = 32, 1, 2, 32
    model.mrl_dims = (8, 32)
  return model


def _data(tiny: bool) -> ml_collections.ConfigDict:
  return common.data(
      source="toyworld",
      toyworld_size=256 if tiny else 4096,  # training examples per domain
      # One object per scene: short captions, fast to learn; sounds as long as the model hears.
      toyworld={"count_weights": (1.0,), **common.toyworld_world(_model(tiny))},
      # No task strings: each domain's queries already say what they are, and they would double
      # the text the tiny model reads. Evaluation follows (no task strings either).
      task_string_dropout=1.0)


def train_config(rates: dict, steps: int, batch_size: int, tiny: bool, lr: float,
                 warmup_steps: int, checkpoint_every: int) -> ml_collections.ConfigDict:
  """A one-stage gemb training config (a specialist or the fused baseline)."""
  c = common.run(log_every=max(steps // 4, 1))
  c.model = _model(tiny)
  c.data = _data(tiny)
  c.loss = common.loss(temperature=0.05, symmetric=True)  # as measured (docs/distillation.md)
  c.optim = common.optim(lr=lr, warmup_steps=warmup_steps)
  c.checkpoint = common.checkpoint(every=checkpoint_every, keep=1)
  c.eval = common.eval_settings()
  c.evals = {}  # the distillation report evaluates every model on every domain itself
  c.export = common.export()
  c.stage_order = ("train",)
  c.stages = ml_collections.ConfigDict()
  c.stages.train = ml_collections.ConfigDict(dict(
      type="train", steps=steps, init="random", hard_negatives=False, eval_every=0,
      mixture=common.mixture(rates, batch_size)))
  return c


def student_config(rates: dict, steps: int, batch_size: int, tiny: bool, lr: float,
                   warmup_steps: int, checkpoint_every: int, **weights) -> ml_collections.ConfigDict:
  """A student: the fused baseline's config, its stage distilling the specialists with the loss
  sum_term weights[term] * term over kl, l2, contrastive (gemb.losses.distillation_terms)."""
  c = train_config(rates, steps, batch_size, tiny, lr, warmup_steps, checkpoint_every)
  # One program per batch layout; the loss weights and temperatures are its arguments, so every
  # student runs the same compiled step.
  c.fused_step = True
  c.loss.learn_temperature = False  # the contrastive term's temperature is loss.temperature
  c.stages.train.type = "distill"
  c.stages.train.distill = ml_collections.ConfigDict(dict(
      weights={"kl": 0.0, "l2": 0.0, "contrastive": 0.0, **weights},
      teacher_temperature=0.05, student_temperature=0.05,  # the KL's softmax temperatures
      teachers={}))  # domain -> teacher: gemb/proj/distill/run.py sets the trained specialists
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
  c.model = _model(tiny)  # the universal models' (fused, students): evaluation reads its limits
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  c.data = _data(tiny)
  c.domains = {d: {"rate": 1.0} for d in domains}
  c.steps = steps
  c.batch_size = batch_size
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
  universal = ({d: 1.0 for d in domains}, steps, batch_size, tiny, lr, warmup, checkpoint_every)
  c.fusion = train_config(*universal)

  c.students = ml_collections.ConfigDict()
  c.students.kl = student_config(*universal, kl=1.0)
  c.students.l2 = student_config(*universal, l2=1.0)
  # The optional added contrastive loss: KL to the teachers plus the in-batch loss on
  # the labels, weighted equally.
  c.students.kl_contrastive = student_config(*universal, kl=1.0, contrastive=1.0)

  c.eval = ml_collections.ConfigDict(dict(
      split="eval", num_candidates=num_candidates, ks=(1, 5, 10), batch_size=128,
      manifest=""))
  c.goal_margin = 0.02  # the goal: the KL student within 2 points of R@1 of every specialist
  return c
