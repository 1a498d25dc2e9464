"""Contrastive losses for embedding training, as pure functions of arrays.

Every loss takes L2-normalised embeddings (so cosine similarity = dot product) and
returns a float32 scalar: the mean over the GLOBAL batch.

Across devices. Each loss takes `axis_name`: a mesh axis name or a tuple of names
(e.g. ("data", "fsdp")) over which the batch is sharded, for use inside `jax.shard_map`.
Each device then computes only its own rows of logits, against the targets (and their
ids) all-gathered from every device: [B_local, B_global], never [B_global, B_global].
The transpose of `all_gather` sends every target's gradient back to the device that
owns it. The per-row losses are summed with `psum`, so every device returns the same
global mean. With `axis_name=None` the same code runs on one device over the whole
batch. `sharded_loss` wraps any of these losses for global `jax.Array`s on a mesh.

Blockwise. With `block_size`, the gathered targets are visited in chunks of
`block_size` columns under `lax.scan` (running log-sum-exp for NCE, running sum for
SigLIP); each chunk is rematerialised in the backward pass (`jax.checkpoint`), so
logits never take more than [B_local, block_size] memory. Same value and gradients.

Losses:
  masked_nce_loss          Gemini Embedding's in-batch softmax (InfoNCE) with hard
                           negatives and masking of duplicate queries / targets.
  sigmoid_loss             SigLIP's pairwise sigmoid loss, a softmax-free alternative.
  mrl_loss                 Matryoshka: any of the above at several prefix widths.
  distillation_kl_loss     KL between teacher and student in-batch similarity rows.
  distillation_l2_loss     Mean squared difference of the similarity matrices.
  distillation_terms       Both distillation losses and the contrastive loss over a
                           student's Matryoshka prefixes, against a teacher's embeddings.
Helpers: temperature_from_log, in_batch_similarities, sharded_loss.
"""
from collections.abc import Callable, Sequence
import functools
import inspect
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

AxisName = str | tuple[str, ...] | None

# Stands in for log(0) for masked pairs: finite, so that a row whose whole chunk is
# masked still has a finite log-sum-exp and finite gradients (exp(-1e9) is 0 in f32).
_MASKED_LOGIT = -1e9


# ----------------------------------------------------------------------------------
# Temperature.


def temperature_from_log(
    log_temperature: jax.Array, *, min_temperature: float, max_temperature: float
) -> jax.Array:
  """A learned temperature: exp(log_temperature) clipped to [min, max].

  Use it for a trainable temperature: keep `log_temperature` (a [] float parameter,
  e.g. initialised to log(0.05)) in the model and pass this function's output as the
  loss's `temperature`. The log parameterisation keeps it positive; the clip stops it
  collapsing (tiny temperatures blow up the logits) or running off.

  Args:
    log_temperature: [] float, the parameter.
    min_temperature: > 0, lower clip.
    max_temperature: > min_temperature, upper clip.

  Returns:
    [] float32 temperature. Its gradient is zero while clipped.
  """
  if not min_temperature > 0:
    raise ValueError(f"min_temperature must be > 0, got {min_temperature}.")
  if not max_temperature > min_temperature:
    raise ValueError(
        f"max_temperature ({max_temperature}) must be > min_temperature "
        f"({min_temperature})."
    )
  if jnp.ndim(log_temperature) != 0:
    raise ValueError(
        f"log_temperature must be a scalar, got shape {jnp.shape(log_temperature)}."
    )
  return jnp.clip(
      jnp.exp(jnp.asarray(log_temperature, jnp.float32)), min_temperature, max_temperature
  )


# ----------------------------------------------------------------------------------
# Input checks: all at trace time, on static shapes and Python values.


def _check_scalar(value: Any, name: str, *, positive: bool) -> None:
  if jnp.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}.")
  if positive and not isinstance(value, jax.core.Tracer):
    if not float(value) > 0:
      raise ValueError(
          f"{name} must be > 0, got {float(value)}. For a learned temperature pass "
          "temperature_from_log(log_temperature, min_temperature=..., max_temperature=...)."
      )


def _check_embeddings(**embeddings: jax.Array | None) -> int:
  """Checks [B, D] float embeddings of one shape; returns B."""
  names = [name for name, x in embeddings.items() if x is not None]
  first = names[0]
  shape = jnp.shape(embeddings[first])
  for name in names:
    x = embeddings[name]
    if jnp.ndim(x) != 2:
      raise ValueError(f"{name} must be [batch, dim], got shape {jnp.shape(x)}.")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f"{name} must be floating point, got {jnp.result_type(x)}.")
    if jnp.shape(x) != shape:
      raise ValueError(
          f"{name} has shape {jnp.shape(x)} but {first} has shape {shape}; the row i "
          "of each belongs to example i, so they must match."
      )
  return shape[0]


def _check_ids(ids: jax.Array | None, name: str, batch: int) -> None:
  if ids is None:
    return
  if jnp.shape(ids) != (batch,):
    raise ValueError(
        f"{name} must be [batch]=({batch},) (one id per example on this device), got "
        f"shape {jnp.shape(ids)}."
    )
  if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
    raise ValueError(f"{name} must be integers, got {jnp.result_type(ids)}.")


def _check_block_size(block_size: int | None, num_columns: int) -> None:
  if block_size is None:
    return
  if not isinstance(block_size, (int, np.integer)) or block_size <= 0:
    raise ValueError(f"block_size must be a positive int or None, got {block_size!r}.")
  if num_columns % block_size:
    raise ValueError(
        f"block_size={block_size} must divide the gathered (global) batch "
        f"{num_columns}; pick a divisor of {num_columns} or None."
    )


# ----------------------------------------------------------------------------------
# Cross-device plumbing. With axis_name=None each is the identity / a plain sum.


def _all_gather(x: jax.Array | None, axis_name: AxisName) -> jax.Array | None:
  """[B_local, ...] -> [B_global, ...], device-major (device k's rows at k*B_local)."""
  if x is None or axis_name is None:
    return x
  return lax.all_gather(x, axis_name, tiled=True)


def _row_offset(batch: int, axis_name: AxisName) -> jax.Array | int:
  """Global index of this device's first row in the gathered batch."""
  if axis_name is None:
    return 0
  return lax.axis_index(axis_name) * batch


def _global_mean(per_row: jax.Array, axis_name: AxisName, denominator: int = 1) -> jax.Array:
  """Mean of per-row values over the global batch, identical on every device."""
  total = jnp.sum(per_row)
  rows = per_row.shape[0]
  if axis_name is not None:
    total = lax.psum(total, axis_name)
    rows = rows * lax.axis_size(axis_name)
  return total / (rows * denominator)


def _dot_rows(a: jax.Array, b: jax.Array) -> jax.Array:
  """[R, D] x [C, D] -> [R, C] float32."""
  return jnp.einsum("rd,cd->rc", a, b, preferred_element_type=jnp.float32)


def _pair_masks(rows: dict, columns: dict) -> tuple[jax.Array, jax.Array]:
  """For rows i and columns j (global indices), returns ([R, C] bool each):

  is_pair: j == i, the example's own target.
  keep: the pair takes part: j == i, or j is a different example whose query and
    target both differ from i's (mask_ij of the Gemini Embedding loss).
  """
  is_pair = rows["index"][:, None] == columns["index"][None, :]
  duplicate = jnp.zeros_like(is_pair)
  for ids in ("query_ids", "positive_ids"):
    if ids in rows:
      duplicate |= rows[ids][:, None] == columns[ids][None, :]
  return is_pair, is_pair | ~duplicate


def _reduce_over_columns(
    chunk_fn: Callable[[jax.Array, dict], jax.Array],
    initial: float,
    num_rows: int,
    columns: dict,
    block_size: int | None,
    axis_name: AxisName,
) -> jax.Array:
  """Folds carry = chunk_fn(carry, chunk) over chunks of `block_size` gathered columns.

  The carry is [num_rows] float32, starting at `initial`. `columns` holds [N, ...]
  arrays (targets, ids, global index). With block_size=None the whole [N] is one
  chunk. Otherwise lax.scan walks the N / block_size chunks and jax.checkpoint
  recomputes each chunk's logits in the backward pass instead of storing them all:
  memory O(num_rows x block_size).
  """
  carry = jnp.full((num_rows,), initial, jnp.float32)
  if block_size is None:
    return chunk_fn(carry, columns)
  if axis_name is not None:
    # The carry will hold per-device values: scan wants that type from the start.
    carry = lax.pcast(carry, axis_name, to="varying")
  num_chunks = columns["targets"].shape[0] // block_size
  chunks = jax.tree.map(
      lambda x: x.reshape(num_chunks, block_size, *x.shape[1:]), columns
  )

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def body(carry, chunk):
    return chunk_fn(carry, chunk), None

  carry, _ = lax.scan(body, carry, chunks)
  return carry


def _gathered_columns(
    targets: jax.Array,
    query_ids: jax.Array | None,
    positive_ids: jax.Array | None,
    axis_name: AxisName,
) -> dict:
  """The column side: gathered targets [N, D], their ids [N] and global index [N]."""
  columns = {"targets": _all_gather(targets, axis_name)}
  columns["index"] = jnp.arange(columns["targets"].shape[0])
  if query_ids is not None:
    columns["query_ids"] = _all_gather(query_ids, axis_name)
  if positive_ids is not None:
    columns["positive_ids"] = _all_gather(positive_ids, axis_name)
  return columns


def _local_rows(
    batch: int,
    query_ids: jax.Array | None,
    positive_ids: jax.Array | None,
    axis_name: AxisName,
) -> dict:
  rows = {"index": _row_offset(batch, axis_name) + jnp.arange(batch)}
  if query_ids is not None:
    rows["query_ids"] = query_ids
  if positive_ids is not None:
    rows["positive_ids"] = positive_ids
  return rows


def _takes(fn: Callable, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):  # a callable without a signature
    return False


class PrefixColumns:
  """The gathered columns of every MRL prefix from one all_gather per array (mrl_loss): each
  side's full-width embeddings and the ids are gathered once, on first use, and a prefix's
  columns are the gathered rows cut to `dim` and re-normalised (which commutes with the
  gather: both act row by row)."""

  def __init__(self, sides: dict, query_ids, positive_ids, axis_name: AxisName):
    self._sides, self._axis_name, self._gathered = sides, axis_name, {}
    self._ids = {"query_ids": query_ids, "positive_ids": positive_ids}

  def _gather(self, name: str, x):
    if name not in self._gathered:
      self._gathered[name] = _all_gather(x, self._axis_name)
    return self._gathered[name]

  def columns(self, side: str, dim: int) -> dict:
    targets = _unit_prefix(self._gather(side, self._sides[side]), dim)
    columns = {"targets": targets, "index": jnp.arange(targets.shape[0])}
    columns.update({k: self._gather(k, v) for k, v in self._ids.items() if v is not None})
    return columns


def _columns(targets, query_ids, positive_ids, axis_name, prefix_columns, side) -> dict:
  """The column side of `targets` (gathered here, or once for every prefix by mrl_loss)."""
  if prefix_columns is not None:
    return prefix_columns.columns(side, targets.shape[1])
  return _gathered_columns(targets, query_ids, positive_ids, axis_name)


# ----------------------------------------------------------------------------------
# Masked NCE (Gemini Embedding).


def _nce_direction(
    anchors: jax.Array,  # [R, D] this device's rows
    targets: jax.Array,  # [R, D] this device's targets; gathered for the columns
    extra_negative: jax.Array | None,  # [R, D] each row's own hard negative
    rows: dict,
    query_ids: jax.Array | None,
    positive_ids: jax.Array | None,
    inverse_temperature: jax.Array,
    block_size: int | None,
    axis_name: AxisName,
    prefix_columns: PrefixColumns | None = None,
    side: str = "positive",
) -> jax.Array:
  """Per-row loss [R] of anchors against all gathered targets."""
  columns = _columns(targets, query_ids, positive_ids, axis_name, prefix_columns, side)
  _check_block_size(block_size, columns["targets"].shape[0])

  def chunk_fn(log_denominator, chunk):  # [R], running log-sum-exp
    logits = _dot_rows(anchors, chunk["targets"]) * inverse_temperature  # [R, C]
    _, keep = _pair_masks(rows, chunk)
    logits = jnp.where(keep, logits, _MASKED_LOGIT)
    return jnp.logaddexp(log_denominator, jax.nn.logsumexp(logits, axis=1))

  log_denominator = _reduce_over_columns(
      chunk_fn, _MASKED_LOGIT, anchors.shape[0], columns, block_size, axis_name
  )
  if extra_negative is not None:  # + e^{s_ii-}, the row's own hard negative.
    negative_logit = jnp.einsum(
        "rd,rd->r", anchors, extra_negative, preferred_element_type=jnp.float32
    ) * inverse_temperature
    log_denominator = jnp.logaddexp(log_denominator, negative_logit)
  positive_logit = jnp.einsum(
      "rd,rd->r", anchors, targets, preferred_element_type=jnp.float32
  ) * inverse_temperature
  return log_denominator - positive_logit


def masked_nce_loss(
    query: jax.Array,
    positive: jax.Array,
    hard_negative: jax.Array | None = None,
    *,
    temperature: float | jax.Array,
    query_ids: jax.Array | None = None,
    positive_ids: jax.Array | None = None,
    symmetric: bool = False,
    block_size: int | None = None,
    axis_name: AxisName = None,
    prefix_columns: PrefixColumns | None = None,
) -> jax.Array:
  """In-batch softmax loss with hard negatives and duplicate masking (Gemini Embedding).

  For query i, with s = cos / temperature and j over the GLOBAL batch:

    loss_i = -log( e^{s(q_i, p_i)} / (e^{s(q_i, p_i)} + e^{s(q_i, n_i)}
                                      + sum_{j != i} mask_ij e^{s(q_i, p_j)}) )

  where n_i is query i's own hard negative (term present only if `hard_negative` is
  given) and mask_ij = 0 when query j is the same as query i or positive j is the
  same as positive i (same id), so that duplicates in the batch are not pushed apart
  as if they were negatives. The loss is the mean of loss_i over the global batch.

  With symmetric=True, the reverse term (positive i against all queries, same mask,
  no hard negative) is averaged with the forward one: use it for cross-modal pairs
  where both directions are retrieval tasks (text->image and image->text).

  Use it as the main embedding-training loss. Inside jax.shard_map pass the batch's
  mesh axes as axis_name (or wrap with `sharded_loss`); each device then computes its
  [B_local, B_global] rows. Pass block_size to bound memory by [B_local, block_size].

  Args:
    query: [B, D] float (any float dtype; logits are float32), L2-normalised.
    positive: [B, D], positive i is query i's target, L2-normalised.
    hard_negative: optional [B, D], negative i is query i's own hard negative.
    temperature: [] > 0, fixed (Python float) or learned (`temperature_from_log`).
    query_ids: optional [B] int; equal ids mark identical queries. None: no masking
      of duplicate queries.
    positive_ids: optional [B] int; equal ids mark identical positives.
    symmetric: also add the positive->query direction (averaged).
    block_size: None for all gathered targets at once, or a divisor of B_global to
      walk them in chunks (same value and gradients, less memory, a bit slower).
    axis_name: mesh axis name(s) the batch is sharded over (inside shard_map), or
      None on one device. B above is then the per-device batch.
    prefix_columns: set by mrl_loss: the gathered columns of every prefix width.

  Returns:
    [] float32, the mean loss over the global batch; the same on every device.
  """
  batch = _check_embeddings(query=query, positive=positive, hard_negative=hard_negative)
  _check_ids(query_ids, "query_ids", batch)
  _check_ids(positive_ids, "positive_ids", batch)
  _check_scalar(temperature, "temperature", positive=True)
  inverse_temperature = 1.0 / jnp.asarray(temperature, jnp.float32)
  rows = _local_rows(batch, query_ids, positive_ids, axis_name)

  direction = functools.partial(
      _nce_direction,
      rows=rows,
      query_ids=query_ids,
      positive_ids=positive_ids,
      inverse_temperature=inverse_temperature,
      block_size=block_size,
      axis_name=axis_name,
      prefix_columns=prefix_columns,
  )
  loss = _global_mean(direction(query, positive, hard_negative), axis_name)
  if symmetric:
    # Rows are positives, columns the gathered queries. mask_ij is symmetric in the
    # two ids, so the same rows/columns ids apply.
    reverse = _global_mean(direction(positive, query, None, side="query"), axis_name)
    loss = 0.5 * (loss + reverse)
  return loss


# ----------------------------------------------------------------------------------
# SigLIP.


def sigmoid_loss(
    query: jax.Array,
    positive: jax.Array,
    hard_negative: jax.Array | None = None,
    *,
    temperature: float | jax.Array,
    bias: float | jax.Array,
    query_ids: jax.Array | None = None,
    positive_ids: jax.Array | None = None,
    block_size: int | None = None,
    axis_name: AxisName = None,
    prefix_columns: PrefixColumns | None = None,
) -> jax.Array:
  """SigLIP's pairwise sigmoid loss (Zhai et al. 2023) over the global batch.

  Every (query i, positive j) pair is an independent binary problem with logit
  z_ij = cos(q_i, p_j) / temperature + bias and label +1 if j == i else -1:

    loss = -1/B_global * sum_i [ sum_j w_ij log sigmoid(label_ij z_ij)
                                 + log sigmoid(-z(q_i, n_i)) ]

  w_ij = 0 for duplicates (j != i with the same query id or positive id, as in
  masked_nce_loss), else 1; the hard-negative term only when `hard_negative` is given.
  Note SigLIP's t is 1 / temperature here (their init t=10, b=-10 is
  temperature=0.1, bias=-10).

  Use it instead of masked_nce_loss when a softmax over the batch is unwanted (no
  coupling between rows, cheap at very large batch). Across devices each device
  computes its [B_local, B_global] rows against gathered positives; block_size
  chunks them further, as in masked_nce_loss.

  Args:
    query, positive, hard_negative: [B, D] float, L2-normalised (hard_negative optional).
    temperature: [] > 0, fixed or learned (`temperature_from_log`).
    bias: [] float, usually a learned parameter (init -10).
    query_ids, positive_ids: optional [B] int ids marking duplicates.
    block_size: None or a divisor of B_global, see masked_nce_loss.
    axis_name: mesh axis name(s) of the batch inside shard_map, or None.

  Returns:
    [] float32, the loss summed over pairs and averaged over the global batch rows.
  """
  batch = _check_embeddings(query=query, positive=positive, hard_negative=hard_negative)
  _check_ids(query_ids, "query_ids", batch)
  _check_ids(positive_ids, "positive_ids", batch)
  _check_scalar(temperature, "temperature", positive=True)
  _check_scalar(bias, "bias", positive=False)
  inverse_temperature = 1.0 / jnp.asarray(temperature, jnp.float32)
  bias = jnp.asarray(bias, jnp.float32)
  rows = _local_rows(batch, query_ids, positive_ids, axis_name)
  columns = _columns(positive, query_ids, positive_ids, axis_name, prefix_columns, "positive")
  _check_block_size(block_size, columns["targets"].shape[0])

  def chunk_fn(row_loss, chunk):  # [R], running sum over columns
    logits = _dot_rows(query, chunk["targets"]) * inverse_temperature + bias  # [R, C]
    is_pair, keep = _pair_masks(rows, chunk)
    labels = jnp.where(is_pair, 1.0, -1.0)
    pair_loss = jnp.where(keep, -jax.nn.log_sigmoid(labels * logits), 0.0)
    return row_loss + jnp.sum(pair_loss, axis=1)

  row_loss = _reduce_over_columns(chunk_fn, 0.0, batch, columns, block_size, axis_name)
  if hard_negative is not None:  # label -1 for the row's own hard negative.
    negative_logit = jnp.einsum(
        "rd,rd->r", query, hard_negative, preferred_element_type=jnp.float32
    ) * inverse_temperature + bias
    row_loss = row_loss - jax.nn.log_sigmoid(-negative_logit)
  return _global_mean(row_loss, axis_name)


# ----------------------------------------------------------------------------------
# Matryoshka (MRL).


def _unit_prefix(x: jax.Array | None, dim: int) -> jax.Array | None:
  """[B, D] -> [B, dim]: the first `dim` features, re-normalised to unit L2 norm."""
  if x is None:
    return None
  prefix = x[:, :dim]
  squared_norm = jnp.sum(jnp.square(prefix.astype(jnp.float32)), axis=-1, keepdims=True)
  return (prefix * lax.rsqrt(jnp.maximum(squared_norm, 1e-12))).astype(x.dtype)


def mrl_loss(
    loss_fn: Callable[..., jax.Array],
    query: jax.Array,
    positive: jax.Array,
    hard_negative: jax.Array | None = None,
    *,
    mrl_dims: Sequence[int],
    mrl_weights: Sequence[float],
    **loss_kwargs: Any,
) -> jax.Array:
  """Matryoshka representation loss: sum_k mrl_weights[k] * loss at prefix mrl_dims[k].

  At each prefix width d the embeddings are cut to their first d features and
  re-normalised to unit norm, then `loss_fn(query_d, positive_d, hard_negative_d,
  **loss_kwargs)` is evaluated. Use it to train one embedding whose prefixes are
  usable embeddings on their own (serve 64, 256 or all D features).

  Args:
    loss_fn: masked_nce_loss or sigmoid_loss (or any f(query, positive,
      hard_negative, **kwargs) -> []).
    query, positive, hard_negative: [B, D] float (hard_negative optional); prefixes
      are re-normalised so the full-width inputs need not be.
    mrl_dims: prefix widths, each in 1..D, e.g. (64, 128, 256, D).
    mrl_weights: one float weight per width (the sum is not normalised).
    **loss_kwargs: passed to loss_fn (temperature, ids, axis_name, block_size, ...).

  Returns:
    [] float32 weighted sum of the per-width losses.
  """
  _check_embeddings(query=query, positive=positive, hard_negative=hard_negative)
  width = jnp.shape(query)[1]
  if len(mrl_dims) == 0:
    raise ValueError("mrl_dims must list at least one prefix width.")
  if len(mrl_weights) != len(mrl_dims):
    raise ValueError(
        f"mrl_weights has {len(mrl_weights)} entries but mrl_dims has {len(mrl_dims)}; "
        "give one weight per prefix width."
    )
  for dim in mrl_dims:
    if not isinstance(dim, (int, np.integer)) or not 0 < dim <= width:
      raise ValueError(
          f"mrl_dims entry {dim!r} must be an int in 1..{width} (the embedding width)."
      )
  # Across devices, each array is gathered once at full width, not once per prefix width.
  prefix_columns = None
  if loss_kwargs.get("axis_name") is not None and _takes(loss_fn, "prefix_columns"):
    prefix_columns = PrefixColumns({"positive": positive, "query": query},
                                   loss_kwargs.get("query_ids"), loss_kwargs.get("positive_ids"),
                                   loss_kwargs["axis_name"])
  total = jnp.zeros((), jnp.float32)
  for dim, weight in zip(mrl_dims, mrl_weights):
    kwargs = dict(loss_kwargs, prefix_columns=prefix_columns) if prefix_columns else loss_kwargs
    loss = loss_fn(
        _unit_prefix(query, dim),
        _unit_prefix(positive, dim),
        _unit_prefix(hard_negative, dim),
        **kwargs,
    )
    total = total + weight * loss
  return total


# ----------------------------------------------------------------------------------
# Distillation.


def in_batch_similarities(
    query: jax.Array, positive: jax.Array, *, axis_name: AxisName = None
) -> jax.Array:
  """Cosine similarities of this device's queries with all positives: [B, B_global].

  The input to the distillation losses: compute it once for the teacher and once for
  the student (their widths D may differ; the similarities have the same shape).

  Args:
    query: [B, D] float, L2-normalised.
    positive: [B, D] float, L2-normalised; gathered over axis_name.
    axis_name: mesh axis name(s) of the batch inside shard_map, or None.

  Returns:
    [B, B_global] float32; row i, column j = cos(q_i, p_j) over the global batch.
  """
  _check_embeddings(query=query, positive=positive)
  return _dot_rows(query, _all_gather(positive, axis_name))


def _check_similarities(teacher: jax.Array, student: jax.Array) -> None:
  if jnp.ndim(teacher) != 2:
    raise ValueError(
        f"teacher_similarities must be [B, N], got shape {jnp.shape(teacher)}."
    )
  if jnp.shape(student) != jnp.shape(teacher):
    raise ValueError(
        f"student_similarities has shape {jnp.shape(student)} but "
        f"teacher_similarities has shape {jnp.shape(teacher)}; compute both with "
        "in_batch_similarities on the same batch."
    )


def distillation_kl_loss(
    teacher_similarities: jax.Array,
    student_similarities: jax.Array,
    *,
    teacher_temperature: float | jax.Array,
    student_temperature: float | jax.Array,
    axis_name: AxisName = None,
) -> jax.Array:
  """Row-wise KL(softmax(teacher / t_T) || softmax(student / t_S)), mean over rows.

  Distils a teacher's ranking of the in-batch candidates into a student: each row
  (a query's similarities to every candidate) becomes a distribution. The teacher
  is a fixed target (stop_gradient). Build the inputs with in_batch_similarities
  (teacher and student may have different embedding widths), or pass any
  precomputed [B, N] scores (e.g. cross-encoder scores of the same candidates).

  Args:
    teacher_similarities: [B, N] float (B this device's rows, N all candidates).
    student_similarities: [B, N] float.
    teacher_temperature, student_temperature: [] > 0.
    axis_name: mesh axis name(s) the rows are sharded over (inside shard_map), or None.

  Returns:
    [] float32, mean KL over the global rows (0 when the distributions agree).
  """
  _check_similarities(teacher_similarities, student_similarities)
  _check_scalar(teacher_temperature, "teacher_temperature", positive=True)
  _check_scalar(student_temperature, "student_temperature", positive=True)
  teacher_log_probs = jax.nn.log_softmax(
      lax.stop_gradient(teacher_similarities).astype(jnp.float32)
      / jnp.asarray(teacher_temperature, jnp.float32),
      axis=-1,
  )
  student_log_probs = jax.nn.log_softmax(
      student_similarities.astype(jnp.float32)
      / jnp.asarray(student_temperature, jnp.float32),
      axis=-1,
  )
  row_kl = jnp.sum(
      jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1
  )
  return _global_mean(row_kl, axis_name)


def distillation_l2_loss(
    teacher_similarities: jax.Array,
    student_similarities: jax.Array,
    *,
    axis_name: AxisName = None,
) -> jax.Array:
  """Mean squared difference between student and (stopped) teacher similarities.

  The simple baseline to distillation_kl_loss: matches the raw cosine values, not
  the rankings. Inputs as for distillation_kl_loss ([B, N] each).

  Returns:
    [] float32, mean over all global B_global x N entries.
  """
  _check_similarities(teacher_similarities, student_similarities)
  squared = jnp.square(
      student_similarities.astype(jnp.float32)
      - lax.stop_gradient(teacher_similarities).astype(jnp.float32)
  )
  return _global_mean(
      jnp.sum(squared, axis=-1), axis_name, denominator=squared.shape[-1]
  )


DISTILLATION_TERMS = ("kl", "l2", "contrastive")


def distillation_terms(
    query_prefixes: Sequence[jax.Array],
    positive_prefixes: Sequence[jax.Array],
    teacher_query: jax.Array,
    teacher_positive: jax.Array,
    query_ids: jax.Array,
    positive_ids: jax.Array,
    teacher_temperature: jax.Array,
    student_temperature: jax.Array,
    contrastive_temperature: jax.Array,
    *,
    mrl_weights: Sequence[float],
    symmetric: bool,
    axis_name: AxisName = None,
) -> dict[str, jax.Array]:
  """Every term of a student's distillation objective, each a weighted sum over its prefixes.

  Over the global batch, row i of the in-batch similarities S[i, j] = cos(query_i,
  positive_j) is compared between the (stopped) teacher and the student at each prefix:
    kl           distillation_kl_loss(S_T, S_S) at temperatures t_T, t_S
    l2           distillation_l2_loss(S_T, S_S)
    contrastive  masked_nce_loss of the student on the labels.

  Args:
    query_prefixes, positive_prefixes: the student's embeddings at each Matryoshka prefix
      width, [B, d] each, L2-normalised (gemb.model.encoder.mrl_prefixes).
    teacher_query, teacher_positive: [B, D_T] the teacher's embeddings of the same examples
      (D_T may differ from D), L2-normalised.
    query_ids, positive_ids: [B] int, equal ids = identical content (contrastive masking).
    teacher_temperature, student_temperature: [] > 0, the KL's softmax temperatures.
    contrastive_temperature: [] > 0, the contrastive loss's temperature.
    mrl_weights: one weight per prefix.
    symmetric: the contrastive loss also ranks queries for each positive.
    axis_name: the batch's mesh axes inside shard_map (see sharded_loss), or None.

  Returns:
    {"kl", "l2", "contrastive"}: [] float32 each, means over the global batch.
  """
  teacher = in_batch_similarities(teacher_query, teacher_positive,
                                  axis_name=axis_name)  # [B, B_global]
  terms = {name: jnp.zeros((), jnp.float32) for name in DISTILLATION_TERMS}
  for weight, student_query, student_positive in zip(mrl_weights, query_prefixes,
                                                     positive_prefixes):
    student = in_batch_similarities(student_query, student_positive,
                                    axis_name=axis_name)  # [B, B_global]
    terms["kl"] += weight * distillation_kl_loss(
        teacher, student, teacher_temperature=teacher_temperature,
        student_temperature=student_temperature, axis_name=axis_name)
    terms["l2"] += weight * distillation_l2_loss(teacher, student, axis_name=axis_name)
    terms["contrastive"] += weight * masked_nce_loss(
        student_query, student_positive, temperature=contrastive_temperature,
        query_ids=query_ids, positive_ids=positive_ids, symmetric=symmetric,
        axis_name=axis_name)
  return terms


# ----------------------------------------------------------------------------------
# Global arrays on a mesh.


def sharded_loss(
    loss_fn: Callable[..., jax.Array],
    mesh: jax.sharding.Mesh,
    *,
    batch_axes: Sequence[str] = ("data", "fsdp"),
) -> Callable[..., jax.Array]:
  """Wraps a loss for global jax.Arrays whose batch is sharded over `batch_axes`.

  Returns `global_loss(*args, **kwargs)`, callable under jit, that runs
  `loss_fn(*args, **kwargs, axis_name=<batch axes>)` inside jax.shard_map on `mesh`:
    - every array argument with ndim >= 1 (embeddings [B, D], ids [B],
      similarities [B, N]) is split along its leading (batch) axis over batch_axes
      and replicated over the other mesh axes (e.g. 'tensor');
    - 0-d arrays (a learned temperature or bias) are replicated; their gradient is
      the whole batch's;
    - anything else (Python floats, ints, bools, None, tuples) is passed unchanged,
      so it is static and checked at trace time.
  Bind array-valued settings that are not batched with functools.partial instead.
  The result is the global-batch loss, a replicated [] float32. Works on meshes with
  Auto or Explicit axis types; call it (and jax.value_and_grad of it) inside jax.jit,
  as a train step does.

  Example:
    loss = sharded_loss(functools.partial(masked_nce_loss, block_size=1024), mesh)
    value, grads = jax.value_and_grad(lambda q, p: loss(
        q, p, temperature=0.05, query_ids=qid, positive_ids=pid), argnums=(0, 1))(q, p)

  Args:
    loss_fn: one of this module's losses, or any function taking `axis_name`.
    mesh: the mesh; axes of `batch_axes` that it lacks are ignored.
    batch_axes: mesh axes the global batch is sharded over, outermost first.
  """
  axes = tuple(axis for axis in batch_axes if axis in mesh.axis_names)
  if not axes:
    raise ValueError(
        f"mesh axes {mesh.axis_names} contain none of batch_axes {tuple(batch_axes)}."
    )
  num_shards = int(np.prod([mesh.shape[axis] for axis in axes]))
  batch_spec = jax.sharding.PartitionSpec(axes)
  explicit = all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)

  def global_loss(*args, **kwargs):
    leaves, treedef = jax.tree_util.tree_flatten_with_path((args, kwargs))
    positions, arrays, specs = [], [], []
    for position, (path, leaf) in enumerate(leaves):
      if not isinstance(leaf, (jax.Array, np.ndarray)):
        continue
      if leaf.ndim == 0:
        spec = jax.sharding.PartitionSpec()
      else:
        if leaf.shape[0] % num_shards:
          raise ValueError(
              f"argument {jax.tree_util.keystr(path)} has batch {leaf.shape[0]}, not "
              f"divisible by the {num_shards} shards of mesh axes {axes}; make the "
              "global batch a multiple of it."
          )
        spec = batch_spec
      if explicit:  # Explicit meshes do not reshard implicitly.
        leaf = jax.reshard(leaf, jax.sharding.NamedSharding(mesh, spec))
      positions.append(position)
      arrays.append(leaf)
      specs.append(spec)

    def local_loss(*local_arrays):
      local_leaves = [leaf for _, leaf in leaves]
      for position, array in zip(positions, local_arrays):
        local_leaves[position] = array
      local_args, local_kwargs = jax.tree_util.tree_unflatten(treedef, local_leaves)
      return loss_fn(*local_args, **local_kwargs, axis_name=axes)

    return jax.shard_map(
        local_loss,
        mesh=mesh,
        in_specs=tuple(specs),
        out_specs=jax.sharding.PartitionSpec(),
    )(*arrays)

  return global_loss
