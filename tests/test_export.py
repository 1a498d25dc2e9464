"""Export -> serving bundle: its standalone embedder (no flax) matches the in-framework encoder."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import ml_collections
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from safetensors import safe_open
from scipy.io import wavfile

from configs import common
from gemb.data import features
from gemb.data import tokenizer as tokenizer_lib
from gemb.export import bundle as export_bundle
from gemb.model.encoder import mrl_prefixes
from gemb.serve import bundle as serve_bundle
from gemb.train import checkpoints
from serve_helpers import random_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODALITY_SETS = [["text"], ["image", "text"], ["text", "image", "audio", "video"]]


def _config():
  config = ml_collections.ConfigDict()
  config.model = common.model("tiny")
  # The smoke's kind of pixel stems: a stride-1 then a stride-2 convolution on images, one
  # stride-2 convolution on video frames, each patch's mean colour beside them.
  config.model.image_conv_channels, config.model.image_conv_strides = (8, 16), (1, 2)
  config.model.video_conv_channels = (8,)
  config.model.patch_colour_gain = 0.25
  config.stage_order = ("finetune",)
  # Three programs keep the test fast; image-only and audio/video-only inputs then run in the
  # smallest exported superset of their modalities, with masked empty slots.
  config.export = common.export(modality_sets=MODALITY_SETS, platforms=("cpu",))
  return config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A random-init tiny encoder saved as a training checkpoint, then exported."""
  tmp = tmp_path_factory.mktemp("export")
  config = _config()
  encoder = random_encoder(config.model, seed=3)
  _, params, _ = nnx.split(encoder, nnx.Param, ...)
  manager = checkpoints.make_manager(checkpoints.stage_dir(str(tmp), "finetune"), every=1, keep=1,
                                     async_save=False)
  checkpoints.save(manager, 7, {"params": {"encoder": params}}, {}, force=True)
  manager.wait_until_finished()
  manager.close()
  export_dir = str(tmp / "bundle")
  export_bundle.export(config, str(tmp), None, export_dir)  # None: last stage, latest step
  return config, encoder, export_dir, tmp


def _raw_inputs(folder):
  """Every modality alone, and interleaved mixes; some parts as files, some as arrays."""
  rng = np.random.default_rng(0)
  pixels = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
  png, wav, npy = (os.path.join(folder, name) for name in ("a.png", "b.wav", "c.npy"))
  Image.fromarray(pixels(24, 40, 3)).save(png)
  wavfile.write(wav, 16000, (rng.uniform(-0.5, 0.5, 6000) * 32767).astype(np.int16))
  np.save(npy, pixels(6, 48, 48, 3))
  return [
      [{"text": "a red circle"}],
      [{"image": pixels(20, 30, 3)}],
      [{"audio": rng.uniform(-1, 1, 8000).astype(np.float32)}],
      [{"video": pixels(5, 40, 40, 3)}],
      [{"image": png}, {"text": "what colour is the shape?"}],
      [{"text": "listen"}, {"audio": wav}, {"video": npy}, {"image": pixels(8, 8, 3)}],
      [{"text": "a caption"}, {"image": pixels(32, 32, 3)}, {"text": "and a second caption"}],
  ]


def _framework_embeddings(encoder, model_cfg, inputs, task_string=None):
  """The reference: gemb.data featurisation + packing, then the nnx Encoder."""
  side = features.pack_raw_inputs(inputs, model_cfg, truncate=False, task_string=task_string)
  return np.asarray(nnx.jit(lambda model, side: model(side))(encoder, side))


STANDALONE = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    import gemb.serve
    with open(sys.argv[2], "rb") as f:
      inputs = pickle.load(f)
    embedder = gemb.serve.load(sys.argv[1])
    full = embedder.embed(inputs)
    prefix = embedder.embed(inputs, mrl_dim=16)
    task = embedder.embed(inputs[:1], task_string="find the image")
    forbidden = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("flax", "optax", "orbax", "torch")
                       or m.startswith(("gemb.model", "gemb.train", "gemb.export")))
    assert not forbidden, forbidden
    np.savez(sys.argv[3], full=full, prefix=prefix, task=task)
""")


def test_standalone_embeddings_equal_the_framework_for_every_modality_and_mix(exported):
  config, encoder, export_dir, tmp = exported
  inputs = _raw_inputs(str(tmp))
  with open(tmp / "inputs.pkl", "wb") as f:
    pickle.dump(inputs, f)
  result = subprocess.run(
      [sys.executable, "-c", STANDALONE, export_dir, str(tmp / "inputs.pkl"), str(tmp / "out.npz")],
      cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp / "out.npz")

  reference = _framework_embeddings(encoder, config.model, inputs)
  print("max |standalone - framework| per input:", np.abs(out["full"] - reference).max(axis=1))
  np.testing.assert_allclose(out["full"], reference, rtol=0, atol=1e-5)
  prefix = np.asarray(mrl_prefixes(reference, [16])[0])
  np.testing.assert_allclose(out["prefix"], prefix, rtol=0, atol=1e-5)
  task = _framework_embeddings(encoder, config.model, inputs[:1],
                               "find the image")
  np.testing.assert_allclose(out["task"], task, rtol=0, atol=1e-5)
  assert np.abs(out["task"] - out["full"][:1]).max() > 1e-3  # the task string matters


def test_manifest_describes_the_model_limits_and_functions(exported):
  config, _, export_dir, _ = exported
  with open(os.path.join(export_dir, "manifest.json")) as f:
    manifest = json.load(f)
  model = config.model
  assert manifest["model"]["embed_dim"] == model.embed_dim
  assert manifest["model"]["mrl_dims"] == list(model.mrl_dims)
  assert manifest["modalities"] == ["text", "image", "audio", "video"]
  assert manifest["source"].endswith(os.path.join("finetune", "checkpoints", "7"))
  limits = manifest["limits"]
  assert (limits["max_parts"], limits["max_text_tokens"], limits["max_video_frames"]) == (
      model.max_parts, model.max_text_tokens, model.max_video_frames)
  # 25 ms windows every 10 ms: the last of max_audio_frames frames ends at this many seconds.
  assert limits["max_audio_seconds"] == pytest.approx(((model.max_audio_frames - 1) * 0.010
                                                       + 0.025))
  assert [f["modalities"] for f in manifest["functions"]] == [
      ["text"], ["text", "image"], ["text", "image", "audio", "video"]]
  for function in manifest["functions"]:
    assert os.path.exists(os.path.join(export_dir, function["file"]))
    assert all(shape.split("[")[1].startswith("batch,") for shape in function["inputs"])
  assert manifest["format_version"] == 2
  assert manifest["weights"] == {"file": "weights.safetensors", "format": "safetensors"}
  with safe_open(os.path.join(export_dir, "weights.safetensors"), framework="numpy") as weights:
    assert sum(weights.get_tensor(k).size for k in weights.keys()) == (
        manifest["model"]["parameters"])
  assert {"jax", "numpy", "flax"} <= set(manifest["versions"])


def test_weights_are_a_safetensors_file_with_every_parameter_of_the_encoder(exported):
  _, encoder, export_dir, _ = exported
  _, params, _ = nnx.split(encoder, nnx.Param, ...)
  expected = {"/".join(map(str, path)): np.asarray(value.get_value())
              for path, value in nnx.to_flat_state(params)}
  with safe_open(os.path.join(export_dir, "weights.safetensors"), framework="numpy") as weights:
    assert sorted(weights.keys()) == sorted(expected)
    for name, value in expected.items():
      np.testing.assert_array_equal(weights.get_tensor(name), value, err_msg=name)
      assert weights.get_tensor(name).dtype == value.dtype, name


def test_weights_keep_their_dtype_bfloat16_included(tmp_path):
  weights = {"blocks/0/mlp/up/kernel": np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4),
             "blocks/0/norm/scale": np.arange(4).astype(ml_dtypes.bfloat16),
             "temperature": np.array(0.07, np.float32)}
  entry = export_bundle.write_weights(weights, str(tmp_path))
  read = serve_bundle.read_weights(str(tmp_path), {"weights": entry})
  assert sorted(read) == sorted(weights)
  for name, value in weights.items():
    assert (read[name].dtype, read[name].shape) == (value.dtype, value.shape), name
    np.testing.assert_array_equal(read[name], value, err_msg=name)


def _as_format_version_1(export_dir, folder):
  """A copy of the bundle as the format_version 1 writer left it: np.savez(weights.npz, **weights)
  and a manifest without a "weights" entry."""
  shutil.copytree(export_dir, folder)
  manifest = serve_bundle.read_manifest(folder)
  np.savez(os.path.join(folder, "weights.npz"), **serve_bundle.read_weights(folder, manifest))
  os.remove(os.path.join(folder, "weights.safetensors"))
  del manifest["weights"]
  manifest["format_version"] = 1
  with open(os.path.join(folder, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
  return folder


def test_a_format_version_1_bundle_with_weights_npz_still_embeds_as_the_framework(exported):
  config, encoder, export_dir, tmp = exported
  old = _as_format_version_1(export_dir, str(tmp / "bundle_v1"))
  inputs = [[{"text": "a red circle"}], [{"text": "a blue square"}, {"text": "and a caption"}]]
  np.testing.assert_allclose(serve_bundle.load(old).embed(inputs),
                             _framework_embeddings(encoder, config.model, inputs),
                             rtol=0, atol=1e-5)


@pytest.mark.parametrize("version, file", [(2, "weights.safetensors"), (1, "weights.npz")])
def test_a_bundle_without_its_weights_file_is_an_error_naming_it(exported, tmp_path, version,
                                                                  file):
  _, _, export_dir, _ = exported
  folder = str(tmp_path / "bundle")
  if version == 1:
    _as_format_version_1(export_dir, folder)
  else:
    shutil.copytree(export_dir, folder)
  os.remove(os.path.join(folder, file))
  with pytest.raises(FileNotFoundError, match=f"weights file .*{file} is missing; re-export"):
    serve_bundle.load(folder)


def test_weights_that_do_not_fit_the_functions_are_refused_naming_the_parameter(exported,
                                                                                 tmp_path):
  _, _, export_dir, _ = exported
  folder = str(tmp_path / "bundle")
  shutil.copytree(export_dir, folder)
  weights = serve_bundle.read_weights(folder, serve_bundle.read_manifest(folder))
  dropped = sorted(weights)[0]
  del weights[dropped]
  export_bundle.write_weights(weights, folder)
  with pytest.raises(ValueError, match=f"do not fit .*missing \\['{dropped}'\\]"):
    serve_bundle.load(folder)


def test_export_refuses_params_of_another_model(exported, tmp_path):
  config, encoder, _, _ = exported
  _, params, _ = nnx.split(encoder, nnx.Param, ...)
  other = common.model("tiny")
  other.depth = 3
  with pytest.raises(ValueError, match="missing .*blocks/2"):
    export_bundle.export_params(other, params, str(tmp_path / "bundle"), config.export)


def test_export_settings_reject_unknown_keys():
  config = _config()
  config.export = {"max_batchsize": 8}
  with pytest.raises(ValueError, match="config.export has unknown keys"):
    export_bundle.export_settings(config)


# ------------------------------------------------- a Hugging Face tokenizer travels in the bundle

HF_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "a", "red", "mat"]


def _hf_tokenizer_folder(folder, max_seq_length: int) -> str:
  """A tokenizer-only sentence-transformers folder whose tokenizer.json keeps case (WordPiece of
  lowercase HF_WORDS, BERT's template) and whose sentence_bert_config.json asks to lowercase."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  tk = tokenizers.Tokenizer(tokenizers.models.WordPiece(
      {w: i for i, w in enumerate(HF_WORDS)}, unk_token="[UNK]"))
  tk.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tk.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  os.makedirs(folder)
  tk.save(os.path.join(folder, "tokenizer.json"))
  files = {"config.json": {"model_type": "bert", "max_position_embeddings": 16},
           "modules.json": [{"path": "", "type": "sentence_transformers.models.Transformer"}],
           "sentence_bert_config.json": {"max_seq_length": max_seq_length,
                                         "do_lower_case": True}}
  for name, content in files.items():
    with open(os.path.join(folder, name), "w") as f:
      json.dump(content, f)
  return str(folder)


def _hf_features(folder, max_text_tokens: int) -> features.FeatureConfig:
  model_cfg = common.model("tiny")
  model_cfg.tokenizer, model_cfg.max_text_tokens = f"hf:{folder}", max_text_tokens
  return features.FeatureConfig.from_config(model_cfg)


def test_a_lowercasing_hugging_face_tokenizer_travels_in_the_bundle_alone(tmp_path):
  folder = _hf_tokenizer_folder(tmp_path / "hf", max_seq_length=8)
  feature_cfg = _hf_features(folder, max_text_tokens=8)
  texts = ["The CAT sat", "A Red Mat", "the cat sat on a red mat on the mat", "a dog"]
  want = [feature_cfg.text_tokenizer.encode(t).tolist() for t in texts]
  assert want[0] == [2, 4, 5, 6, 3] and len(want[2]) == 8  # lowercased; cut to 8, [SEP] kept
  os.makedirs(tmp_path / "bundle")
  name = export_bundle.write_tokenizer(feature_cfg, str(tmp_path / "bundle"))
  shutil.rmtree(folder)
  bundled = tokenizer_lib.make_tokenizer(str(tmp_path / "bundle" / name),
                                         feature_cfg.vocab_size, feature_cfg.max_text_tokens)
  assert [bundled.encode(t).tolist() for t in texts] == want


def test_export_refuses_a_text_length_that_the_hugging_face_tokenizer_cuts_shorter(tmp_path):
  feature_cfg = _hf_features(_hf_tokenizer_folder(tmp_path / "hf", max_seq_length=8),
                             max_text_tokens=12)
  with pytest.raises(ValueError, match="truncates to 8 tokens, but config.model.max_text_"
                                       "tokens=12"):
    export_bundle.write_tokenizer(feature_cfg, str(tmp_path))
