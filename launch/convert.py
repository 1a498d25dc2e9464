"""A Hugging Face model folder -> a gemb checkpoint that any stage starts from and that exports.

  python -m launch.convert --hf=PATH --out=DIR [--config=configs/x.py[:arg]]

writes

  DIR/0/          the Encoder's params as one checkpoint step, as the soup stage saves one
  DIR/model.json  config.model: the architecture the params are for
  DIR/hf/         the folder's JSON files (config, modules, pooling, tokenizer.json), without
                  weights: the tokenizer comes with the checkpoint (config.model.tokenizer is
                  "hf:DIR/hf"), and hf.encoder_config("DIR/hf", ...) rebuilds the architecture

config.model is the --config's model around the folder's backbone (gemb.model.hf.encoder_config);
without --config, configs/common.py's model("tiny") whose embedding is the checkpoint's own:
the pooled output (projection "identity") or that of its Dense layers ("dense"), at the
checkpoint's text length. Parameters the folder does not have (other modalities' stems) keep
their random init. Each device reads only its slice of each tensor (the mesh is the --config's,
default all devices along fsdp).
"""
from __future__ import annotations

import os
import shutil
import time

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs: the tests import it beside other commands."""
  flags.DEFINE_string("hf", None, "The Hugging Face model folder (config.json, model.safetensors, "
                      "tokenizer.json; a sentence-transformers folder's modules too).")
  flags.DEFINE_string("out", None, "The checkpoint folder to write (new or empty).")
  config_flags.DEFINE_config_file("config", None, "Optional: a config whose model (stems, limits, "
                                  "embed_dim, projection) and mesh to use.", lock_config=False)
  flags.mark_flags_as_required(["hf", "out"])


STEP = 0
MODEL_JSON = "model.json"
HF_DIR = "hf"  # the folder's JSON files, without weights
MESH = {"data": 1, "fsdp": -1, "tensor": 1}  # without --config: each device holds a slice
WEIGHT_INDEX = ".safetensors.index.json"  # a JSON file that names weights, which are left out


def default_model(path: str):
  """configs/common.py's model("tiny") whose embedding is the checkpoint's own (the pooled
  output, or its Dense layers' output), at the checkpoint's text length."""
  from configs import common  # pylint: disable=g-import-not-at-top
  from gemb.model import hf  # pylint: disable=g-import-not-at-top
  _, backbone = hf.read_config(path)
  model_cfg = common.model("tiny")
  dense_dims = tuple(backbone.dense_dims)
  model_cfg.projection = "dense" if dense_dims else "identity"
  model_cfg.embed_dim = dense_dims[-1] if dense_dims else backbone.width
  model_cfg.mrl_dims = (*(d for d in model_cfg.mrl_dims if d < model_cfg.embed_dim),
                        model_cfg.embed_dim)
  # The checkpoint's positions; encoder_config caps it at its tokenizer's length.
  model_cfg.max_text_tokens = backbone.max_text_tokens
  model_cfg = hf.encoder_config(path, model_cfg)
  model_cfg.max_seq_len = max(model_cfg.max_seq_len, model_cfg.max_text_tokens)
  return model_cfg


def copy_configs(path: str, target: str) -> None:
  """Copies the JSON files of the folder `path` (subfolders included) to `target`, leaving out
  weights and the index of sharded weights."""
  ignore = lambda folder, names: [n for n in names if not (
      os.path.isdir(os.path.join(folder, n)) or n.endswith(".json")) or n.endswith(WEIGHT_INDEX)]
  shutil.copytree(path, target, ignore=ignore)


def convert(path: str, out: str, model_cfg=None, mesh_cfg=None):
  """Writes the checkpoint of the Hugging Face folder `path` to `out` (see the module
  docstring); returns its config.model. `model_cfg` (a config.model, changed in place) and
  `mesh_cfg` (config.mesh) default to default_model(path) and MESH."""
  from gemb import sharding  # pylint: disable=g-import-not-at-top
  from gemb.model import hf  # pylint: disable=g-import-not-at-top
  from gemb.train import checkpoints  # pylint: disable=g-import-not-at-top
  path, out = os.path.abspath(path), os.path.abspath(out)
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f"--out={out} is not empty; choose a new folder")
  checkpoints.resolve(f"hf:{path}", "")  # a Hugging Face folder, or an error saying it is not
  os.makedirs(out, exist_ok=True)
  try:
    copy_configs(path, os.path.join(out, HF_DIR))
    # The architecture read from the copy, so that config.model.tokenizer names the copy.
    model_cfg = hf.encoder_config(os.path.join(out, HF_DIR),
                                  model_cfg if model_cfg is not None else default_model(path))
    mesh = sharding.make_mesh(mesh_cfg or MESH)
    _, params, _ = checkpoints.load_encoder(model_cfg, mesh, f"hf:{path}")
    manager = checkpoints.make_manager(out, every=1, keep=1, async_save=False)
    checkpoints.save(manager, STEP, {"params": {"encoder": params}}, {"converted_from": path},
                     force=True)
    manager.wait_until_finished()
    manager.close()
    with open(os.path.join(out, MODEL_JSON), "w") as f:
      f.write(model_cfg.to_json(indent=2))
  except BaseException:
    shutil.rmtree(out)  # no half-written checkpoint is left to look like one
    raise
  return model_cfg


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax's chatter off; the console is for a person
  start = time.perf_counter()
  config = FLAGS.config
  model_cfg = convert(FLAGS.hf, FLAGS.out, config.model if config else None,
                      config.get("mesh") if config else None)
  out = os.path.abspath(FLAGS.out)
  print(f"converted {os.path.abspath(FLAGS.hf)} -> {out} ({model_cfg.backbone}: width "
        f"{model_cfg.width}, depth {model_cfg.depth}, embed_dim {model_cfg.embed_dim}, "
        f"{model_cfg.pooling} pooling, projection {model_cfg.projection}) in "
        f"{time.perf_counter() - start:.0f} s\n"
        f"To start a stage from it, in a config:\n"
        f"  config.model = ml_collections.ConfigDict(json.load(open("
        f"{os.path.join(out, MODEL_JSON)!r})))\n"
        f"  # or: hf.encoder_config({os.path.join(out, HF_DIR)!r}, config.model)\n"
        f"  config.stages.<stage>.init = {out!r}\n"
        f"To export it: python -m launch.main --config=... --workdir=... --mode=export "
        f"--checkpoint={out} --export_dir=...", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
