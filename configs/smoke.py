"""CPU smoke run: a tiny encoder trained through every stage on ToyWorld in 3-4 minutes on 2 cores.

  python -m launch.main --config=configs/smoke.py --workdir=runs/smoke

docs/results.md has the runs behind its numbers and its variants.
"""
import ml_collections

from configs import common
from gemb.evaluate import toyworld_suite


def get_config(arg=None):
  del arg
  c = common.run(fused_step=False, log_every=50)  # per-side programs: faster compiles on a CPU

  c.model = common.toyworld_model("tiny")  # 2 layers, 64 wide, MRL prefixes (16, 32, 64)
  # Each patch's mean colour at a quarter of the pixels' scale: at full scale colour is learnt
  # and shape never; without it colour is learnt slowly.
  common.conv_stems(c.model, colour_gain=0.25)

  c.data = common.data(source="toyworld", toyworld=common.toyworld_world(c.model),
                       task_string_dropout=0.1)  # some queries without their task string
  # Both directions: ToyWorld evaluates cross-modal pairs both ways (one-directional, the
  # paper's form: text->image 0.60, image->text 0.49 instead of 0.86 / 0.84; docs/results.md).
  c.loss = common.loss(type="nce", temperature=0.05, learn_temperature=True, symmetric=True)
  c.optim = common.optim(lr=1e-3, warmup_steps=30)
  c.checkpoint = common.checkpoint(every=100, keep=2)

  # Pre-finetuning -> fine-tuning with hard negatives -> a soup of the last two checkpoints.
  # One batch size (64) for both stages: the per-side programs compiled for pre-finetuning serve
  # fine-tuning too, which halves the compile time of this short run.
  rates = {task: 1.0 for task in common.TOYWORLD_TASKS}
  c.stage_order = ("prefinetune", "finetune", "soup")
  c.stages = ml_collections.ConfigDict()
  # Caption<->image (what the run is judged on first) at 6x, the sound tasks at 3x: a sound task
  # learns from its own batches only.
  c.stages.prefinetune = dict(
      type="train", steps=950, init="random", hard_negatives=False, eval_every=0,
      mixture=common.mixture({**rates, "text_to_image": 6.0, "image_to_text": 6.0,
                              "text_to_audio": 3.0, "audio_to_image": 3.0}, batch_size=64))
  c.stages.finetune = dict(
      type="train", steps=300, init="previous", hard_negatives=True, eval_every=0,
      optim={"lr": 5e-4, "warmup_steps": 30},
      mixture=common.mixture({**rates, "text_to_image": 3.0, "image_to_text": 3.0,
                              "text_to_audio": 2.0, "audio_to_image": 2.0}, batch_size=64))
  c.stages.soup = dict(type="soup", ingredients=("finetune:300", "finetune:200"), weights=None)

  c.eval = common.eval_settings(batch_size=128, mrl=True, quantized=True)
  # Every task type and modality on held-out (shape, colour) pairs, 256 candidates each.
  c.evals = toyworld_suite.evals(num_candidates=256, split="eval")
  c.export = common.export()
  return c
