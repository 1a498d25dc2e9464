"""The full recipe on ToyWorld, larger than the smoke run: a 4-layer, 128-wide encoder,
pre-finetuning on large batches of every task, fine-tuning with hard negatives, then a soup.
Under an hour on 2 CPU cores.

  python -m launch.main --config=configs/toyworld.py --workdir=runs/toyworld
"""
import ml_collections

from configs import common
from gemb.evaluate import toyworld_suite


def get_config(arg=None):
  del arg
  # The fused step: at this size 1.1x faster per step, which over 3000 steps outweighs its
  # longer compile.
  c = common.run(fused_step=True, log_every=100)

  c.model = common.toyworld_model("tiny")
  c.model.width = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.mrl_dims = (32, 64, 128)
  # The smoke's stems with each patch's mean colour at half the pixels' scale: at this size
  # 0.25 learnt shape and lost colour.
  common.conv_stems(c.model, colour_gain=0.5)

  c.data = common.data(source="toyworld", toyworld=common.toyworld_world(c.model),
                       task_string_dropout=0.1)  # some queries without their task string
  c.loss = common.loss(type="nce", temperature=0.05, learn_temperature=True,
                       symmetric=True)  # both directions, as the smoke (docs/results.md)
  c.optim = common.optim(lr=1e-3, warmup_steps=200)
  c.checkpoint = common.checkpoint(every=250, keep=3)

  # Pre-finetuning -> fine-tuning with hard negatives -> a soup of the last three checkpoints.
  every_task = {task: 1.0 for task in common.TOYWORLD_TASKS}
  c.stage_order = ("prefinetune", "finetune", "soup")
  c.stages = ml_collections.ConfigDict()
  c.stages.prefinetune = dict(
      type="train", steps=2000, init="random", hard_negatives=False, eval_every=1000,
      mixture=common.mixture(every_task, batch_size=128))
  c.stages.finetune = dict(
      type="train", steps=1000, init="previous", hard_negatives=True, eval_every=500,
      optim={"lr": 5e-4, "warmup_steps": 50},
      mixture=common.mixture(every_task, batch_size=64))
  c.stages.soup = dict(type="soup", ingredients=("finetune:1000", "finetune:750", "finetune:500"),
                       weights=None)

  c.eval = common.eval_settings(batch_size=128, mrl=True, quantized=True)
  # Every task type and modality on held-out (shape, colour) pairs, 256 candidates each.
  c.evals = toyworld_suite.evals(num_candidates=256, split="eval")
  c.export = common.export()
  return c
