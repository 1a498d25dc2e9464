"""CPU smoke run: a tiny encoder trained through every stage on ToyWorld in a few minutes.

  python -m launch.main --config=configs/smoke.py --workdir=runs/smoke
"""
from configs import recipe


def get_config(arg=None):
  del arg
  return recipe.recipe(model="tiny", prefinetune_steps=300, finetune_steps=200,
                       prefinetune_batch=64, finetune_batch=32, lr=2e-3, soup_last=2,
                       checkpoint_every=50)
