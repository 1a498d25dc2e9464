"""Hugging Face model folders -> gemb models, without torch.

A folder holds config.json, model.safetensors (or model.safetensors.index.json and its shards)
and tokenizer.json; a sentence-transformers folder adds modules.json, whose modules say where
the transformer lives and how its tokens become an embedding (Pooling config, Dense layers,
Normalize). `read_config` turns config.json into the gemb config of the checkpoint's family;
`read_params` places every checkpoint tensor straight into its parameter's sharding on a mesh,
each device reading only its own slice (`jax.make_array_from_callback` over `safetensors`' lazy
slices), so a large model is never whole on one host; `load` builds the family's standalone
model with them (a BertEmbedder or a GemmaEmbedder); `encoder_config` makes a config.model
whose Encoder takes them as its backbone. A per-family table maps checkpoint tensor names to
gemb parameter paths (those of the Encoder's stems/text and blocks, stacked for scan_layers or
not, and of the Dense layers); a tensor that is missing, unexpected or mis-shaped is an error
that names it. `tokenizer` is the folder's own.
"""
from __future__ import annotations

import contextlib
import json
import os
import re

import jax
import ml_collections
import ml_dtypes  # noqa: F401  registers numpy's bfloat16, which safetensors needs for bf16 tensors
import numpy as np
from flax import nnx
from safetensors import safe_open

from gemb.model import gemma
from gemb.model.bert import BertEmbedder
from gemb.sharding import make_mesh, param_shardings

SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
# sentence-transformers Pooling modes (legacy boolean keys in their concatenation order, and
# the newer `pooling_mode` names) -> gemb.model.bert.pool modes.
POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}
POOLING_NAMES = {"cls": "cls", "max": "max", "mean": "mean",
                 "mean_sqrt_len_tokens": "mean_sqrt_len"}
DENSE_ACTIVATIONS = {"torch.nn.modules.linear.Identity": "identity",
                     "torch.nn.modules.activation.Tanh": "tanh"}
BERT_GELUS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}  # -> approximate


def _read_json(folder: str, name: str, default=None):
  path = os.path.join(folder, name)
  if not os.path.exists(path):
    if default is not None:
      return default
    raise FileNotFoundError(f"{path} does not exist; a Hugging Face model folder needs it")
  with open(path) as f:
    return json.load(f)


def sentence_transformer(path: str) -> dict:
  """What a folder's modules.json says (defaults for a plain transformers folder):
  {"transformer": folder of config.json + weights, "pooling": modes or None (the family's
   default), "dense": [folder of each Dense layer, in order], "normalize": bool,
   "max_seq_length": int or None, "do_lower_case": bool}."""
  info = {"transformer": path, "pooling": None, "dense": [], "normalize": False,
          "max_seq_length": None, "do_lower_case": False}
  modules = _read_json(path, "modules.json", default=[])
  kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
  if "Normalize" in kinds[:-1]:
    raise ValueError(f"{os.path.join(path, 'modules.json')}: modules {kinds} are not supported; "
                     "gemb reads Transformer, Pooling, Dense layers, then Normalize last")
  for kind, module in zip(kinds, modules):
    folder = os.path.join(path, module.get("path", ""))
    if kind == "Transformer":
      info["transformer"] = folder
      st = _read_json(folder, "sentence_bert_config.json", default={})
      info["max_seq_length"] = st.get("max_seq_length")
      info["do_lower_case"] = bool(st.get("do_lower_case", False))
    elif kind == "Pooling":
      info["pooling"] = _pooling_modes(_read_json(folder, "config.json"), folder)
    elif kind == "Dense":
      info["dense"].append(folder)
    elif kind == "Normalize":
      info["normalize"] = True
    else:
      raise ValueError(f"{os.path.join(path, 'modules.json')}: module {module['type']!r} is not "
                       "supported; gemb reads Transformer, Pooling, Dense and Normalize")
  return info


def _pooling_modes(config: dict, folder: str) -> tuple[str, ...]:
  modes = config.get("pooling_mode")
  if modes is None:
    modes = [name for key, name in POOLING_KEYS.items() if config.get(key)]
    unknown = [k for k, v in config.items() if k.startswith("pooling_mode") and v
               and k not in POOLING_KEYS]
  else:
    modes = [modes] if isinstance(modes, str) else list(modes)
    unknown = [m for m in modes if m not in POOLING_NAMES]
    modes = [POOLING_NAMES.get(m) for m in modes]
  if unknown or not modes or config.get("include_prompt", True) is False:
    raise ValueError(f"{folder}/config.json: pooling {unknown or config} is not supported; gemb "
                     f"pools with {sorted(POOLING_NAMES)} (include_prompt true)")
  return tuple(modes)


def bert_config(hf: dict, dtype: str) -> ml_collections.ConfigDict:
  """A BERT config.json (a dict) -> the config of gemb.model.bert."""
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"config.json position_embedding_type={hf['position_embedding_type']!r}: "
                     "gemb's bert has learned absolute positions only")
  if hf.get("hidden_act") not in BERT_GELUS:
    raise ValueError(f"config.json hidden_act={hf.get('hidden_act')!r}: gemb's bert knows "
                     f"{sorted(BERT_GELUS)}")
  return ml_collections.ConfigDict(dict(
      vocab_size=hf["vocab_size"], width=hf["hidden_size"], depth=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
      max_text_tokens=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      gelu_approximate=BERT_GELUS[hf["hidden_act"]], dtype=dtype, dropout=0.0,
      attention_impl="xla",
      pooling=("cls",), dense_dims=(), dense_bias=(), dense_activation=(), normalize=False))


def bert_weights(cfg) -> dict[str, tuple[str, str]]:
  """Checkpoint tensor name (prefix removed) -> (gemb parameter path, layout); the paths of
  a BertEmbedder, which are those of an Encoder with a bert backbone."""
  table = {
      "embeddings.word_embeddings.weight": ("stems/text/token_embed/embedding", "same"),
      "embeddings.position_embeddings.weight": ("stems/text/positions", "first_rows"),
      "embeddings.token_type_embeddings.weight": ("stems/text/token_types", "same"),
      "embeddings.LayerNorm.weight": ("stems/text/norm/scale", "same"),
      "embeddings.LayerNorm.bias": ("stems/text/norm/bias", "same"),
  }
  for i in range(cfg.depth):
    hf, gemb = f"encoder.layer.{i}.", f"blocks/{i}/"
    for name in ("query", "key", "value"):
      table[f"{hf}attention.self.{name}.weight"] = (f"{gemb}attention/{name}/kernel", "heads_in")
      table[f"{hf}attention.self.{name}.bias"] = (f"{gemb}attention/{name}/bias", "heads_bias")
    table.update({
        f"{hf}attention.output.dense.weight": (f"{gemb}attention/out/kernel", "heads_out"),
        f"{hf}attention.output.dense.bias": (f"{gemb}attention/out/bias", "same"),
        f"{hf}attention.output.LayerNorm.weight": (f"{gemb}attention_norm/scale", "same"),
        f"{hf}attention.output.LayerNorm.bias": (f"{gemb}attention_norm/bias", "same"),
        f"{hf}intermediate.dense.weight": (f"{gemb}mlp/up/kernel", "transposed"),
        f"{hf}intermediate.dense.bias": (f"{gemb}mlp/up/bias", "same"),
        f"{hf}output.dense.weight": (f"{gemb}mlp/down/kernel", "transposed"),
        f"{hf}output.dense.bias": (f"{gemb}mlp/down/bias", "same"),
        f"{hf}output.LayerNorm.weight": (f"{gemb}mlp_norm/scale", "same"),
        f"{hf}output.LayerNorm.bias": (f"{gemb}mlp_norm/bias", "same"),
    })
  return table


# Per family: config.json -> gemb config (with the family's default pooling), weight table,
# the model class, and checkpoint tensors that the model does not use (buffers, BertModel's
# CLS pooler, pre-training heads, a causal LM's output head).
FAMILIES = {
    "bert": (bert_config, bert_weights, BertEmbedder,
             re.compile(r"(.*\.)?position_ids$|pooler\.|cls\.")),
    "gemma": (gemma.hf_config, gemma.hf_weights, gemma.GemmaEmbedder, gemma.IGNORED),
}
MODEL_TYPES = {"bert": "bert", "gemma3_text": "gemma"}  # config.json model_type -> family


def dense_weights(layer: int, bias: bool) -> dict[str, tuple[str, str]]:
  """The weight table of the folder of Dense layer `layer` (gemb.model.bert.Dense)."""
  table = {"linear.weight": (f"dense/layers/{layer}/kernel", "transposed")}
  if bias:
    table["linear.bias"] = (f"dense/layers/{layer}/bias", "same")
  return table

# Layout of a checkpoint tensor relative to its gemb parameter of shape s: the checkpoint shape,
# and how to read the block of the parameter that `spans` ((start, stop) per axis) covers.
HF_SHAPES = {
    "same": lambda s: tuple(s),
    "transposed": lambda s: (s[1], s[0]),        # torch Linear [out, in] -> kernel [in, out]
    "heads_in": lambda s: (s[1] * s[2], s[0]),   # [H * K, D] -> [D, H, K]
    "heads_bias": lambda s: (s[0] * s[1],),      # [H * K] -> [H, K]
    "heads_out": lambda s: (s[2], s[0] * s[1]),  # [D, H * K] -> [H, K, D]
    "first_rows": lambda s: tuple(s),            # a table's first rows (fewer positions)
}


def _read_block(tensor, layout: str, spans, shape) -> np.ndarray:
  """The block `spans` of a gemb parameter of `shape` from its checkpoint `tensor` (a lazy
  safetensors slice: only the rows and columns of the block are read)."""
  if layout in ("same", "first_rows"):
    return tensor[tuple(slice(a, b) for a, b in spans)]
  if layout == "transposed":
    (i0, i1), (o0, o1) = spans
    return tensor[o0:o1, i0:i1].T
  if layout == "heads_in":
    (d0, d1), (h0, h1), (k0, k1) = spans
    k = shape[2]
    return tensor[h0 * k:h1 * k, d0:d1].T.reshape(d1 - d0, h1 - h0, k)[..., k0:k1]
  if layout == "heads_bias":
    (h0, h1), (k0, k1) = spans
    k = shape[1]
    return tensor[h0 * k:h1 * k].reshape(h1 - h0, k)[:, k0:k1]
  (h0, h1), (k0, k1), (d0, d1) = spans  # heads_out
  k = shape[1]
  return tensor[d0:d1, h0 * k:h1 * k].T.reshape(h1 - h0, k, d1 - d0)[:, k0:k1]


class _Tensors:
  """The tensors of one folder's model.safetensors or of its sharded index, opened lazily."""

  def __init__(self, folder: str, stack: contextlib.ExitStack):
    if os.path.exists(os.path.join(folder, INDEX_FILE)):
      self.file_of = _read_json(folder, INDEX_FILE)["weight_map"]
    elif os.path.exists(os.path.join(folder, SINGLE_FILE)):
      self.file_of = None
    else:
      torch_only = [f for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")
                    if os.path.exists(os.path.join(folder, f))]
      raise FileNotFoundError(
          f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}"
          + (f" (only {torch_only[0]}: convert it to safetensors, e.g. with transformers' "
             "save_pretrained(..., safe_serialization=True))" if torch_only else ""))
    files = sorted(set(self.file_of.values())) if self.file_of else [SINGLE_FILE]
    self.handles = {f: stack.enter_context(safe_open(os.path.join(folder, f), framework="numpy"))
                    for f in files}
    if self.file_of is None:
      self.file_of = {name: SINGLE_FILE for name in self.handles[SINGLE_FILE].keys()}
    self.folder = folder

  def names(self) -> list[str]:
    return sorted(self.file_of)

  def slice(self, name: str):
    return self.handles[self.file_of[name]].get_slice(name)


def _stack_layers(table: dict, shapes: dict) -> dict:
  """Table entries -> (path, layout, layer): a per-layer path "blocks/{i}/..." becomes
  ("blocks/...", layout, i) where the model stacks its blocks on a leading [depth] axis
  (config.model.scan_layers); other entries get layer None."""
  stacked = {}
  for name, (path, layout) in table.items():
    match = re.fullmatch(r"(.*blocks)/(\d+)/(.*)", path)
    if match and path not in shapes and f"{match[1]}/{match[3]}" in shapes:
      stacked[name] = (f"{match[1]}/{match[3]}", layout, int(match[2]))
    else:
      stacked[name] = (path, layout, None)
  return stacked


def _match(tensors: _Tensors, table: dict, ignored: re.Pattern | None, shapes: dict) -> tuple:
  """Checkpoint tensors -> table entries: ({gemb path: {layer: (name, layout)}}, [errors]).

  Tolerates one common prefix ("bert.", none, ...) and the old LayerNorm gamma/beta names.
  """
  anchor = next(iter(table))
  prefixes = [n[:-len(anchor)] for n in tensors.names() if n.endswith(anchor)]
  prefix = prefixes[0] if len(prefixes) == 1 else ""
  by_name = {}
  for name in tensors.names():
    key = name[len(prefix):] if name.startswith(prefix) else name
    by_name[re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight",
                   re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))] = name
  errors = [f"missing tensor {prefix}{key} (for gemb parameter {path})"
            for key, (path, _, _) in table.items() if key not in by_name]
  errors += [f"unexpected tensor {name}" for key, name in by_name.items()
             if key not in table and not (ignored and ignored.match(key))]
  found = {}
  for key, name in by_name.items():
    if key in table:
      path, layout, layer = table[key]
      target = shapes[path] if layer is None else shapes[path][1:]
      expected = HF_SHAPES[layout](target)
      shape = tuple(tensors.slice(name).get_shape())
      if layout == "first_rows" and shape[0] >= expected[0]:
        shape = (expected[0], *shape[1:])  # a model with fewer positions reads the first rows
      if shape != expected:
        errors.append(f"mis-shaped tensor {name}: {list(shape)}, expected {list(expected)} "
                      f"(for gemb parameter {path} of shape {list(shapes[path])})")
      found.setdefault(path, {})[layer] = (name, layout)
  return found, errors


def read_config(path: str, dtype: str = "float32") -> tuple[str, ml_collections.ConfigDict]:
  """(family, gemb model config) of the Hugging Face folder `path`, with the pooling, Dense
  layers and normalisation its sentence-transformers modules define (a plain transformers
  folder: the family's pooling, cls for bert and mean for gemma, no Dense, no normalisation)."""
  return _read_config(sentence_transformer(path), dtype)


def _read_config(st: dict, dtype: str):
  hf = _read_json(st["transformer"], "config.json")
  family = MODEL_TYPES.get(hf.get("model_type"))
  if family is None:
    raise ValueError(f"{st['transformer']}/config.json model_type={hf.get('model_type')!r}: "
                     f"gemb loads {sorted(MODEL_TYPES)}")
  cfg = FAMILIES[family][0](hf, dtype)
  cfg.pooling = st["pooling"] or cfg.pooling
  cfg.normalize = st["normalize"]
  dims, biases, activations = [], [], []
  for folder in st["dense"]:
    dense = _read_json(folder, "config.json")
    activation = DENSE_ACTIVATIONS.get(dense.get("activation_function"))
    if activation is None or dense.get("use_residual"):
      raise ValueError(f"{folder}/config.json: activation_function="
                       f"{dense.get('activation_function')!r} (use_residual="
                       f"{dense.get('use_residual', False)}) is not supported; gemb knows "
                       f"{sorted(DENSE_ACTIVATIONS)} without residual")
    dims.append(dense["out_features"])
    biases.append(bool(dense.get("bias", True)))
    activations.append(activation)
  cfg.dense_dims, cfg.dense_bias, cfg.dense_activation = (tuple(dims), tuple(biases),
                                                          tuple(activations))
  return family, cfg


# The keys of a family's config that an Encoder does not take over: config.model's own settings
# and limits, and the head that config.model.pooling and the Encoder's normalisation replace.
RUN_KEYS = ("dtype", "dropout", "attention_impl", "max_text_tokens", "pooling", "normalize")


def with_backbone(model_cfg: ml_collections.ConfigDict, family: str,
                  family_cfg: ml_collections.ConfigDict, where: str = "config.model"):
  """`model_cfg` with the backbone `family` of the sizes in `family_cfg` (a family's config, e.g.
  `gemma.hf_config(config_json)`), in place; returns it. A random-init backbone of a pretrained
  family (configs/gemma.py:tiny) and `encoder_config` both build theirs with it."""
  pooling = tuple(family_cfg.pooling)
  if pooling not in (("mean",), ("cls",)):
    raise ValueError(f"{where}: pooling {pooling} is not one gemb's Encoder has ('mean', 'cls')")
  with model_cfg.unlocked():
    for key, value in family_cfg.items():
      if key not in RUN_KEYS:
        model_cfg[key] = value
    model_cfg.backbone, model_cfg.pooling = family, pooling[0]
    model_cfg.stem_norm = True  # fresh stems at the scale of the backbone's own embeddings
  return model_cfg


def encoder_config(path: str, model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`model_cfg` (a config.model, its stems and limits kept) with the backbone of the Hugging
  Face folder `path`: the family and every size its config.json gives, the pooling, the Dense
  layers (dense_dims, dense_bias, dense_activation; () if none) and the tokenizer (in place;
  returns it). An Encoder built from it takes the folder's weights with `read_params`; its
  embedding is the checkpoint's pooled output with `projection="identity"`, and the output of
  the folder's Dense layers with `projection="dense"` (embed_dim = dense_dims[-1])."""
  family, cfg = read_config(path)
  with_backbone(model_cfg, family, cfg, where=path)
  with model_cfg.unlocked():
    model_cfg.tokenizer = f"hf:{path}"
    # At most the checkpoint's positions and its tokenizer's length; fewer keeps the first rows.
    model_cfg.max_text_tokens = min(model_cfg.max_text_tokens, cfg.max_text_tokens,
                                    tokenizer(path).max_length or cfg.max_text_tokens)
  return model_cfg


def read_params(path: str, abstract: nnx.State, mesh: jax.sharding.Mesh) -> dict:
  """The checkpoint tensors of the folder `path` as parameters of `abstract` (an abstract
  nnx.State with the paths of the family's table: its embedder's, or an Encoder's with the
  family's stems/text and blocks, stacked or not), each placed in its sharding on `mesh`:
  {state path: jax.Array}. Parameters the table does not name are not in the result.

  The Dense layers of a sentence-transformers folder are read when `abstract` has them
  (gemb.model.bert.Dense at `dense`). Raises ValueError naming every missing, unexpected or
  mis-shaped tensor.
  """
  st = sentence_transformer(path)
  family, cfg = _read_config(st, "float32")
  _, weight_table, _, ignored = FAMILIES[family]
  variables = {"/".join(map(str, p)): (p, v.get_value()) for p, v in nnx.to_flat_state(abstract)}
  shardings = {"/".join(map(str, p)): v.get_value()
               for p, v in nnx.to_flat_state(param_shardings(abstract, mesh))}
  shapes = {key: tuple(value.shape) for key, (_, value) in variables.items()}
  sources = [(st["transformer"], weight_table(cfg), ignored)]  # (folder, table, ignored)
  if "dense/layers/0/kernel" in variables:
    sources += [(folder, dense_weights(i, bias), None)
                for i, (folder, bias) in enumerate(zip(st["dense"], cfg.dense_bias))]
  sources = [(folder, _stack_layers(table, shapes), ignore) for folder, table, ignore in sources]
  absent = [p for _, table, _ in sources for p, _, _ in table.values() if p not in variables]
  if absent:
    raise ValueError(f"{path}: the gemb model has no parameters {absent[:5]} (of {len(absent)}) "
                     f"that the {family} weight table fills; build it from hf.read_config")

  with contextlib.ExitStack() as stack:
    found, errors = {}, []
    for folder, table, ignore in sources:
      tensors = _Tensors(folder, stack)
      matched, problems = _match(tensors, table, ignore, shapes)
      found.update({key: (tensors, layers) for key, layers in matched.items()})
      errors += [f"  {folder}: {line}" for line in problems]
    errors += [f"  gemb parameter {key} stacks {shapes[key][0]} layers; the checkpoint has "
               f"{len(layers)}" for key, (_, layers) in found.items()
               if None not in layers and shapes[key][0] != len(layers)]
    if errors:
      raise ValueError(f"{path} does not fit the {family} model its config.json describes:\n"
                       + "\n".join(errors))
    params = {}
    for key, (tensors, layers) in found.items():
      state_path, value = variables[key]

      def read(index, tensors=tensors, layers=layers, value=value):
        spans = [s.indices(n)[:2] for s, n in zip(index, value.shape)]
        if None in layers:
          name, layout = layers[None]
          return np.asarray(_read_block(tensors.slice(name), layout, spans, value.shape),
                            value.dtype)
        (first, last), spans = spans[0], spans[1:]  # a block of the stacked layers
        return np.stack([np.asarray(_read_block(tensors.slice(layers[i][0]), layers[i][1],
                                                spans, value.shape[1:]), value.dtype)
                         for i in range(first, last)])
      params[state_path] = jax.make_array_from_callback(value.shape, shardings[key], read)
  return params


def load(path: str, mesh: jax.sharding.Mesh | None = None, dtype: str = "float32"):
  """The model of the Hugging Face folder `path` (the family's: a BertEmbedder, a GemmaEmbedder
  for a Gemma 3 text model or an EmbeddingGemma-style sentence-transformers folder) with its
  checkpoint's weights, every parameter placed in its sharding on `mesh` (default: one device).
  `dtype` is the compute dtype; parameters stay float32.

  Raises ValueError naming every missing, unexpected or mis-shaped tensor.
  """
  family, cfg = read_config(path, dtype)
  mesh = mesh or make_mesh({}, devices=jax.devices()[:1])
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: FAMILIES[family][2](cfg,
                                                                             rngs=nnx.Rngs(0))))
  params = read_params(path, abstract, mesh)
  flat = nnx.to_flat_state(abstract)
  unmapped = ["/".join(map(str, p)) for p, _ in flat if p not in params]
  if unmapped:
    raise ValueError(f"{path}: no checkpoint tensor fills gemb parameters {unmapped}")
  return nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(params[p])) for p, v in flat]))


def tokenizer(path: str, max_length: int | None = None):
  """The tokenizer that comes with the folder `path`: its tokenizer.json (special tokens and
  template as the file defines them), truncating to the sentence-transformers max_seq_length
  (else tokenizer_config.json's model_max_length, at most the model's positions, and at most
  `max_length`)."""
  from gemb.data.tokenizer import HuggingFaceTokenizer  # pylint: disable=g-import-not-at-top
  st = sentence_transformer(path)
  folder = st["transformer"]
  positions = _read_json(folder, "config.json").get("max_position_embeddings")
  limit = st["max_seq_length"] or _read_json(folder, "tokenizer_config.json", default={}).get(
      "model_max_length")
  limits = [n for n in (limit, positions, max_length) if n and n < 1_000_000]  # 1e30: "none"
  return HuggingFaceTokenizer(os.path.join(folder, "tokenizer.json"),
                              max_length=min(limits) if limits else None,
                              lowercase=st["do_lower_case"])
