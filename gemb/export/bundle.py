"""Export: a training checkpoint -> a serving bundle (see gemb/serve/bundle.py for the format).

    python -m launch.main --config=configs/smoke.py --workdir=runs/smoke --mode=export \
        --export_dir=runs/smoke/bundle [--checkpoint=finetune:200]

The encoder is exported with `jax.export` once per modality set (text, image, image+text, ...):
a packed side holds only the arrays of the modalities present, so each set is its own program.
In each, the batch size and the number of part slots of every modality are symbolic, so one
serialization serves any batch and any number of parts; the buffers of one part slot are fixed
at the config limits (max_text_tokens, max_image_size, ...), exactly as the training layouts
pad them. Parameters are an argument, saved once in weights.safetensors.

Settings come from `config.export` (serving-side limits that the model config does not hold;
configs/common.py's `export()` has every key and its default).
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import platform
import shutil
import subprocess
import time
from typing import Any, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
from flax import nnx
from jax import export as jax_export
from safetensors import numpy as safetensors_np

from gemb import sharding
from gemb.data import audio as audio_lib
from gemb.data import features
from gemb.data import tokenizer as tokenizer_lib
from gemb.model import inputs as model_inputs
from gemb.model.encoder import Encoder
from gemb.serve import bundle as serve_bundle
from gemb.train import checkpoints
from gemb.train import config_check

SLOT_DIMS = {"text": "text_parts", "image": "image_parts", "audio": "audio_parts",
             "video": "video_parts"}


def export_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.export` as a dict, checked: a missing or unknown key is an error naming it."""
  config_check.export(config.get("export"))
  return dict(config.export)


def tokens_per_part(model_cfg) -> dict[str, int]:
  """Encoder tokens of one part slot of each modality, with buffers at the config limits."""
  shapes = _slot_shapes(model_cfg, {m: 1 for m in serve_bundle.MODALITIES}, batch=1)
  return {m: tokens for m, (_, tokens) in model_inputs.token_counts(shapes, model_cfg).items()}


def _slot_shapes(model_cfg, slots: Mapping[str, Any], batch: Any) -> dict[str, tuple]:
  """Shapes of a packed side with `slots` part slots per modality (ints or symbolic dims)."""
  c = model_cfg
  shapes = {}
  for m, p in slots.items():
    shapes[f"{m}_part"] = (batch, p)
    if m == "text":
      shapes["text_tokens"] = (batch, p, c.max_text_tokens)
    elif m == "image":
      shapes["image"] = (batch, p, *c.max_image_size, 3)
      shapes["image_hw"] = (batch, p, 2)
    elif m == "audio":
      shapes["audio"] = (batch, p, c.max_audio_frames, c.n_mels)
      shapes["audio_frames"] = (batch, p)
    else:
      shapes["video"] = (batch, p, c.max_video_frames, *c.video_size, 3)
      shapes["video_frames"] = (batch, p)
  return shapes


def side_spec(model_cfg, modalities: Sequence[str]) -> dict[str, jax.ShapeDtypeStruct]:
  """The packed side of `modalities` with a symbolic batch and symbolic part-slot counts.

  The constraint `sum(tokens per slot * slots) <= max_seq_len` lets the encoder's sequence
  length check hold for every shape the function accepts.
  """
  per_part = tokens_per_part(model_cfg)
  names = [SLOT_DIMS[m] for m in modalities]
  length = " + ".join(f"{per_part[m]}*{SLOT_DIMS[m]}" for m in modalities)
  batch, *slots = jax_export.symbolic_shape(
      ", ".join(["batch", *names]), constraints=(f"{length} <= {model_cfg.max_seq_len}",))
  shapes = _slot_shapes(model_cfg, dict(zip(modalities, slots)), batch)
  floats = ("image", "audio", "video")
  return {k: jax.ShapeDtypeStruct(s, jnp.float32 if k in floats else jnp.int32)
          for k, s in shapes.items()}


def modality_sets(model_cfg, requested: Sequence[Sequence[str]] | None) -> list[tuple[str, ...]]:
  """The modality sets to export, each in MODALITIES order."""
  per_part = tokens_per_part(model_cfg)
  fits = lambda mods: sum(per_part[m] for m in mods) <= model_cfg.max_seq_len
  if requested is None:
    every = [s for n in range(1, len(serve_bundle.MODALITIES) + 1)
             for s in itertools.combinations(serve_bundle.MODALITIES, n)]
    return [s for s in every if fits(s)]
  out = []
  for mods in requested:
    unknown = sorted(set(mods) - set(serve_bundle.MODALITIES))
    if unknown or not mods:
      raise ValueError(f"config.export.modality_sets entry {list(mods)}: modalities must be a "
                       f"non-empty subset of {serve_bundle.MODALITIES}")
    mods = tuple(m for m in serve_bundle.MODALITIES if m in mods)
    if not fits(mods):
      raise ValueError(f"config.export.modality_sets entry {list(mods)}: one part of each "
                       f"needs {sum(per_part[m] for m in mods)} tokens > config.model."
                       f"max_seq_len={model_cfg.max_seq_len}")
    if mods not in out:
      out.append(mods)
  return out


def _flat_params(params: nnx.State) -> dict[str, np.ndarray]:
  """The encoder's params as {"blocks/0/mlp/up/kernel": float32 array, ...}."""
  flat = {}
  for path, value in nnx.to_flat_state(params):
    value = value.get_value() if isinstance(value, nnx.Variable) else value
    flat["/".join(map(str, path))] = np.asarray(jax.device_get(value))
  return flat


def embed_function(model_cfg, weight_names: Sequence[str]):
  """f(weights: {path: array}, side) -> [B, embed_dim]: the encoder with params as an argument.

  `weight_names` are the "/"-joined parameter paths the weights dict will have.
  """
  graphdef, abstract_params, abstract_rest = nnx.split(
      nnx.eval_shape(lambda: Encoder(model_cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
  paths = [path for path, _ in nnx.to_flat_state(abstract_params)]
  expected = sorted("/".join(map(str, p)) for p in paths)
  if expected != sorted(weight_names):
    missing = sorted(set(expected) - set(weight_names))[:5]
    extra = sorted(set(weight_names) - set(expected))[:5]
    raise ValueError(f"the params do not match an Encoder built from config.model (another "
                     f"model preset?): missing {missing}, unexpected {extra}")

  def embed(weights, side):
    state = nnx.from_flat_state([(p, nnx.Param(weights["/".join(map(str, p))])) for p in paths])
    # The rest (dropout RNG state) is unused when deterministic, so its abstract value will do.
    return nnx.merge(graphdef, state, abstract_rest)(side, deterministic=True)
  return embed


def _versions() -> dict[str, str]:
  versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
              "flax": flax.__version__, "python": platform.python_version()}
  try:
    versions["gemb_commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True,
        text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  return versions


def _prepare_dir(export_dir: str) -> None:
  """Creates `export_dir`, or empties it if it holds an earlier bundle; refuses other content."""
  if os.path.isdir(export_dir) and os.listdir(export_dir):
    if not os.path.exists(os.path.join(export_dir, serve_bundle.MANIFEST)):
      raise FileExistsError(f"--export_dir={export_dir} is not empty and holds no bundle; "
                            "choose a new folder")
    os.remove(os.path.join(export_dir, serve_bundle.MANIFEST))  # no half-new bundle looks valid
    shutil.rmtree(os.path.join(export_dir, serve_bundle.FUNCTIONS_DIR), ignore_errors=True)
    if os.path.exists(os.path.join(export_dir, serve_bundle.NPZ_WEIGHTS)):  # a version 1 bundle
      os.remove(os.path.join(export_dir, serve_bundle.NPZ_WEIGHTS))
  os.makedirs(os.path.join(export_dir, serve_bundle.FUNCTIONS_DIR), exist_ok=True)


def write_weights(weights: Mapping[str, np.ndarray], export_dir: str) -> dict[str, str]:
  """Writes {"/"-joined path: array} (any dtype, bfloat16 too) as the bundle's safetensors file;
  returns its manifest entry."""
  safetensors_np.save_file(dict(weights), os.path.join(export_dir, serve_bundle.WEIGHTS))
  return {"file": serve_bundle.WEIGHTS, "format": "safetensors"}


def write_tokenizer(feature_cfg: features.FeatureConfig, export_dir: str) -> str:
  """Writes config.model's tokenizer into the bundle; returns its file name there.

  A SentencePiece model is copied as it is. A Hugging Face tokenizer (config.model.tokenizer
  "hf:FOLDER") becomes a tokenizer.json that needs nothing else: the lowercasing its folder asks
  for (sentence-transformers' do_lower_case) is a Lowercase normaliser in the file, and it
  truncates to max_text_tokens, as serving builds it.
  """
  tokenizer = feature_cfg.text_tokenizer
  if not isinstance(tokenizer, tokenizer_lib.HuggingFaceTokenizer):
    shutil.copyfile(tokenizer.path, os.path.join(export_dir, serve_bundle.TOKENIZER))
    return serve_bundle.TOKENIZER
  if tokenizer.max_length != feature_cfg.max_text_tokens:
    raise ValueError(f"tokenizer {feature_cfg.tokenizer!r} truncates to {tokenizer.max_length} "
                     f"tokens, but config.model.max_text_tokens={feature_cfg.max_text_tokens}; a "
                     "bundle's tokenizer truncates to max_text_tokens, so set it to "
                     f"{tokenizer.max_length} (gemb.model.hf.encoder_config does)")
  with open(tokenizer.path) as f:
    spec = json.load(f)
  if tokenizer.lowercase:
    spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}] + (
        [spec["normalizer"]] if spec.get("normalizer") else [])}
  with open(os.path.join(export_dir, serve_bundle.HF_TOKENIZER), "w") as f:
    json.dump(spec, f, ensure_ascii=False)
  return serve_bundle.HF_TOKENIZER


def export_params(model_cfg: ml_collections.ConfigDict, params: nnx.State, export_dir: str,
                  settings: Mapping[str, Any], source: str = "") -> dict[str, Any]:
  """Writes the bundle of an encoder built from `model_cfg` with `params`; returns its manifest.

  Args:
    model_cfg: config.model.
    params: the encoder's nnx.State of Params (as in a checkpoint's `params` item).
    export_dir: the bundle folder (created; an earlier bundle there is replaced).
    settings: the export settings (config.export, every key of configs/common.py's export()).
    source: where the params came from, recorded in the manifest.
  """
  config_check.export(settings, "export settings")
  start = time.perf_counter()
  weights = _flat_params(params)
  embed = jax.jit(embed_function(model_cfg, list(weights)))
  weight_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
  feature_cfg = features.FeatureConfig.from_config(model_cfg)
  _prepare_dir(export_dir)

  functions = []
  sets = modality_sets(model_cfg, settings["modality_sets"])
  for mods in sets:
    exported = jax_export.export(embed, platforms=tuple(settings["platforms"]))(
        weight_spec, side_spec(model_cfg, mods))
    file = os.path.join(serve_bundle.FUNCTIONS_DIR,
                        serve_bundle.function_name(mods) + ".jaxexport")
    with open(os.path.join(export_dir, file), "wb") as f:
      f.write(exported.serialize())
    functions.append({"modalities": list(mods), "file": file,
                      "inputs": [str(a) for a in exported.in_avals[len(weights):]],
                      "calling_convention_version": exported.calling_convention_version})
    print(f"[export] {len(functions)}/{len(sets)} {file}", flush=True)
  weights_entry = write_weights(weights, export_dir)

  feature_settings = {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in dataclasses.asdict(feature_cfg).items() if k != "truncate"}
  if feature_cfg.tokenizer not in ("", "bytes"):
    feature_settings["tokenizer"] = write_tokenizer(feature_cfg, export_dir)
  max_audio_samples = audio_lib.max_samples(
      model_cfg.max_audio_frames, feature_cfg.sample_rate, feature_cfg.audio_window_ms,
      feature_cfg.audio_hop_ms)
  manifest = {
      "format": serve_bundle.FORMAT, "format_version": serve_bundle.FORMAT_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "source": source,
      "model": {"embed_dim": model_cfg.embed_dim, "mrl_dims": list(model_cfg.mrl_dims),
                "width": model_cfg.width, "depth": model_cfg.depth,
                "num_heads": model_cfg.num_heads, "dtype": model_cfg.dtype,
                "parameters": int(sum(v.size for v in weights.values()))},
      "modalities": sorted({m for f in functions for m in f["modalities"]},
                           key=serve_bundle.MODALITIES.index),
      "functions": functions,
      "weights": weights_entry,
      "tokens_per_part": tokens_per_part(model_cfg),
      "limits": {
          "max_parts": model_cfg.max_parts, "max_text_tokens": model_cfg.max_text_tokens,
          "max_image_pixels": int(settings["max_image_pixels"]),
          "max_audio_seconds": max_audio_samples / feature_cfg.sample_rate,
          "max_video_frames": model_cfg.max_video_frames, "max_seq_len": model_cfg.max_seq_len,
          "max_inputs_per_request": int(settings["max_inputs_per_request"]),
          "max_request_bytes": int(settings["max_request_bytes"])},
      "serving": {"max_batch": int(settings["max_batch"]),
                  "batch_timeout_ms": float(settings["batch_timeout_ms"])},
      "features": feature_settings,
      "task_string_format": features.TASK_STRING_FORMAT,
      "platforms": list(settings["platforms"]),
      "versions": _versions(),
      "model_config": model_cfg.to_dict(),
  }
  partial = os.path.join(export_dir, serve_bundle.MANIFEST + ".partial")
  with open(partial, "w") as f:
    json.dump(manifest, f, indent=2, default=lambda x: list(x) if isinstance(x, tuple) else str(x))
  os.replace(partial, os.path.join(export_dir, serve_bundle.MANIFEST))  # the bundle is complete
  print(f"[export] wrote {export_dir} ({len(functions)} functions) in "
        f"{time.perf_counter() - start:.1f} s", flush=True)
  return manifest


def export(config: ml_collections.ConfigDict, workdir: str, checkpoint_ref: str | None,
           export_dir: str) -> str:
  """--mode=export: the checkpoint (default: the last stage's latest) -> a bundle in export_dir.

  Returns the bundle path.
  """
  reference = checkpoint_ref or config.stage_order[-1]
  path = checkpoints.resolve(reference, workdir)
  if jax.process_index() != 0:  # multi-host: one process writes the bundle
    return export_dir
  one_device = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  _, params, _ = checkpoints.load_encoder(config.model, one_device, path)
  export_params(config.model, params, export_dir, export_settings(config), source=path)
  print(f"exported {path} -> {os.path.abspath(export_dir)}", flush=True)
  return export_dir
