"""Model size presets: `get_model_config(name)` returns the `config.model` ConfigDict.

The same dict holds the input limits that `gemb.data.packing.Layout.from_config` reads
(max_text_tokens, max_image_size, patch_size, n_mels, max_audio_frames, max_video_frames,
video_size), so the data pipeline and the encoder's position tables agree by construction.

  tiny  CPU smoke tests and the ToyWorld smoke run (seconds to compile and run).
  S     ~22M encoder params (ViT-S widths), a single GPU/TPU host.
  B     ~86M (ViT-B/BERT-base widths).
  L     ~300M (ViT-L/BERT-large widths), remat on.
"""
import ml_collections

_SIZES = {
    # name: (width, depth, num_heads, embed_dim)
    "tiny": (64, 2, 4, 64),
    "S": (384, 12, 6, 384),
    "B": (768, 12, 12, 768),
    "L": (1024, 24, 16, 1024),
}


def get_model_config(name: str = "tiny") -> ml_collections.ConfigDict:
  if name not in _SIZES:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(_SIZES)}")
  width, depth, num_heads, embed_dim = _SIZES[name]
  tiny = name == "tiny"
  c = ml_collections.ConfigDict()
  # Transformer.
  c.width = width
  c.depth = depth
  c.num_heads = num_heads
  c.mlp_ratio = 4.0
  c.dropout = 0.0
  c.remat = not tiny and name != "S"  # recompute block activations in the backward pass
  c.dtype = "float32" if tiny else "bfloat16"  # compute dtype; parameters stay float32
  # Output embedding and its Matryoshka prefixes.
  c.embed_dim = embed_dim
  # A tuple, so that `--config.model.mrl_dims="(32, 64)"` can override it.
  c.mrl_dims = (16, 32, 64) if tiny else (64, 128, 256, embed_dim)
  # Inputs: an input is a list of at most max_parts parts; the whole side is one sequence.
  c.tokenizer = "bytes"  # or the path of a SentencePiece .model
  c.vocab_size = 264  # byte-level: ids 3..258 are bytes + 3, 0 = padding, a few spare ids
  c.max_parts = 8
  c.max_seq_len = 512 if tiny else 2048
  c.max_text_tokens = 64 if tiny else 256
  c.patch_size = 8 if tiny else 16
  c.max_image_size = (32, 32) if tiny else (224, 224)
  # Channels of 3x3 convolutions before the patch embedding; () = linear patches (ViT).
  c.image_conv_channels = ()
  c.image_conv_strides = ()  # 1 or 2 per convolution; () = all 2
  c.video_conv_channels = ()  # the video stem's; () = the image stem's layout
  c.video_conv_strides = ()
  c.patch_colour_gain = 0.0  # > 0: conv stems also see each patch's mean colour, times this
  c.n_mels = 32 if tiny else 128
  c.max_audio_frames = 64 if tiny else 1024  # 10 ms hop: 0.64 s / 10.24 s
  # (frames, mel bins) per token. Tiny: each token is 40 ms of the whole spectrum, so a pitch is
  # one token's content rather than a pattern across frequency bands: single-task text->audio
  # R@1 after 300 steps 0.33 vs 0.25 with (4, 8), at a quarter of the tokens.
  c.audio_patch = (4, 32) if tiny else (16, 16)
  c.max_video_frames = 8 if tiny else 16
  c.video_size = (32, 32) if tiny else (128, 128)
  c.tubelet_frames = 2
  return c
