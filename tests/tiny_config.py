"""A seconds-long training config for the trainer's tests: `--config=tests/tiny_config.py`."""
import ml_collections

from configs import common


def get_config(arg=None):
  del arg
  c = common.run(log_every=1)

  c.model = common.toyworld_model("tiny")
  c.model.width = 32
  c.model.depth = 1
  c.model.num_heads = 2
  c.model.embed_dim = 32
  c.model.mrl_dims = (8, 32)

  c.data = common.data(source="toyworld", toyworld_size=512,
                       toyworld=common.toyworld_world(c.model), task_string_dropout=0.1)
  c.loss = common.loss()
  c.optim = common.optim(lr=1e-3, warmup_steps=2)
  c.checkpoint = common.checkpoint(every=2, keep=2)

  pairs = {"text_to_image": 1.0, "image_to_text": 1.0}
  c.stage_order = ("prefinetune", "finetune", "soup")
  c.stages = ml_collections.ConfigDict()
  c.stages.prefinetune = dict(
      type="train", steps=6, init="random", hard_negatives=False, eval_every=0,
      mixture=common.mixture(pairs, batch_size=16))
  c.stages.finetune = dict(
      type="train", steps=4, init="previous", hard_negatives=True, eval_every=0,
      optim={"lr": 5e-4, "warmup_steps": 0}, mixture=common.mixture(pairs, batch_size=8))
  c.stages.soup = dict(type="soup", ingredients=("finetune:4", "finetune:2"), weights=None)

  c.eval = common.eval_settings()
  c.evals = {}  # no evaluation: these tests are about training state, not quality
  c.export = common.export()
  return c
