"""CPU smoke run: a tiny encoder trained through every stage on ToyWorld in a few minutes.

  python -m launch.main --config=configs/smoke.py --workdir=runs/smoke
"""
from configs import recipe


def get_config(arg=None):
  del arg
  # One batch size for both stages: the per-side programs compiled for pre-finetuning serve
  # fine-tuning too, which halves the compile time of this short run.
  return recipe.recipe(model="tiny", prefinetune_steps=150, finetune_steps=100,
                       prefinetune_batch=32, finetune_batch=32, lr=5e-4, soup_last=2,
                       checkpoint_every=50)
