"""CPU smoke run: a tiny encoder trained through every stage on ToyWorld in a few minutes.

  python -m launch.main --config=configs/smoke.py --workdir=runs/smoke

Pre-finetuning weights the caption<->image pairs most (8x each other task's rate), since the
run is judged first on text->image and image->text retrieval; every other task still gets
batches. Fine-tuning trains every task with hard negatives, the caption<->image pairs at 3x.
~4 minutes on 2 CPU cores (README has the table).
"""
from configs import recipe


def get_config(arg=None):
  del arg
  # One batch size for both stages: the per-side programs compiled for pre-finetuning serve
  # fine-tuning too, which halves the compile time of this short run.
  c = recipe.recipe(model="tiny", prefinetune_steps=700, finetune_steps=300,
                    prefinetune_batch=64, finetune_batch=64, lr=1e-3, soup_last=2,
                    checkpoint_every=100)
  rates = {task: 1.0 for task in recipe.RETRIEVAL_TASKS}
  rates["text_to_image"] = rates["image_to_text"] = 8.0
  c.stages.prefinetune.mixture = recipe.mixture(rates, 64)
  rates["text_to_image"] = rates["image_to_text"] = 3.0
  c.stages.finetune.mixture = recipe.mixture(rates, 64)
  c.optim.warmup_steps = 30
  c.log_every = 50
  return c
