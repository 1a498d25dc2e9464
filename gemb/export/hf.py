"""Export: a gemb checkpoint of an Encoder with a bert or gemma backbone -> a Hugging Face
sentence-transformers folder that embeds texts as gemb does, without gemb.

    python -m launch.main --config=configs/minilm.py --workdir=runs/minilm --mode=export \
        --format=hf --export_dir=runs/minilm/hf [--checkpoint=finetune]

writes

  config.json, model.safetensors   the backbone as its family's transformers model (BertModel,
                                   Gemma3TextModel): gemb.model.hf's weight table, inverted
  tokenizer files                  the tokenizer folder's (config.model.tokenizer "hf:FOLDER"),
                                   or a tokenizer.json path's
  modules.json, sentence_bert_config.json, 1_Pooling/, [2_Dense/ ...], N_Normalize/
                                   the Encoder's pooling, projection ("linear": one Dense layer
                                   without bias; "dense": the folder's Dense layers) and its L2
                                   normalisation
  config_sentence_transformers.json  cosine similarity; gemb's mrl_dims under "gemb"
  gemb_stems.safetensors, gemb_model.json, README.md
                                   the parameters a text model has no place for (the image, audio
                                   and video stems, the part table) and config.model: `load` gives
                                   the whole gemb Encoder back

sentence-transformers embeds one text per input, which gemb packs as text part slot 0: the part
embedding of slot 0 is added to every token, so it is folded into the text embeddings (BERT's
embedding LayerNorm bias; Gemma's token table, divided by its sqrt(width) scale). `load` takes it
out again. The folder holds float32 weights; gemb with config.model.dtype "bfloat16" computes in
bfloat16, sentence-transformers in float32 unless told otherwise.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import safetensors.numpy
from flax import nnx

from gemb import sharding
from gemb.data import tokenizer as tokenizer_lib
from gemb.model import gemma
from gemb.model import hf
from gemb.model.encoder import Encoder
from gemb.train import checkpoints

STEMS_FILE, MODEL_JSON, README = "gemb_stems.safetensors", "gemb_model.json", "README.md"
# The files of a Hugging Face tokenizer that a folder may hold, copied as they are.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja")
MODULE_TYPES = {kind: f"sentence_transformers.models.{kind}"
                for kind in ("Transformer", "Pooling", "Dense", "Normalize")}
ACTIVATION_CLASSES = {gemb: torch for torch, gemb in hf.DENSE_ACTIVATIONS.items()}
# The gemb parameter of a layout of hf.HF_SHAPES -> its checkpoint tensor (the inverse of
# hf._read_block over the whole parameter).
TO_HF = {
    "same": lambda p: p,
    "first_rows": lambda p: p,  # config.json's max_position_embeddings becomes the rows gemb has
    "transposed": lambda p: p.T,                                    # [in, out] -> [out, in]
    "heads_in": lambda p: p.reshape(p.shape[0], -1).T,              # [D, H, K] -> [H * K, D]
    "heads_bias": lambda p: p.reshape(-1),                          # [H, K] -> [H * K]
    "heads_out": lambda p: p.reshape(-1, p.shape[-1]).T,            # [H, K, D] -> [D, H * K]
}
# The keys of a family's config that the folder's sentence-transformers modules set, not its
# config.json.
SET_BY_MODULES = ("dense_dims", "dense_bias", "dense_activation")
# Where each family's weights take the part embedding of text slot 0 (which gemb adds to every
# token of a one-text input), and its factor there.
PART_FOLD = {"bert": ("stems/text/norm/bias", lambda cfg: 1.0),
             "gemma": ("stems/text/token_embed/embedding", lambda cfg: cfg.width ** -0.5)}


def _flat(params: nnx.State) -> dict[str, np.ndarray]:
  """{"/"-joined path: float32 numpy array} of an Encoder's params, stacked blocks unstacked
  into "blocks/{i}/..." as an unscanned Encoder names them."""
  flat = {}
  for path, variable in nnx.to_flat_state(params):
    key, value = "/".join(map(str, path)), np.asarray(variable.get_value(), np.float32)
    if path[0] == "blocks" and not isinstance(path[1], int):  # scan_layers: [depth, ...]
      flat.update({f"blocks/{i}/{key[len('blocks/'):]}": layer for i, layer in enumerate(value)})
    else:
      flat[key] = value
  return flat


def _hf_config_json(model_cfg, original: dict | None, positions: int) -> dict:
  """config.json of the backbone: the original folder's (checked against config.model), else
  built from config.model. A BERT's max_position_embeddings is the rows gemb has; a Gemma
  runs bidirectionally, as gemb runs it."""
  family = model_cfg.backbone
  if original is not None:
    theirs = hf.FAMILIES[family][0](original, "float32")
    differ = sorted(k for k, v in theirs.items() if k not in hf.RUN_KEYS + SET_BY_MODULES
                    and json.dumps(model_cfg.get(k)) != json.dumps(v))
    if differ:
      raise ValueError(f"config.model {', '.join(f'{k}={model_cfg.get(k)!r}' for k in differ)} "
                       f"differ from the config.json of {_tokenizer_key(model_cfg)}; export "
                       "needs the config.model that the checkpoint was trained with")
    config = dict(original)
  elif family == "bert":
    config = dict(architectures=["BertModel"], model_type="bert", vocab_size=model_cfg.vocab_size,
                  hidden_size=model_cfg.width, num_hidden_layers=model_cfg.depth,
                  num_attention_heads=model_cfg.num_heads, intermediate_size=model_cfg.mlp_dim,
                  hidden_act="gelu_new" if model_cfg.gelu_approximate else "gelu",
                  type_vocab_size=model_cfg.type_vocab_size,
                  layer_norm_eps=model_cfg.layer_norm_eps, position_embedding_type="absolute",
                  pad_token_id=0)
  else:
    layer_types = {gemb: name for name, gemb in gemma.LAYER_TYPES.items()}
    config = dict(architectures=["Gemma3TextModel"], model_type="gemma3_text",
                  vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.width,
                  num_hidden_layers=model_cfg.depth, num_attention_heads=model_cfg.num_heads,
                  num_key_value_heads=model_cfg.num_kv_heads, head_dim=model_cfg.head_dim,
                  intermediate_size=model_cfg.mlp_dim, hidden_activation="gelu_pytorch_tanh",
                  rms_norm_eps=model_cfg.rms_norm_eps,
                  layer_types=[layer_types[t] for t in model_cfg.layer_types],
                  sliding_window=model_cfg.sliding_window, rope_theta=model_cfg.rope_theta,
                  rope_local_base_freq=model_cfg.rope_local_theta,
                  query_pre_attn_scalar=_int_if_whole(model_cfg.query_pre_attn_scalar),
                  max_position_embeddings=model_cfg.max_seq_len, pad_token_id=0)
  if family == "bert":
    config["max_position_embeddings"] = positions
  else:
    config["use_bidirectional_attention"] = True
  return config


def _int_if_whole(value: float) -> int | float:
  """transformers' config classes check types: Gemma 3's query_pre_attn_scalar is an int."""
  return int(value) if float(value).is_integer() else value


def _tokenizer_key(model_cfg) -> str:
  return f"config.model.tokenizer={model_cfg.tokenizer!r}"


def _tokenizer_source(model_cfg) -> tuple[str | None, list[str], bool]:
  """(the folder of the original config.json or None, tokenizer files to copy, lowercase)."""
  name = model_cfg.tokenizer
  if name.startswith("hf:"):
    st = hf.sentence_transformer(name[len("hf:"):])
    folder = st["transformer"]
    files = [os.path.join(folder, f) for f in TOKENIZER_FILES
             if os.path.exists(os.path.join(folder, f))]
    return folder, files, st["do_lower_case"]
  if name.endswith(".json"):
    return None, [name], False
  raise ValueError(f"{_tokenizer_key(model_cfg)}: a Hugging Face export needs a Hugging Face "
                   "tokenizer ('hf:FOLDER' or a tokenizer.json path)")


def _write_json(path: str, value) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f, indent=2)


def _save(path: str, tensors: dict[str, np.ndarray]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
                              metadata={"format": "pt"})  # transformers reads "pt" files


def _dense_layers(model_cfg, flat) -> list[tuple[dict, dict]]:
  """[(Dense config.json, tensors)] of the Encoder's projection, in order."""
  if model_cfg.projection == "linear":
    kernel = flat["projection/kernel"]  # [width, embed_dim]
    return [(dict(in_features=kernel.shape[0], out_features=kernel.shape[1], bias=False,
                  activation_function=ACTIVATION_CLASSES["identity"]),
             {"linear.weight": kernel.T})]
  layers = []
  if model_cfg.projection == "dense":
    for i, (bias, activation) in enumerate(zip(model_cfg.dense_bias,
                                               model_cfg.dense_activation)):
      kernel = flat[f"dense/layers/{i}/kernel"]
      tensors = {"linear.weight": kernel.T}
      if bias:
        tensors["linear.bias"] = flat[f"dense/layers/{i}/bias"]
      layers.append((dict(in_features=kernel.shape[0], out_features=kernel.shape[1],
                          bias=bool(bias), activation_function=ACTIVATION_CLASSES[activation]),
                     tensors))
  return layers


def export_params(model_cfg: ml_collections.ConfigDict, params: nnx.State, out_dir: str,
                  source: str = "") -> str:
  """Writes the Hugging Face folder of an Encoder built from `model_cfg` with `params` (its
  nnx.State of Params) to `out_dir` (new or empty); returns `out_dir`."""
  family = model_cfg.backbone
  if family not in hf.FAMILIES:
    raise ValueError(f"config.model.backbone={family!r}: a Hugging Face export needs a "
                     f"pretrained family's backbone ({sorted(hf.FAMILIES)})")
  folder, tokenizer_files, lowercase = _tokenizer_source(model_cfg)
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"--export_dir={out_dir} is not empty; choose a new folder")
  flat = _flat(params)
  fold_path, factor = PART_FOLD[family]
  flat[fold_path] = flat[fold_path] + factor(model_cfg) * flat["part_embed"][0]
  table = hf.FAMILIES[family][1](model_cfg)
  tensors = {name: TO_HF[layout](flat[path]) for name, (path, layout) in table.items()}
  written = {path for path, _ in table.values()} | {
      p for p in flat if p.startswith(("projection/", "dense/"))}
  stems = {p: v for p, v in flat.items() if p not in written}  # other stems, part_embed
  max_length = tokenizer_lib.make_tokenizer(model_cfg.tokenizer, None,
                                            model_cfg.max_text_tokens).max_length
  original = None
  if folder:
    with open(os.path.join(folder, "config.json")) as f:
      original = json.load(f)

  os.makedirs(out_dir, exist_ok=True)
  try:
    _write_json(os.path.join(out_dir, "config.json"), _hf_config_json(
        model_cfg, original, flat["stems/text/positions"].shape[0] if family == "bert" else 0))
    _save(os.path.join(out_dir, hf.SINGLE_FILE), tensors)
    for path in tokenizer_files:
      shutil.copy(path, os.path.join(out_dir, "tokenizer.json" if folder is None
                                     else os.path.basename(path)))
    if folder is None:  # a bare tokenizer.json: transformers needs to know its class
      import tokenizers  # pylint: disable=g-import-not-at-top
      pad = tokenizers.Tokenizer.from_file(model_cfg.tokenizer).id_to_token(0)
      _write_json(os.path.join(out_dir, "tokenizer_config.json"), dict(
          tokenizer_class="PreTrainedTokenizerFast", pad_token=pad, model_max_length=max_length))
    _write_json(os.path.join(out_dir, "sentence_bert_config.json"),
                dict(max_seq_length=max_length, do_lower_case=lowercase))
    modules = [("Transformer", "")]
    _write_json(os.path.join(out_dir, "1_Pooling", "config.json"), {
        "word_embedding_dimension": model_cfg.width,
        **{key: hf.POOLING_KEYS[key] == model_cfg.pooling for key in hf.POOLING_KEYS}})
    modules.append(("Pooling", "1_Pooling"))
    for dense_config, dense_tensors in _dense_layers(model_cfg, flat):
      path = f"{len(modules)}_Dense"
      _write_json(os.path.join(out_dir, path, "config.json"), dense_config)
      _save(os.path.join(out_dir, path, hf.SINGLE_FILE), dense_tensors)
      modules.append(("Dense", path))
    path = f"{len(modules)}_Normalize"
    os.makedirs(os.path.join(out_dir, path))
    modules.append(("Normalize", path))
    _write_json(os.path.join(out_dir, "modules.json"), [
        {"idx": i, "name": str(i), "path": path, "type": MODULE_TYPES[kind]}
        for i, (kind, path) in enumerate(modules)])
    _write_json(os.path.join(out_dir, "config_sentence_transformers.json"), {
        "similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None,
        "gemb": {"embed_dim": model_cfg.embed_dim, "mrl_dims": list(model_cfg.mrl_dims),
                 "source": source}})
    _save(os.path.join(out_dir, STEMS_FILE), stems)
    with open(os.path.join(out_dir, MODEL_JSON), "w") as f:
      f.write(model_cfg.to_json(indent=2))
    with open(os.path.join(out_dir, README), "w") as f:
      f.write(_readme(model_cfg))
  except BaseException:
    shutil.rmtree(out_dir)  # no half-written folder is left to look like a model
    raise
  return out_dir


def _readme(model_cfg) -> str:
  dims = list(model_cfg.mrl_dims)
  return f"""# A gemb embedding model's text encoder ({model_cfg.backbone} backbone)

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(FOLDER)  # FOLDER: the path of this folder
embeddings = model.encode(texts)  # [N, {model_cfg.embed_dim}] unit vectors, as gemb embeds texts
# Matryoshka dims {dims}: the prefix, re-normalised (as gemb's mrl_prefixes)
small = SentenceTransformer(FOLDER, truncate_dim={dims[0]}).encode(texts, normalize_embeddings=True)
```

sentence-transformers' `truncate_dim` cuts without re-normalising: pass
`normalize_embeddings=True`, or compare with cosine similarity (this folder's similarity).

Each input is one text, which gemb embeds as text part slot 0: the part embedding of that slot
is folded into the text embeddings. The image, audio and video stems and the part table are in
`{STEMS_FILE}` ({{gemb parameter path: float32 array}}),
config.model in `{MODEL_JSON}`; gemb loads the whole multimodal Encoder back with

```python
from gemb import sharding
from gemb.export import hf
model_cfg, encoder = hf.load(FOLDER, sharding.make_mesh({{}}))
```
"""


def load(out_dir: str, mesh: jax.sharding.Mesh) -> tuple[ml_collections.ConfigDict, Encoder]:
  """(config.model, Encoder) that `export_params` wrote to the folder `out_dir`, every
  parameter in its sharding on `mesh`; config.model.tokenizer is the folder's own
  ("hf:out_dir")."""
  with open(os.path.join(out_dir, MODEL_JSON)) as f:
    model_cfg = ml_collections.ConfigDict(json.load(f))
  model_cfg.tokenizer = f"hf:{os.path.abspath(out_dir)}"
  graphdef, abstract, rest = nnx.split(nnx.eval_shape(
      lambda: Encoder(model_cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
  backbone = {"/".join(map(str, p)): np.asarray(v)
              for p, v in hf.read_params(out_dir, abstract, mesh).items()}
  values = {**backbone, **safetensors.numpy.load_file(os.path.join(out_dir, STEMS_FILE))}
  if model_cfg.projection == "linear":
    dense = safetensors.numpy.load_file(os.path.join(
        hf.sentence_transformer(out_dir)["dense"][0], hf.SINGLE_FILE))
    values["projection/kernel"] = dense["linear.weight"].T
  fold_path, factor = PART_FOLD[model_cfg.backbone]
  fold = factor(model_cfg) * values["part_embed"][0]
  values[fold_path] = values[fold_path] - fold
  shardings = dict(nnx.to_flat_state(sharding.param_shardings(abstract, mesh)))
  flat = []
  for path, variable in nnx.to_flat_state(abstract):
    key = "/".join(map(str, path))
    if key not in values:
      raise ValueError(f"{out_dir}: no tensor fills gemb parameter {key}")
    flat.append((path, variable.replace(jax.device_put(
        np.asarray(values[key], variable.get_value().dtype), shardings[path].get_value()))))
  return model_cfg, nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


def export(config: ml_collections.ConfigDict, workdir: str, checkpoint_ref: str | None,
           out_dir: str) -> str:
  """--mode=export --format=hf: the checkpoint (default: the last stage's latest) -> a Hugging
  Face folder in out_dir. Returns out_dir."""
  path = checkpoints.resolve(checkpoint_ref or config.stage_order[-1], workdir)
  if jax.process_index() != 0:  # multi-host: one process writes the folder
    return out_dir
  one_device = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  _, params, _ = checkpoints.load_encoder(config.model, one_device, path)
  export_params(config.model, params, out_dir, source=path)
  print(f"exported {path} -> {os.path.abspath(out_dir)} (a sentence-transformers folder; "
        f"{README} there says how to load it)", flush=True)
  return out_dir
