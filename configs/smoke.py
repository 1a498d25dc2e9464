"""CPU smoke run: a tiny encoder trained through every stage on ToyWorld in a few minutes.

  python -m launch.main --config=configs/smoke.py --workdir=runs/smoke

Pre-finetuning (950 steps) weights the caption<->image pairs 6x and the two sound tasks 3x each
other task's rate: caption<->image retrieval is what the run is judged on first, and a sound
task learns from its own batches only (~50 each left text->audio at R@1 0.035; ~120 give 0.145).
Fine-tuning (300 steps) trains every task with hard negatives, caption<->image at 3x and the
sound tasks at 2x. 3-4 minutes on 2 CPU cores (README has the table and the variants).
"""
from configs import recipe


def get_config(arg=None):
  del arg
  # One batch size for both stages: the per-side programs compiled for pre-finetuning serve
  # fine-tuning too, which halves the compile time of this short run.
  c = recipe.recipe(model="tiny", prefinetune_steps=950, finetune_steps=300,
                    prefinetune_batch=64, finetune_batch=64, lr=1e-3, soup_last=2,
                    checkpoint_every=100)
  rates = {task: 1.0 for task in recipe.RETRIEVAL_TASKS}
  rates["text_to_image"] = rates["image_to_text"] = 6.0
  rates["text_to_audio"] = rates["audio_to_image"] = 3.0
  c.stages.prefinetune.mixture = recipe.mixture(rates, 64)
  rates["text_to_image"] = rates["image_to_text"] = 3.0
  rates["text_to_audio"] = rates["audio_to_image"] = 2.0
  c.stages.finetune.mixture = recipe.mixture(rates, 64)
  # Convolutions before the patch embedding: ToyWorld's objects are 5-10 px wide, and a linear
  # embedding of 8x8 patches must learn each shape at every offset within a patch. Images: a
  # stride-1 convolution first (edges at full resolution) and a stride-1 one last (each 8x8
  # patch's features see 31 px, a whole object): the classification task trained alone for 300
  # steps reaches 0.57 on held-out shapes, vs 0.36 with three stride-2 convolutions. Video
  # frames keep those three: 8 frames per video made the deeper front cost 40% of the run.
  c.model.image_conv_channels = (16, 32, 64, 64, 64)
  c.model.image_conv_strides = (1, 2, 2, 2, 1)
  c.model.video_conv_channels = (16, 32, 64)
  # Each patch's mean colour beside the conv features, at a quarter of the pixels' scale: at
  # full scale colour is learnt at once and shape never (held-out classification 0.11, below the
  # 0.2 of chance; shape probe 0.30), without it colour is learnt slowly (multilabel colour F1
  # 0.12, colour probe 0.36). 0.1 and 0.25 both learn both; 0.25 retrieves better.
  c.model.patch_colour_gain = 0.25
  # 80 ms of the whole spectrum per audio token: half the tokens of (4, 32), a pulse of the
  # fastest (12 Hz) sound fits in one token (single-task text->audio R@1 0.39 vs 0.35).
  c.model.audio_patch = (8, 32)
  c.optim.warmup_steps = 30
  c.log_every = 50
  return c
