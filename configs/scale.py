"""The Gemini Embedding recipe at accelerator scale: `--config=configs/scale.py:B` (S, B or L).

Pre-finetuning on large batches of noisy pairs without hard negatives, then fine-tuning on the
task mixture (one task per batch) with hard negatives and smaller batches, then a soup of the
last fine-tuning checkpoints. Point `config.data` at your manifest or TFDS data for real runs.
"""
from configs import recipe

_SIZES = {  # model preset: (pre-finetune batch, fine-tune batch, lr)
    "S": (8192, 1024, 5e-4),
    "B": (16384, 1024, 3e-4),
    "L": (32768, 2048, 2e-4),
}


def get_config(arg: str = "B"):
  arg = arg or "B"
  if arg not in _SIZES:
    raise ValueError(f"configs/scale.py:{arg}: choose one of {sorted(_SIZES)}")
  prefinetune_batch, finetune_batch, lr = _SIZES[arg]
  c = recipe.recipe(model=arg, prefinetune_steps=50_000, finetune_steps=10_000,
                    prefinetune_batch=prefinetune_batch, finetune_batch=finetune_batch, lr=lr,
                    soup_last=3, checkpoint_every=1000)
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  c.fused_step = True
  c.loss.block_size = 4096  # blockwise loss: memory O(B_local x 4096) at these batch sizes
  c.data.worker_count = 8
  c.log_every = 100
  c.optim.warmup_steps = 2000
  for stage in ("prefinetune", "finetune"):
    c.stages[stage].eval_every = 5000
  return c
