"""The Gemini Embedding recipe on a Gemma 3 backbone made bidirectional (EmbeddingGemma, or a
Gemma 3 text model), at accelerator scale:

  python -m launch.main --config=configs/gemma.py:/path/to/embeddinggemma-300m --workdir=gs://...
  python -m launch.main --config=configs/gemma.py:tiny --workdir=runs/gemma_tiny   # CPU, minutes

The folder's Gemma 3 weights and tokenizer start the shared transformer, its sentence-transformers
Dense head (EmbeddingGemma's 768 -> 3072 -> 768) is the projection, and fresh image, audio and
video stems learn first while the backbone waits (backbone_lr_multiplier 0 for the first 1000 steps).
Data and evaluation are your manifest's (REPLACE_ME placeholders: config checks name each until
set). `:tiny` is the same recipe on a random 2-layer Gemma 3 with ToyWorld's data and tokenizer,
every stage in a few minutes on a CPU (tests/test_gemma_config.py runs it).
"""
import ml_collections

from configs import common
from gemb.evaluate import manifest_suite, toyworld_suite
from gemb.model import gemma, hf

# A random Gemma 3 for :tiny, as a config.json would give it: sliding and global layers (their
# own RoPE bases), grouped-query attention, query-key norms.
TINY_GEMMA = dict(model_type="gemma3_text", vocab_size=1024, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  layer_types=["sliding_attention", "full_attention"], sliding_window=16,
                  rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, query_pre_attn_scalar=16,
                  max_position_embeddings=512)


def get_config(arg=None):
  if not arg:
    raise ValueError("configs/gemma.py:PATH (a Gemma 3 / EmbeddingGemma Hugging Face folder) or "
                     "configs/gemma.py:tiny")
  tiny = arg == "tiny"
  c = common.run(fused_step=not tiny, log_every=10 if tiny else 100)

  if tiny:  # random init, ToyWorld's tokenizer and stems
    c.model = hf.with_backbone(common.toyworld_model("tiny"), "gemma",
                               gemma.hf_config(TINY_GEMMA))
    c.model.embed_dim, c.model.mrl_dims = 64, (16, 32, 64)
    common.conv_stems(c.model, colour_gain=0.25)
  else:
    c.model = hf.encoder_config(arg, common.model("B"))
    if c.model.dense_dims:
      c.model.projection, c.model.embed_dim = "dense", c.model.dense_dims[-1]
    else:
      c.model.projection, c.model.embed_dim = "identity", c.model.width
    c.model.mrl_dims = tuple(d for d in (128, 256, 512) if d < c.model.embed_dim) + (
        c.model.embed_dim,)
  c.model.max_seq_len = 512 if tiny else 2048  # Gemma's positions run over the whole input

  if tiny:
    c.data = common.data(source="toyworld", toyworld=common.toyworld_world(c.model),
                         task_string_dropout=0.1)
    prefinetune_tasks = finetune_tasks = common.TOYWORLD_TASKS
  else:
    c.data = common.data(source="manifest", manifest="REPLACE_ME/train.jsonl", worker_count=8,
                         task_string_dropout=0.1)
    prefinetune_tasks = ("text_pairs", "image_captions", "audio_captions")
    finetune_tasks = ("retrieval", "image_retrieval", "audio_retrieval", "sts", "classification")
  c.loss = common.loss(type="nce", temperature=0.05, learn_temperature=True,
                       block_size=0 if tiny else 1024)
  c.optim = common.optim(lr=1e-3 if tiny else 2e-4, warmup_steps=10 if tiny else 1000,
                         backbone_lr_multiplier=0.0, backbone_multiplier_steps=10 if tiny else 1000)
  c.checkpoint = common.checkpoint(every=10 if tiny else 1000, keep=2 if tiny else 3)

  c.stage_order = ("prefinetune", "finetune", "soup")
  c.stages = ml_collections.ConfigDict()
  c.stages.prefinetune = dict(
      type="train", steps=30 if tiny else 30_000, init="random" if tiny else f"hf:{arg}",
      hard_negatives=False, eval_every=0,
      mixture=common.mixture({t: 1.0 for t in prefinetune_tasks}, batch_size=32 if tiny else 4096))
  c.stages.finetune = dict(
      type="train", steps=20 if tiny else 10_000, init="previous", hard_negatives=True,
      eval_every=0, optim={"lr": 5e-4 if tiny else 1e-4, "warmup_steps": 5 if tiny else 500,
                           "backbone_lr_multiplier": 1.0},
      mixture=common.mixture({t: 1.0 for t in finetune_tasks}, batch_size=32 if tiny else 1024))
  last = c.stages.finetune.steps
  every = c.checkpoint.every
  c.stages.soup = dict(type="soup", ingredients=(f"finetune:{last}", f"finetune:{last - every}"),
                       weights=None)

  c.eval = common.eval_settings(batch_size=64 if tiny else 512)
  if tiny:
    c.evals = toyworld_suite.evals(num_candidates=64, split="eval")
  else:
    c.evals = manifest_suite.evals("REPLACE_ME/eval.jsonl", tasks=("retrieval",))
  c.export = common.export()
  return c
