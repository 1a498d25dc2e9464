"""The Gemini Embedding recipe at accelerator scale on your data: `--config=configs/scale.py:B`
(S, B or L).

Pre-finetuning on large batches of noisy pairs without hard negatives, then fine-tuning on the
task mixture (one task per batch) with hard negatives and smaller batches, then a soup of the
last fine-tuning checkpoints. The data are placeholders that config_check rejects until set:

  python -m launch.main --config=configs/scale.py:B --workdir=runs/b \
      --config.data.manifest=train.jsonl \
      --config.evals.retrieval.manifest=eval.jsonl --config.evals.retrieval.task=text_to_image
"""
import ml_collections

from configs import common

SIZES = {  # model preset: (pre-finetune batch, fine-tune batch, lr)
    "S": (8192, 1024, 5e-4),
    "B": (16384, 1024, 3e-4),
    "L": (32768, 2048, 2e-4),
}


def get_config(arg: str = "B"):
  arg = arg or "B"
  if arg not in SIZES:
    raise ValueError(f"configs/scale.py:{arg}: choose one of {sorted(SIZES)}")
  prefinetune_batch, finetune_batch, lr = SIZES[arg]
  c = common.run(fused_step=True, log_every=100, mesh={"data": -1, "fsdp": 1, "tensor": 1})

  c.model = common.model(arg)  # byte-level text: no tokenizer file to ship

  # A JSONL manifest whose `task` fields name the mixture's tasks (gemb/datasets/manifest.py).
  # A TFDS task instead: its entry in config.data.tfds, and source="tfds" in its mixture entry.
  c.data = common.data(source="manifest", manifest="REPLACE_ME/train.jsonl", worker_count=8,
                       task_string_dropout=0.1)  # some queries without their task string
  # Blockwise loss: memory O(B_local x 4096) at these batch sizes (fine-tuning: 512 below).
  c.loss = common.loss(type="nce", temperature=0.05, learn_temperature=True, block_size=4096)
  c.optim = common.optim(lr=lr, warmup_steps=2000)
  c.checkpoint = common.checkpoint(every=1000, keep=3)

  # Pre-finetuning on noisy pairs; fine-tuning adds the harder tasks, with hard negatives
  # (manifest lines with a `negative`).
  noisy_pairs = {"text_to_text": 1.0, "text_to_image": 1.0, "image_to_text": 1.0}
  tasks = {**noisy_pairs, "question_to_answer": 1.0, "text_to_audio": 1.0, "text_to_video": 1.0}
  c.stage_order = ("prefinetune", "finetune", "soup")
  c.stages = ml_collections.ConfigDict()
  c.stages.prefinetune = dict(
      type="train", steps=50_000, init="random", hard_negatives=False, eval_every=5000,
      mixture=common.mixture(noisy_pairs, batch_size=prefinetune_batch))
  c.stages.finetune = dict(
      type="train", steps=10_000, init="previous", hard_negatives=True, eval_every=5000,
      optim={"lr": lr / 2, "warmup_steps": 50},
      loss={"block_size": 512},  # must divide the smaller fine-tuning batches (1024 / 2048)
      mixture=common.mixture(tasks, batch_size=finetune_batch))
  c.stages.soup = dict(type="soup", weights=None,
                       ingredients=("finetune:10000", "finetune:9000", "finetune:8000"))

  c.eval = common.eval_settings(batch_size=128, mrl=True, quantized=True)
  # Held-out retrieval on your data; add an entry per task (gemb/evaluate/manifest_suite.py).
  c.evals = ml_collections.ConfigDict()
  c.evals.retrieval = dict(type="retrieval", dataset="manifest", manifest="REPLACE_ME/eval.jsonl",
                           task="REPLACE_ME", num_candidates=10_000, bidirectional=True)
  c.export = common.export()
  return c
