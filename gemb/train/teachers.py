"""Teachers of a distillation stage: where each task's teacher embeddings come from.

A teacher gives, for each training batch of its task, the embeddings of the batch's queries
and positives ([B, D_T] global arrays, D_T its own width), and for evaluation the embeddings of
raw inputs. A stage declares one per task of its mixture (`from_config`). Two kinds:

  EncoderTeacher  a gemb checkpoint run frozen on every batch, on the fly, under jit. Teachers
                  of one architecture share one compiled forward per batch layout.
  TableTeacher    embeddings precomputed per example id and stored in a .npz
                  (`ids` int64 [N], `embeddings` float [N, D_T]). This is how a teacher from
                  another framework plugs in: embed your examples offline, key each row by the
                  example's id (`features.example_ids`, the ids the batches carry), save with
                  `save_table`. `precompute_table` builds one from any embedding function.

Ids are gemb's: `features.key_id(query_key)` when an example has identity keys (ToyWorld,
manifests with keys), else `features.content_id(parts)` (a hash of the raw parts). Equal keys
mean the same content, so every rendering of one key gets the table's single row for it.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from gemb import sharding
from gemb.data import features
from gemb.embed import make_embed_fn
from gemb.evaluate.embeddings import embed_in_chunks
from gemb.train import checkpoints

Input = list  # one raw input: a list of parts


def _unit_rows(x: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _frozen_forward(graphdef, params, rest, side):
  """[B, D] embeddings of a packed side by a frozen encoder (no dropout, no gradient)."""
  return jax.lax.stop_gradient(nnx.merge(graphdef, params, rest)(side, deterministic=True))


class EncoderTeacher:
  """A gemb encoder, run frozen on each batch (on the fly)."""

  def __init__(self, model_cfg, graphdef, params, rest, mesh, eval_batch_size: int = 128):
    self.model_cfg, self.mesh = model_cfg, mesh
    self.graphdef, self.params, self.rest = graphdef, params, rest
    self.eval_batch_size = eval_batch_size
    self._embed_fn = None

  @classmethod
  def from_checkpoint(cls, model_cfg, path: str, mesh, **kwargs) -> "EncoderTeacher":
    return cls(model_cfg, *checkpoints.load_encoder(model_cfg, mesh, path), mesh, **kwargs)

  def batch_embeddings(self, host_batch: dict, device_batch: dict) -> tuple[jax.Array, jax.Array]:
    """([B, D_T], [B, D_T]) global embeddings of the batch's queries and positives."""
    del host_batch
    with jax.set_mesh(self.mesh):
      return tuple(_frozen_forward(self.graphdef, self.params, self.rest, device_batch[side])
                   for side in ("query", "positive"))

  def embed(self, inputs: Sequence[Input], ids: np.ndarray) -> np.ndarray:
    """[N, D_T] numpy embeddings of raw inputs (for evaluation); ids are not needed."""
    del ids
    if self._embed_fn is None:
      self._embed_fn = make_embed_fn(self.model_cfg, self.graphdef, self.params, self.rest,
                                     self.mesh)
    return embed_in_chunks(self._embed_fn, list(inputs), self.eval_batch_size)


class TableTeacher:
  """Embeddings precomputed per example id (rows L2-normalised on load)."""

  def __init__(self, ids: np.ndarray, embeddings: np.ndarray, mesh, name: str = "table"):
    ids, embeddings = np.asarray(ids), np.asarray(embeddings)
    if ids.ndim != 1 or embeddings.ndim != 2 or len(ids) != len(embeddings):
      raise ValueError(f"teacher table {name}: needs ids [N] and embeddings [N, D]; got shapes "
                       f"{ids.shape} and {embeddings.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"teacher table {name}: ids must be integers, got {ids.dtype}")
    if not np.all(np.isfinite(embeddings)):
      raise ValueError(f"teacher table {name}: embeddings hold non-finite values")
    unique, first = np.unique(ids, return_index=True)
    if len(unique) != len(ids):
      raise ValueError(f"teacher table {name}: {len(ids) - len(unique)} duplicate ids; store "
                       "one row per example id")
    self.name, self.mesh = name, mesh
    self._ids = unique  # sorted, for searchsorted lookups
    self._embeddings = _unit_rows(embeddings[first])

  @classmethod
  def from_file(cls, path: str, mesh) -> "TableTeacher":
    if not os.path.exists(path):
      raise FileNotFoundError(f"teacher table {path!r} does not exist; write one with "
                              "gemb.proj.distill.teachers.save_table (ids [N], embeddings [N, D])")
    with np.load(path) as table:
      missing = {"ids", "embeddings"} - set(table.files)
      if missing:
        raise ValueError(f"teacher table {path!r} lacks arrays {sorted(missing)}; it has "
                         f"{table.files}")
      return cls(table["ids"], table["embeddings"], mesh, name=path)

  @property
  def dim(self) -> int:
    return self._embeddings.shape[1]

  def has(self, ids: np.ndarray) -> np.ndarray:
    """[N] bool: which ids the table holds."""
    ids = np.asarray(ids)
    index = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
    return self._ids[index] == ids

  def lookup(self, ids: np.ndarray) -> np.ndarray:
    """[N, D_T] float32 rows of `ids`; KeyError naming the missing ids."""
    ids = np.asarray(ids)
    found = self.has(ids)
    if not found.all():
      missing = np.unique(ids[~found])
      raise KeyError(f"teacher table {self.name}: {len(missing)} example ids are missing "
                     f"(e.g. {missing[:5].tolist()}); precompute embeddings for every example "
                     "the student trains on (gemb.proj.distill.teachers.precompute_table)")
    return self._embeddings[np.searchsorted(self._ids, ids)]

  def batch_embeddings(self, host_batch: dict, device_batch: dict) -> tuple[jax.Array, jax.Array]:
    """([B, D_T], [B, D_T]) global embeddings of the batch's queries and positives."""
    del device_batch
    rows = {"query": self.lookup(host_batch["query_id"]),
            "positive": self.lookup(host_batch["positive_id"])}
    rows = sharding.shard_batch(rows, self.mesh)
    return rows["query"], rows["positive"]

  def embed(self, inputs: Sequence[Input], ids: np.ndarray) -> np.ndarray:
    """[N, D_T] embeddings of examples by id (the inputs themselves are not needed)."""
    del inputs
    return self.lookup(ids)


def save_table(path: str, ids: np.ndarray, embeddings: np.ndarray) -> None:
  """Writes a teacher table .npz (ids int64 [N], embeddings float32 [N, D])."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, ids=np.asarray(ids, np.int64), embeddings=np.asarray(embeddings, np.float32))
  os.replace(tmp, path)  # a killed run never leaves half a table


def precompute_table(embed: Callable[[list[Input]], np.ndarray], examples: Sequence[Mapping],
                     task_string: str | None, batch_size: int = 128
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(ids [N], embeddings [N, D]) of every distinct query and positive of `examples`.

  Args:
    embed: raw inputs -> [n, D] (a gemb embed_fn, or an outside model's).
    examples: raw examples (the data contract), e.g. every training example of a domain.
    task_string: prefixed to queries as in training (None: queries as they are).
    batch_size: inputs per `embed` call.
  """
  ids, inputs = [], []
  seen = set()
  for raw in examples:
    query_id, positive_id = features.example_ids(raw)
    query = raw["query"] if task_string is None else features.with_task_string(
        raw["query"], task_string)
    for example_id, parts in ((query_id, query), (positive_id, raw["positive"])):
      if example_id not in seen:
        seen.add(example_id)
        ids.append(example_id)
        inputs.append(parts)
  # One call per modality layout, so each embed call sees inputs of one shape.
  by_layout: dict[tuple, list[int]] = {}
  for i, parts in enumerate(inputs):
    by_layout.setdefault(tuple(features.modality_of(p) for p in parts), []).append(i)
  embeddings = [None] * len(inputs)
  for rows in by_layout.values():
    out = embed_in_chunks(embed, [inputs[i] for i in rows], batch_size)
    for i, row in zip(rows, out):
      embeddings[i] = row
  return np.asarray(ids, np.int64), np.stack(embeddings).astype(np.float32)


def from_config(teachers_cfg: Mapping[str, Mapping], mesh) -> dict[str, Any]:
  """Task -> teacher of a distillation stage's `distill.teachers`: {task: dict(type='table',
  path=<.npz>)} or {task: dict(type='checkpoint', path=<step folder>, model=<its config.model>)}.
  """
  teachers = {}
  for task, entry in teachers_cfg.items():
    if entry["type"] == "table":
      teachers[task] = TableTeacher.from_file(entry["path"], mesh)
    else:
      teachers[task] = EncoderTeacher.from_checkpoint(entry["model"], entry["path"], mesh)
  return teachers
