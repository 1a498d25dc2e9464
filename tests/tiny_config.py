"""A seconds-long training config for the trainer's tests: `--config=tests/tiny_config.py`."""
from configs import recipe


def get_config(arg=None):
  del arg
  c = recipe.recipe(model="tiny", prefinetune_steps=6, finetune_steps=4, prefinetune_batch=16,
                    finetune_batch=8, lr=1e-3, soup_last=2, checkpoint_every=2)
  c.model.width = 32
  c.model.depth = 1
  c.model.num_heads = 2
  c.model.embed_dim = 32
  c.model.mrl_dims = (8, 32)
  c.log_every = 1
  c.optim.warmup_steps = 2
  c.data.toyworld_size = 512
  c.eval.suite = ""  # no evaluation: these tests are about training state, not quality
  for stage in ("prefinetune", "finetune"):
    c.stages[stage].mixture = recipe.mixture(
        {"text_to_image": 1.0, "image_to_text": 1.0}, c.stages[stage].mixture.text_to_image.batch_size)
  return c
