"""Specification of the gemb encoder (gemb/model) on the 'tiny' preset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from gemb.data.packing import Layout, pack_inputs
from gemb.model.encoder import Attention, Block, Encoder, Mlp, mrl_prefixes
from gemb.model.flops import encoder_flops
from gemb.model.inputs import check_side
from gemb.model.stems import PixelPatches
from model_helpers import shared_tables, with_nonzero_shared_tables

RNG = np.random.default_rng(0)


def text(n):
  return {"text": RNG.integers(1, 257, size=n).astype(np.int32)}


def image(h, w):
  return {"image": RNG.normal(size=(h, w, 3)).astype(np.float32)}


def audio(frames):
  return {"audio": RNG.normal(size=(frames, 32)).astype(np.float32)}


def video(frames):
  return {"video": RNG.normal(size=(frames, 32, 32, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def cfg():
  return common.model("tiny")


@pytest.fixture(scope="module")
def model(cfg):
  # Shared tables as after training (they start at zero): a table read at a wrong index shows.
  return with_nonzero_shared_tables(Encoder(cfg, rngs=nnx.Rngs(0)))


@nnx.jit
def embed(model, side):
  return model(side)


def layout(cfg, **max_parts):
  return Layout.from_config(cfg, max_parts)


# Inputs that fit the smallest layout below: at most one part per modality, short buffers.
MIXED = [
    [text(9), image(16, 8)],
    [audio(30), video(3)],
    [image(8, 16), text(16), audio(12)],
    [video(4), text(5)],
]


@pytest.mark.parametrize("inputs, max_parts", [
    ([[text(7)], [text(64)]], dict(text=1)),
    ([[image(32, 32)], [image(8, 24)]], dict(image=1)),
    ([[audio(64)], [audio(5)]], dict(audio=1)),
    ([[video(8)], [video(1)]], dict(video=1)),
    (MIXED, dict(text=1, image=1, audio=1, video=1)),
])
def test_embeddings_are_unit_vectors_of_embed_dim(cfg, model, inputs, max_parts):
  side = pack_inputs(inputs, layout(cfg, **max_parts))
  embeddings = np.asarray(embed(model, side))
  assert embeddings.shape == (len(inputs), cfg.embed_dim)
  assert embeddings.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-6)
  # Different inputs get different embeddings.
  assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-3


def test_mlp_applies_the_same_two_layer_gelu_map_to_every_token(cfg):
  # It multiplies [B * N, D] rows (faster on XLA's CPU backend): no token may see another's.
  mlp = Mlp(cfg, jnp.float32, rngs=nnx.Rngs(1))
  x = RNG.normal(size=(3, 5, cfg.width)).astype(np.float32)
  for l in (mlp.up, mlp.down):  # nonzero biases, so a misplaced one shows
    l.bias[...] = RNG.normal(size=l.bias.shape).astype(np.float32)
  up, down = [(np.asarray(l.kernel[...]), np.asarray(l.bias[...])) for l in (mlp.up, mlp.down)]
  hidden = x.astype(np.float64) @ up[0] + up[1]
  gelu = 0.5 * hidden * (1 + np.tanh(np.sqrt(2 / np.pi) * (hidden + 0.044715 * hidden ** 3)))
  want = gelu @ down[0] + down[1]
  np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), want, rtol=1e-4, atol=1e-5)
  one_token = np.asarray(mlp(jnp.asarray(x[1:2, 3:4])))  # alone: the same output
  np.testing.assert_allclose(one_token[0, 0], want[1, 3], rtol=1e-4, atol=1e-5)


def _layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _randomise(module, rng):
  """Every parameter (biases and norms too) to random values, so a misplaced one shows."""
  for path, param in nnx.iter_graph(module):
    if isinstance(param, nnx.Param):
      param.set_value(rng.normal(0, 0.3, param.get_value().shape).astype(np.float32))
  return module


def _attention_reference(attention, x, mask):
  """softmax(q k^T / sqrt(K) masked to real keys) v, then the output projection, in float64."""
  get = lambda layer, name: np.asarray(getattr(layer, name).get_value(), np.float64)
  q = np.einsum("bnd,dhk->bnhk", x, get(attention.query, "kernel")) + get(attention.query, "bias")
  k = np.einsum("bnd,dhk->bnhk", x, get(attention.key, "kernel"))
  v = np.einsum("bnd,dhk->bnhk", x, get(attention.value, "kernel")) + get(attention.value, "bias")
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bhqs,bshk->bqhk", weights, v)
  return np.einsum("bqhk,hkd->bqd", attended, get(attention.out, "kernel")) + get(attention.out,
                                                                                     "bias")


def test_attention_is_scaled_softmax_attention_over_real_keys(cfg):
  rng = np.random.default_rng(3)
  attention = _randomise(Attention(cfg, jnp.float32, rngs=nnx.Rngs(2)), rng)
  x = rng.normal(size=(3, 6, cfg.width)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]], bool)
  got = np.asarray(attention(jnp.asarray(x), jnp.asarray(mask)))
  np.testing.assert_allclose(got, _attention_reference(attention, x.astype(np.float64), mask),
                             rtol=1e-4, atol=1e-4)
  # Padding keys are ignored: changing them changes no output.
  changed = x.copy()
  changed[1, 2] += 5.0
  np.testing.assert_allclose(np.asarray(attention(jnp.asarray(changed), jnp.asarray(mask)))[1, 0],
                             got[1, 0], rtol=1e-5, atol=1e-5)


def test_block_is_pre_layer_norm_attention_then_mlp(cfg):
  rng = np.random.default_rng(4)
  block = _randomise(Block(cfg, jnp.float32, rngs=nnx.Rngs(5)), rng)
  x = rng.normal(size=(2, 5, cfg.width)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  get = lambda module, name: np.asarray(getattr(module, name).get_value(), np.float64)
  h = x.astype(np.float64)
  norm = lambda layer, v: _layer_norm(v, get(layer, "scale"), get(layer, "bias"))
  h = h + _attention_reference(block.attention, norm(block.attention_norm, h), mask)
  up, down = block.mlp.up, block.mlp.down
  h = h + _gelu(norm(block.mlp_norm, h) @ get(up, "kernel") + get(up, "bias")) @ get(
      down, "kernel") + get(down, "bias")
  got = np.asarray(block(jnp.asarray(x), jnp.asarray(mask), deterministic=True))
  np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-4)


def test_mrl_prefixes_are_renormalised_prefixes(cfg, model):
  embeddings = embed(model, pack_inputs(MIXED, layout(cfg, text=1, image=1, audio=1, video=1)))
  prefixes = mrl_prefixes(embeddings, cfg.mrl_dims)
  full = np.asarray(embeddings)
  for d, prefix in zip(cfg.mrl_dims, prefixes):
    expected = full[:, :d] / np.linalg.norm(full[:, :d], axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(prefix), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(prefix, axis=-1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="MRL dim 65"):
    mrl_prefixes(embeddings, [65])


def test_padding_does_not_change_embeddings(cfg, model):
  small = Layout(max_parts=dict(text=1, image=1, audio=1, video=1), max_text_tokens=16,
                 max_image_size=(16, 16), max_audio_frames=32, n_mels=32, max_video_frames=4,
                 video_size=(32, 32), patch_size=8)
  # More part slots, longer text buffer, bigger images, more audio and video frames.
  big = layout(cfg, text=3, image=2, audio=2, video=2)
  small_side, big_side = pack_inputs(MIXED, small), pack_inputs(MIXED, big)
  assert big_side["image"].shape[2:4] == (32, 32) and big_side["text_tokens"].shape[2] == 64
  np.testing.assert_allclose(np.asarray(embed(model, big_side)),
                             np.asarray(embed(model, small_side)), atol=1e-6)


@pytest.fixture(scope="module")
def conv_cfg():
  c = common.model("tiny")
  # Images: a stride-1 and two stride-2 convolutions, then 2x2 patches of 16 channels and the
  # patches' mean colour; video frames: their own two stride-2 convolutions.
  c.image_conv_channels, c.image_conv_strides = (8, 16, 16), (1, 2, 2)
  c.video_conv_channels = (8, 16)
  c.patch_colour_gain = 0.5
  return c


@pytest.fixture(scope="module")
def conv_model(conv_cfg):
  return with_nonzero_shared_tables(Encoder(conv_cfg, rngs=nnx.Rngs(0)))


def test_pixel_patches_end_with_each_patch_mean_colour_times_the_gain(conv_cfg):
  patches = PixelPatches(conv_cfg, "image", jnp.float32, rngs=nnx.Rngs(0))
  pixels = np.random.default_rng(0).normal(size=(2, 16, 32, 3)).astype(np.float32)
  out = np.asarray(patches(jnp.asarray(pixels), jnp.array([[16, 32], [16, 32]])))
  assert out.shape == (2, 2, 4, 2 * 2 * 16 + 3) and patches.features == out.shape[-1]
  want = pixels.reshape(2, 2, 8, 4, 8, 3).mean((2, 4)) * conv_cfg.patch_colour_gain
  np.testing.assert_allclose(out[..., -3:], want, rtol=1e-5, atol=1e-6)


def test_conv_stem_padding_does_not_change_embeddings(conv_cfg, conv_model):
  # An 8x16 image in a 16x16 buffer and in a 32x32 one, 3 video frames in 4 and in 8: the
  # convolutions see zeros beyond the real pixels either way (their outputs are zeroed there,
  # not a GELU of the bias), and a padding frame's patches have mean colour zero.
  inputs = [[image(8, 16)], [image(16, 8), text(4)], [image(32, 32), video(3)], [video(4)]]
  small = Layout(max_parts=dict(text=1, image=1, video=1), max_text_tokens=16,
                 max_image_size=(32, 32), max_video_frames=4, video_size=(32, 32), patch_size=8)
  big = layout(conv_cfg, text=2, image=3, video=2)
  small_side, big_side = pack_inputs(inputs, small), pack_inputs(inputs, big)
  np.testing.assert_allclose(np.asarray(embed(conv_model, big_side)),
                             np.asarray(embed(conv_model, small_side)), atol=1e-6)
  # The image alone decides: cropping the buffer to the real image changes nothing.
  alone = pack_inputs(inputs[:1], Layout(max_parts=dict(image=1), max_image_size=(8, 16),
                                         patch_size=8))
  np.testing.assert_allclose(np.asarray(embed(conv_model, alone))[0],
                             np.asarray(embed(conv_model, small_side))[0], atol=1e-6)


def test_shared_embeddings_start_at_zero(cfg):
  # Position, modality and part embeddings are offsets shared by every input: they start at
  # zero so that inputs do not start as one embedding (gemb/model/stems.py).
  model = Encoder(cfg, rngs=nnx.Rngs(0))
  tables = shared_tables(model)
  assert len(tables) == 13
  for table in tables:
    assert not np.any(table.get_value())
  # ...and inputs differ from the start.
  side = pack_inputs([[text(9)], [text(9)]], layout(model.cfg, text=1))
  embeddings = np.asarray(embed(model, side))
  assert embeddings[0] @ embeddings[1] < 0.99


def test_part_order_changes_embedding(cfg, model):
  t, i = text(9), image(16, 16)
  side = pack_inputs([[t, i], [i, t]], layout(cfg, text=1, image=1))
  model = nnx.clone(model)  # as after training: a part-index embedding that is not zero
  model.part_embed.set_value(RNG.normal(0, 0.02, model.part_embed.get_value().shape))
  embeddings = np.asarray(embed(model, side))
  assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-3
  # The part-index embedding is what carries the order: without it the two are the same.
  no_order = nnx.clone(model)
  no_order.part_embed.set_value(np.zeros_like(model.part_embed.get_value()))
  embeddings = np.asarray(embed(no_order, side))
  np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-6)


def test_physical_slot_order_does_not_matter(cfg, model):
  # Two texts stored in swapped slots but with their part indices swapped too: same input.
  side = pack_inputs([[text(6), image(8, 8), text(11)]], layout(cfg, text=2, image=1))
  swapped = dict(side, text_tokens=side["text_tokens"][:, ::-1],
                 text_part=side["text_part"][:, ::-1])
  np.testing.assert_allclose(np.asarray(embed(model, swapped)), np.asarray(embed(model, side)),
                             atol=1e-6)


def test_batch_permutation_permutes_embeddings(cfg, model):
  order = [2, 0, 3, 1]
  lay = layout(cfg, text=1, image=1, audio=1, video=1)
  embeddings = np.asarray(embed(model, pack_inputs(MIXED, lay)))
  permuted = np.asarray(embed(model, pack_inputs([MIXED[k] for k in order], lay)))
  np.testing.assert_allclose(permuted, embeddings[order], atol=1e-6)


def with_empty_example(side, row):
  side = {k: v.copy() for k, v in side.items()}
  for key in side:
    if key.endswith("_part"):
      side[key][row] = -1  # no parts: a padding row of an eval batch
  return side


def test_example_without_parts_embeds_to_zero(cfg, model):
  lay = layout(cfg, text=1, image=1, audio=1, video=1)
  side = with_empty_example(pack_inputs(MIXED, lay), 1)
  embeddings = np.asarray(embed(model, side))
  np.testing.assert_array_equal(embeddings[1], 0.0)
  np.testing.assert_allclose(embeddings[[0, 2, 3]],
                             np.asarray(embed(model, pack_inputs(MIXED, lay)))[[0, 2, 3]],
                             atol=1e-6)


@pytest.mark.parametrize("key, change, match", [
    ("image", lambda s: s["image"][:, :, :30, :30],
     r"side\['image'\] has shape \[4, 1, 30, 30, 3\]"),
    ("text_tokens", lambda s: np.zeros((4, 1, 65), np.int32), r"Lt<=64"),
    ("audio", lambda s: s["audio"][..., :16], r"n_mels=32"),
    ("video_frames", lambda s: s["video_frames"][:, None], r"side\['video_frames'\]"),
    ("text_tokens", lambda s: s["text_tokens"].astype(np.float32), r"integer"),
    ("depth_part", lambda s: np.zeros((4, 1), np.int32), r"unknown keys \['depth_part'\]"),
])
def test_bad_inputs_are_rejected_before_compilation(cfg, model, key, change, match):
  side = dict(pack_inputs(MIXED, layout(cfg, text=1, image=1, audio=1, video=1)))
  side[key] = change(side)
  with pytest.raises(ValueError, match=match):
    check_side(side, cfg)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), side)
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda m, s: m(s), model, abstract)  # traces, never compiles


def test_empty_and_too_long_sides_are_rejected(cfg, model):
  with pytest.raises(ValueError, match="side is empty"):
    nnx.eval_shape(lambda m, s: m(s), model, {})
  long = layout(cfg, text=8, image=1)  # 8 x 64 + 16 = 528 tokens > max_seq_len 512
  side = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      pack_inputs([[text(3)]], long))
  with pytest.raises(ValueError, match="sequence of 528 tokens > config.model.max_seq_len=512"):
    nnx.eval_shape(lambda m, s: m(s), model, side)
  bad_part = pack_inputs([[text(3)]], layout(cfg, text=1))
  bad_part["text_part"][0, 0] = cfg.max_parts
  with pytest.raises(ValueError, match="max_parts"):
    check_side(bad_part, cfg)


@pytest.mark.parametrize("key, value, match", [
    ("num_heads", 5, "config.model.num_heads=5: must divide width=64"),
    ("max_image_size", (30, 32), "config.model.max_image_size"),
    ("mrl_dims", [32, 16], "config.model.mrl_dims"),
    ("dtype", "float16", "config.model.dtype"),
    ("image_conv_channels", (8, 8, 8, 8), "config.model.image_conv_channels"),  # 2^4 > patch 8
    ("image_conv_channels", (8, 0), "config.model.image_conv_channels"),
    ("image_conv_strides", (2, 2), "config.model.image_conv_strides"),  # no convolutions
    ("video_conv_channels", (8, 8, 8, 8), "config.model.video_conv_channels"),
    ("patch_colour_gain", 0.1, "config.model.patch_colour_gain"),  # linear patches
])
def test_bad_config_is_rejected_with_its_key(key, value, match):
  bad = common.model("tiny")
  bad[key] = value
  with pytest.raises(ValueError, match=match):
    Encoder(bad, rngs=nnx.Rngs(0))


def test_bfloat16_compute_is_close_to_float32(cfg, model):
  bf16_cfg = common.model("tiny")
  bf16_cfg.dtype = "bfloat16"
  bf16_model = Encoder(bf16_cfg, rngs=nnx.Rngs(1))
  nnx.update(bf16_model, nnx.state(model, nnx.Param))  # same float32 parameters
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16_model, nnx.Param)))
  side = pack_inputs(MIXED, layout(cfg, text=1, image=1, audio=1, video=1))
  reference, low = np.asarray(embed(model, side)), np.asarray(embed(bf16_model, side))
  assert low.dtype == np.float32
  cosine = (reference * low).sum(-1)
  assert cosine.min() > 0.99, cosine
  assert np.abs(reference - low).max() > 0  # it did compute in bfloat16


def test_remat_gives_identical_outputs_and_finite_grads(cfg, model):
  remat_cfg = common.model("tiny")
  remat_cfg.remat = True
  remat_model = Encoder(remat_cfg, rngs=nnx.Rngs(0))
  nnx.update(remat_model, nnx.state(model, nnx.Param))
  # Lots of padding, fully padded attention rows and an example without parts: no NaN.
  side = with_empty_example(pack_inputs([[text(5), image(8, 16)], [text(3)]],
                                       layout(cfg, text=2, image=1)), 1)
  target = RNG.normal(size=(2, cfg.embed_dim)).astype(np.float32)

  @nnx.jit
  def value_and_grad(m):
    return nnx.value_and_grad(lambda m: (m(side) * target).sum())(m)

  loss, grads = value_and_grad(model)
  remat_loss, remat_grads = value_and_grad(remat_model)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for g, rg in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
    assert np.isfinite(g).all()
    np.testing.assert_allclose(rg, g, rtol=1e-5, atol=1e-7)


def test_dropout_only_in_training(cfg, model):
  drop_cfg = common.model("tiny")
  drop_cfg.dropout = 0.5
  drop_model = Encoder(drop_cfg, rngs=nnx.Rngs(0))
  nnx.update(drop_model, nnx.state(model, nnx.Param))
  side = pack_inputs([[text(7)], [text(30)]], layout(cfg, text=1))
  train = nnx.jit(lambda m, s, key: m(s, deterministic=False, dropout_key=key))
  np.testing.assert_allclose(np.asarray(embed(drop_model, side)), np.asarray(embed(model, side)),
                             atol=1e-6)
  first = np.asarray(train(drop_model, side, jax.random.key(1)))
  again = np.asarray(train(drop_model, side, jax.random.key(1)))
  second = np.asarray(train(drop_model, side, jax.random.key(2)))
  assert np.abs(first - np.asarray(embed(model, side))).max() > 1e-3
  np.testing.assert_array_equal(first, again)  # the key alone decides the mask
  assert np.abs(first - second).max() > 1e-3  # another key, another mask
  with pytest.raises(ValueError, match="dropout_key"):
    drop_model(side, deterministic=False)


def test_remat_with_dropout_trains_and_matches_the_gradients_without_remat(cfg, model):
  # The dropout keys enter the rematerialised blocks as arguments: the same key gives the same
  # masks, recomputed or not.
  models = []
  for remat in (False, True):
    c = common.model("tiny")
    c.dropout, c.remat = 0.3, remat
    m = Encoder(c, rngs=nnx.Rngs(0))
    nnx.update(m, nnx.state(model, nnx.Param))
    models.append(m)
  side = pack_inputs([[text(7), image(8, 16)], [text(20)]], layout(cfg, text=1, image=1))
  target = RNG.normal(size=(2, cfg.embed_dim)).astype(np.float32)

  @nnx.jit
  def value_and_grad(m, key):
    loss = lambda m: (m(side, deterministic=False, dropout_key=key) * target).sum()
    return nnx.value_and_grad(loss)(m)

  (loss, grads), (remat_loss, remat_grads) = [value_and_grad(m, jax.random.key(3))
                                              for m in models]
  deterministic = (np.asarray(embed(models[0], side)) * target).sum()
  assert abs(float(loss) - deterministic) > 1e-4  # dropout was applied
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for g, rg in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
    np.testing.assert_allclose(rg, g, rtol=1e-5, atol=1e-7)


def _stacked(model):
  """`model`'s parameters with its list of blocks stacked on a leading [depth] axis."""
  state = nnx.state(model, nnx.Param).to_pure_dict()
  blocks = [state["blocks"][i] for i in range(len(model.blocks))]
  state["blocks"] = jax.tree.map(lambda *layers: np.stack(layers), *blocks)
  return state


@pytest.mark.parametrize("remat, dropout", [(False, 0.0), (True, 0.3)])
def test_scanned_layers_equal_the_loop_over_blocks(cfg, model, remat, dropout):
  c = common.model("tiny")
  c.depth, c.scan_layers, c.remat, c.dropout = 3, True, remat, dropout
  scanned = Encoder(c, rngs=nnx.Rngs(0))
  loop_cfg = common.model("tiny")
  loop_cfg.depth, loop_cfg.remat, loop_cfg.dropout = 3, remat, dropout
  loop = with_nonzero_shared_tables(_randomise(Encoder(loop_cfg, rngs=nnx.Rngs(1)),
                                               np.random.default_rng(6)))
  assert scanned.blocks.mlp.up.kernel.get_value().shape == (3, c.width, 4 * c.width)
  nnx.update(scanned, _stacked(loop))
  side = pack_inputs(MIXED, layout(cfg, text=1, image=1, audio=1, video=1))
  target = RNG.normal(size=(len(MIXED), cfg.embed_dim)).astype(np.float32)

  @nnx.jit
  def value_and_grad(m, key):
    loss = lambda m: (m(side, deterministic=False, dropout_key=key) * target).sum()
    return nnx.value_and_grad(loss)(m)

  loss, grads = value_and_grad(loop, jax.random.key(4))
  scanned_loss, scanned_grads = value_and_grad(scanned, jax.random.key(4))
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)
  want = jax.tree.map(
      lambda *layers: np.stack(layers), *[grads["blocks"][i] for i in range(3)])
  for g, sg in zip(jax.tree.leaves(want), jax.tree.leaves(scanned_grads["blocks"])):
    np.testing.assert_allclose(sg, g, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(scanned_grads["part_embed"][...], grads["part_embed"][...],
                             rtol=1e-4, atol=1e-6)


def test_scanned_layers_are_sharded_by_the_rules_with_a_replicated_layer_axis():
  from gemb import sharding
  c = common.model("tiny")
  c.depth, c.scan_layers = 2, True
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = sharding.create_sharded(lambda: Encoder(c, rngs=nnx.Rngs(0)), mesh)
  kernel = model.blocks.mlp.up.kernel.get_value()
  assert kernel.shape == (2, c.width, 4 * c.width)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def _matmul_flops(jaxpr) -> int:
  """2 x (output size) x (contracted size) summed over every dot_general, sub-jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
      kept = [d for k, d in enumerate(rhs) if k not in rhs_contract and k not in rhs_batch]
      total += 2 * int(np.prod(lhs)) * int(np.prod(kept))
    if eqn.primitive.name == "conv_general_dilated":  # 2 x outputs x (window x input channels)
      rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out channels, in channels, *window)
      total += 2 * int(np.prod(out)) * int(np.prod([rhs[d] for d in spec[1:]]))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        if hasattr(sub, "eqns"):
          total += _matmul_flops(sub)
        elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
          total += _matmul_flops(sub.jaxpr)
  return total


def test_flops_match_the_traced_matmuls(cfg, model):
  side = pack_inputs(MIXED, layout(cfg, text=2, image=1, audio=1, video=2))
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda st, s: nnx.merge(graphdef, st)(s))(state, side)
  assert encoder_flops(cfg, side) == _matmul_flops(jaxpr.jaxpr)
  conv_cfg = common.model("tiny")
  conv_cfg.image_conv_channels = (8, 16, 24)
  graphdef, state = nnx.split(Encoder(conv_cfg, rngs=nnx.Rngs(0)))
  jaxpr = jax.make_jaxpr(lambda st, s: nnx.merge(graphdef, st)(s))(state, side)
  assert encoder_flops(conv_cfg, side) == _matmul_flops(jaxpr.jaxpr) > encoder_flops(cfg, side)
  conv_cfg.image_conv_strides = (1, 2, 1)  # one stride-1 convolution more, at full resolution
  conv_cfg.video_conv_channels = (8,)  # video frames: their own single convolution
  conv_cfg.patch_colour_gain = 0.1
  graphdef, state = nnx.split(Encoder(conv_cfg, rngs=nnx.Rngs(0)))
  jaxpr = jax.make_jaxpr(lambda st, s: nnx.merge(graphdef, st)(s))(state, side)
  assert encoder_flops(conv_cfg, side) == _matmul_flops(jaxpr.jaxpr)
  # Hand count for one text part slot of L tokens, batch 1.
  length, d, f = 16, cfg.width, int(cfg.width * cfg.mlp_ratio)
  shapes = {"text_tokens": (1, 1, length), "text_part": (1, 1)}
  per_block = 8 * length * d * d + 4 * length * length * d + 4 * length * d * f
  assert encoder_flops(cfg, shapes) == cfg.depth * per_block + 2 * d * cfg.embed_dim
