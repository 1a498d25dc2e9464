"""Orbax checkpoints of a stage: train state + data iterator state, saved together, atomically.

Layout: WORKDIR/<stage>/checkpoints/<step>/{params, train, data}. Orbax writes each step to a
temporary folder and renames it when complete, so a run killed at any moment (kill -9) leaves only
whole checkpoints, and `latest_step` never sees a partial one. `load_encoder` is the one way to get
an encoder on a mesh: a random init, or a checkpoint's params restored straight into their
shardings.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from gemb import sharding
from gemb.model.encoder import Encoder


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(os.path.abspath(workdir), stage, "checkpoints")


def make_manager(directory: str, every: int, keep: int, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=every, max_to_keep=keep, create=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


# The encoder's params apart from the rest of the train state, so that soups, evaluation, export
# and "start from this checkpoint" read the encoder alone, whatever optimizer trained it; the
# loss's own parameters apart too, so that the next stage starts from its learned temperature.
ITEMS = ("params", "loss", "train", "data")


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_state: dict,
         force: bool = False, before_save: Callable[[], None] | None = None) -> bool:
  """Saves (asynchronously) if `step` is due under the manager's interval, or if `force`.

  `state` is the train state dict {"params": {"encoder": ..., loss params}, "opt_state", ...};
  a soup passes {"params": {"encoder": ...}} alone. `before_save` runs only when a save is
  due, before it: a trainer's check that raises on a bad step keeps that step out of every
  checkpoint.
  """
  if not (force or manager.should_save(step)):
    return False
  if before_save is not None:
    before_save()
  train = {k: v for k, v in state.items() if k != "params"}
  loss = {k: v for k, v in state["params"].items() if k != "encoder"}
  items = dict(params=ocp.args.StandardSave(state["params"]["encoder"]),
               data=ocp.args.JsonSave(data_state))
  if jax.tree.leaves(train):  # a soup or a converted checkpoint has params alone
    items["train"] = ocp.args.StandardSave(train)
  if loss:  # the learned temperature (and SigLIP bias): a later stage starts from them
    items["loss"] = ocp.args.StandardSave(loss)
  return manager.save(step, force=True, args=ocp.args.Composite(**items))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict) -> tuple[dict, dict]:
  """Restores (state, data_state) of `step` into the shardings of `abstract_state`."""
  train = {k: v for k, v in abstract_state.items() if k != "params"}
  loss = {k: v for k, v in abstract_state["params"].items() if k != "encoder"}
  items = dict(params=ocp.args.StandardRestore(abstract_state["params"]["encoder"]),
               train=ocp.args.StandardRestore(train), data=ocp.args.JsonRestore())
  if loss:
    items["loss"] = ocp.args.StandardRestore(loss)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  params = {"encoder": restored.params, **(dict(restored.loss) if loss else {})}
  return {"params": params, **dict(restored.train)}, restored.data


def load_loss_params(path: str, abstract: dict) -> dict:
  """The loss parameters (log_temperature, bias) that the checkpoint step folder `path` saved,
  restored into the shardings of `abstract`; {} when it has none or other ones."""
  item = os.path.join(path, "loss")
  if not abstract or not os.path.isdir(item):
    return {}
  try:
    return dict(ocp.StandardCheckpointer().restore(item, abstract))
  except (ValueError, KeyError):  # another loss's parameters: start from the config's
    return {}


def resolve(reference: str, workdir: str) -> str:
  """A checkpoint reference -> the folder of one step's checkpoint.

  `reference` is `<stage>` (its latest step in this workdir), `<stage>:<step>`, or a path to a
  step folder (`.../checkpoints/<step>`) or to a stage's checkpoints folder (its latest step).
  `hf:FOLDER` (a Hugging Face model folder, for `load_encoder`) comes back as it is.
  """
  if reference.startswith("hf:"):
    if not os.path.isfile(os.path.join(reference[len("hf:"):], "config.json")):
      raise FileNotFoundError(f"checkpoint {reference!r}: {reference[len('hf:'):]!r} is not a "
                              "Hugging Face model folder (no config.json)")
    return reference
  if os.path.sep in reference or os.path.isdir(reference):
    path = os.path.abspath(reference)
    if os.path.isdir(os.path.join(path, "params")):
      return path
    if os.path.isdir(path):
      steps = sorted(int(d) for d in os.listdir(path) if d.isdigit())
      if steps:
        return os.path.join(path, str(steps[-1]))
    raise FileNotFoundError(f"checkpoint {reference!r}: no checkpoint found at {path} "
                            f"(expected a folder with a 'params' item or numbered step folders)")
  stage, _, step = reference.partition(":")
  directory = stage_dir(workdir, stage)
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
      directory) else []
  if not steps:
    raise FileNotFoundError(f"checkpoint {reference!r}: stage {stage!r} has no checkpoints in "
                            f"{directory}; train that stage first or give a path")
  if step:
    if int(step) not in steps:
      raise FileNotFoundError(f"checkpoint {reference!r}: no step {step} in {directory}; "
                              f"available steps: {steps}")
    return os.path.join(directory, str(int(step)))
  return os.path.join(directory, str(steps[-1]))


@functools.lru_cache(maxsize=None)
def _encoder_on_mesh(model_cfg: ml_collections.FrozenConfigDict, mesh):
  """(graphdef, abstract (params, rest) with their shardings, init(key) -> sharded (params, rest)):
  one compilation of the initialiser per architecture and mesh, whatever the seed."""
  make = lambda key: Encoder(model_cfg, rngs=nnx.Rngs(key))
  graphdef, *abstract = nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))), nnx.Param, ...)
  shardings = sharding.param_shardings(tuple(abstract), mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          tuple(abstract), shardings)
  init = jax.jit(lambda key: tuple(nnx.split(make(key), nnx.Param, ...)[1:]),
                 out_shardings=shardings)
  return graphdef, abstract, init


def abstract_encoder(model_cfg, mesh) -> tuple[Any, Any, Any]:
  """(graphdef, encoder params, rest) as ShapeDtypeStructs with their shardings on `mesh`."""
  graphdef, (params, rest), _ = _encoder_on_mesh(ml_collections.FrozenConfigDict(model_cfg), mesh)
  return graphdef, params, rest


def load_encoder(model_cfg, mesh, path: str | None = None, seed: int = 0) -> tuple[Any, Any, Any]:
  """(graphdef, encoder params, rest) of an encoder built from `model_cfg`, sharded on `mesh`.

  path=None: a random init born sharded, the parameters of `Encoder(model_cfg,
  rngs=nnx.Rngs(seed))`. "hf:FOLDER": that random init with every parameter a Hugging Face
  checkpoint has (the backbone: config.model from gemb.model.hf.encoder_config) read into its
  sharding; new stems, the part table and the projection keep their init. Otherwise the params
  of the checkpoint step folder `path`, restored from abstract shapes straight into their
  shardings: no random init is computed.
  """
  graphdef, (abstract_params, abstract_rest), init = _encoder_on_mesh(
      ml_collections.FrozenConfigDict(model_cfg), mesh)
  if path is None or path.startswith("hf:"):
    params, rest = init(jax.random.key(seed))
    if path is not None:
      from gemb.model import hf  # pylint: disable=g-import-not-at-top  (safetensors, only here)
      pretrained = hf.read_params(path[len("hf:"):], abstract_params, mesh)
      params = nnx.from_flat_state([(p, v.replace(pretrained[p]) if p in pretrained else v)
                                    for p, v in nnx.to_flat_state(params)])
    return graphdef, params, rest
  if jax.tree.leaves(abstract_rest):
    raise ValueError("a checkpoint holds only the encoder's nnx.Params; this config.model's "
                     "Encoder has other variables, which load_encoder cannot restore")
  item = os.path.join(path, "params")
  if not os.path.isdir(item):
    raise FileNotFoundError(f"{path} is not a gemb checkpoint step folder (no 'params' item)")
  return graphdef, ocp.StandardCheckpointer().restore(item, abstract_params), abstract_rest


def average_params(params: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
  """Model soup: the weighted average of parameter trees (uniform when `weights` is None)."""
  if not params:
    raise ValueError("average_params needs at least one parameter tree")
  weights = np.full(len(params), 1.0 / len(params)) if weights is None else np.asarray(
      weights, np.float64)
  if len(weights) != len(params) or (weights < 0).any() or weights.sum() <= 0:
    raise ValueError(f"soup weights {list(weights)} must be {len(params)} non-negative numbers "
                     "with a positive sum")
  weights = weights / weights.sum()
  return jax.tree.map(
      lambda *leaves: sum(jnp.asarray(w, leaf.dtype) * leaf for w, leaf in zip(weights, leaves)),
      *params)
