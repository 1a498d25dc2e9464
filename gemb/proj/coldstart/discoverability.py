"""Discoverability model: P(discoverable | content embedding, early engagement, exploration
traffic Y).

The model reads an item's features x (content embedding and the engagement it has had so far) and
returns one curve per item over the total exploration traffic Y:

    logit P(discoverable | x, Y) = offset(x) + slope(x) * log(1 + Y),   slope(x) = softplus(.) > 0

so P rises monotonically in Y for every item whatever the weights (a monotone network), and the
curve inverts in closed form (`required_traffic`). offset and slope come from one MLP. It is trained
with binary cross-entropy (optax) on past items whose exploration traffic was randomised.
"""
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import special

from gemb.proj.coldstart import simulator

NUM_ENGAGEMENT_FEATURES = 3


class Curves(NamedTuple):
  """Per-item discoverability curves: logit P(Y) = offset + slope * log1p(Y)."""
  offset: np.ndarray  # [N] float64
  slope: np.ndarray  # [N] float64, > 0


class TrainingRows(NamedTuple):
  embeddings: np.ndarray  # [R, D] float32 content embedding of each row's item
  impressions: np.ndarray  # [R] int64 impressions the item had seen at the row's checkpoint
  clicks: np.ndarray  # [R] int64 clicks among them
  traffic: np.ndarray  # [R] float32 the item's total exploration traffic Y
  labels: np.ndarray  # [R] float32 1 if the item became discoverable
  item: np.ndarray  # [R] int64 index of the row's item in the history


def engagement_features(impressions: np.ndarray, clicks: np.ndarray) -> np.ndarray:
  """Early-engagement features [N, 3] float32: log(1 + impressions), log(1 + clicks), smoothed
  rate."""
  impressions = np.asarray(impressions, np.float64)
  clicks = np.asarray(clicks, np.float64)
  rate = (clicks + 0.5) / (impressions + 1.0)
  return np.stack([np.log1p(impressions), np.log1p(clicks), rate], axis=-1).astype(np.float32)


def discoverability_logits(curves: Curves, traffic) -> np.ndarray:
  """logit P(discoverable) [N] (or [N, G] for traffic [N, G]) of each item at total traffic Y."""
  traffic = np.asarray(traffic, np.float64)
  offset, slope = curves.offset, curves.slope
  if traffic.ndim == 2:
    offset, slope = offset[:, None], slope[:, None]
  return offset + slope * np.log1p(traffic)


def discoverability(curves: Curves, traffic) -> np.ndarray:
  """P(discoverable) of each item at total exploration traffic `traffic`."""
  return special.expit(discoverability_logits(curves, traffic))


def required_traffic(curves: Curves, confidence: float) -> np.ndarray:
  """Total traffic X [N] float64 at which each item becomes discoverable with P = `confidence`."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"allocation.confidence must lie in (0, 1); got {confidence}.")
  target = np.log(confidence) - np.log1p(-confidence)
  exponent = (target - curves.offset) / curves.slope
  return np.expm1(np.clip(exponent, 0.0, 700.0))  # clip: X >= 0, and no float overflow


class DiscoverabilityModel(nnx.Module):
  """MLP from [embedding, engagement features] to a monotone discoverability curve per item."""

  def __init__(self, embedding_dim: int, hidden_dims, *, rngs: nnx.Rngs):
    in_dim = embedding_dim + NUM_ENGAGEMENT_FEATURES
    # Standardisation constants, set from the training rows; not trained.
    self.feature_mean = nnx.Variable(jnp.zeros((in_dim,), jnp.float32))
    self.feature_std = nnx.Variable(jnp.ones((in_dim,), jnp.float32))
    dims = [in_dim, *hidden_dims]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
    self.head = nnx.Linear(dims[-1], 2, rngs=rngs)

  def __call__(self, embeddings: jax.Array, engagement: jax.Array) -> tuple[jax.Array, jax.Array]:
    """embeddings [N, D], engagement [N, F] -> (offset [N], slope [N] > 0)."""
    x = jnp.concatenate([embeddings, engagement], axis=-1)
    x = (x - self.feature_mean[...]) / self.feature_std[...]
    for layer in self.hidden:
      x = jax.nn.gelu(layer(x))
    out = self.head(x)  # [N, 2]
    return out[:, 0], jax.nn.softplus(out[:, 1])

  def logits(self, embeddings, engagement, traffic) -> jax.Array:
    """logit P(discoverable) [N] at total traffic [N]."""
    offset, slope = self(embeddings, engagement)
    return offset + slope * jnp.log1p(traffic)


def training_rows(history: simulator.History, embeddings: np.ndarray) -> TrainingRows:
  """One row per (past item, checkpoint): features seen at that point, label from the final
  outcome."""
  num_items, num_checkpoints = history.checkpoint_impressions.shape
  item = np.repeat(np.arange(num_items), num_checkpoints)
  return TrainingRows(embeddings=embeddings[item],
                      impressions=history.checkpoint_impressions.reshape(-1),
                      clicks=history.checkpoint_clicks.reshape(-1),
                      traffic=history.traffic[item].astype(np.float32),
                      labels=history.discoverable[item].astype(np.float32), item=item)


class ContentScorer(NamedTuple):
  """A linear content score: engagement logit [N] = embeddings [N, D] @ coef + intercept."""
  coef: np.ndarray  # [D] float64
  intercept: float

  def __call__(self, embeddings: np.ndarray) -> np.ndarray:
    return np.asarray(embeddings, np.float64) @ self.coef + self.intercept


def fit_content_scorer(embeddings: np.ndarray, history: simulator.History) -> ContentScorer:
  """A ridge regression (RidgeCV: its penalty by leave-one-out) from past items' embeddings [P, D]
  to the logit of their smoothed logged click rate, weighted by traffic (items never explored carry
  no target)."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  clicks = history.checkpoint_clicks[:, -1].astype(np.float64)
  traffic = history.traffic.astype(np.float64)
  target = np.log(clicks + 0.5) - np.log(traffic - clicks + 0.5)
  seen = traffic > 0
  if seen.sum() < 2:
    raise ValueError("the content score needs at least 2 explored past items in the history")
  weight = traffic / (traffic + 20.0)
  model = linear_model.RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(
      np.asarray(embeddings, np.float64)[seen], target[seen], sample_weight=weight[seen])
  return ContentScorer(np.asarray(model.coef_, np.float64), float(model.intercept_))


def content_scores(embeddings: np.ndarray, past: np.ndarray, history: simulator.History,
                   folds: int = 5, seed: int = 0) -> tuple[np.ndarray, ContentScorer]:
  """One content feature per item [N, 1] float32: the engagement logit that its embedding predicts
  (`fit_content_scorer` on the past items, `past` [N] bool in the order of `history`), and the
  scorer fitted on every past item.

  Past items get out-of-fold predictions (`folds` folds, so that the discoverability model does
  not learn to trust a score fitted on its own rows); the other items the fit on every past item.
  """
  embeddings = np.asarray(embeddings, np.float64)
  past_index = np.flatnonzero(past)
  scorer = fit_content_scorer(embeddings[past_index], history)
  scores = scorer(embeddings)
  fold = np.random.default_rng(seed).integers(folds, size=len(past_index))
  for k in range(folds):
    held_out = fold == k
    fold_history = simulator.History(*(field[~held_out] for field in history))
    scores[past_index[held_out]] = fit_content_scorer(
        embeddings[past_index[~held_out]], fold_history)(embeddings[past_index[held_out]])
  return scores[:, None].astype(np.float32), scorer


def _subset(rows: TrainingRows, mask: np.ndarray) -> TrainingRows:
  return TrainingRows(*(field[mask] for field in rows))


def split_rows(rows: TrainingRows, validation_fraction: float,
               seed: int) -> tuple[TrainingRows, TrainingRows]:
  """Splits by item (all checkpoints of an item fall on one side): (train, validation)."""
  num_items = int(rows.item.max()) + 1
  held_out = np.random.default_rng(seed).random(num_items) < validation_fraction
  return _subset(rows, ~held_out[rows.item]), _subset(rows, held_out[rows.item])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _train_epoch(graphdef, learning_rate, weight_decay, params, constants, opt_state,
                 embeddings, engagement, traffic, labels):
  """One pass over an epoch's batches [S, B, ...] with lax.scan: one dispatch per epoch.

  Functional NNX (split params / merge): the compiled epoch is cached across models of one shape.
  """
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)

  def step(carry, batch):
    params, opt_state = carry
    def loss_fn(params):
      logits = nnx.merge(graphdef, params, constants).logits(*batch[:3])
      return optax.sigmoid_binary_cross_entropy(logits, batch[3]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                             (embeddings, engagement, traffic, labels))
  return params, opt_state, losses


def train(rows: TrainingRows, model_config) -> tuple[DiscoverabilityModel, list[float]]:
  """Fits the model by minibatch cross-entropy (adamw); returns (model, per-epoch mean loss)."""
  if len(rows.labels) == 0:
    raise ValueError("no training rows: history.days * world.items_per_day must be > 0.")
  mc = model_config
  model = DiscoverabilityModel(rows.embeddings.shape[1], tuple(mc.hidden_dims),
                               rngs=nnx.Rngs(mc.seed))
  engagement = engagement_features(rows.impressions, rows.clicks)  # [R, F]
  features = np.concatenate([rows.embeddings, engagement], axis=1)
  model.feature_mean[...] = jnp.asarray(features.mean(0))
  model.feature_std[...] = jnp.asarray(features.std(0) + 1e-6)
  graphdef, params, constants = nnx.split(model, nnx.Param, ...)
  learning_rate, weight_decay = float(mc.learning_rate), float(mc.weight_decay)
  opt_state = optax.adamw(learning_rate, weight_decay=weight_decay).init(params)

  rng = np.random.default_rng(mc.seed)
  num_rows = len(rows.labels)
  batch_size = min(mc.batch_size, num_rows)
  num_batches = num_rows // batch_size  # full batches only: one compiled shape
  losses = []
  for _ in range(mc.epochs):
    order = rng.permutation(num_rows)[:num_batches * batch_size].reshape(num_batches, batch_size)
    params, opt_state, batch_losses = _train_epoch(
        graphdef, learning_rate, weight_decay, params, constants, opt_state,
        rows.embeddings[order], engagement[order], rows.traffic[order], rows.labels[order])
    losses.append(float(batch_losses.mean()))
  nnx.update(model, params)
  return model, losses


@nnx.jit
def _curves_batch(model, embeddings, engagement):
  return model(embeddings, engagement)


def predict_curves(model: DiscoverabilityModel, embeddings: np.ndarray, impressions: np.ndarray,
                   clicks: np.ndarray, batch_size: int = 65536) -> Curves:
  """Discoverability curves for items [N] given their embeddings [N, D] and engagement so far."""
  embeddings = simulator.check_embeddings(embeddings)
  engagement = engagement_features(impressions, clicks)
  num_items = embeddings.shape[0]
  batch_size = min(batch_size, num_items)
  pad = -num_items % batch_size  # pad to whole batches so jit compiles one shape
  embeddings = np.pad(embeddings, ((0, pad), (0, 0)))
  engagement = np.pad(engagement, ((0, pad), (0, 0)))
  offsets, slopes = [], []
  for start in range(0, num_items + pad, batch_size):
    offset, slope = _curves_batch(model, embeddings[start:start + batch_size],
                                  engagement[start:start + batch_size])
    offsets.append(np.asarray(offset))
    slopes.append(np.asarray(slope))
  return Curves(np.concatenate(offsets)[:num_items].astype(np.float64),
                np.concatenate(slopes)[:num_items].astype(np.float64))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               num_bins: int) -> float:
  """ECE = sum_b (n_b / n) |mean(label in b) - mean(p in b)| over `num_bins` equal-width bins of
  p."""
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels, np.float64)
  bins = np.clip((probabilities * num_bins).astype(np.int64), 0, num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  gap = np.abs(np.bincount(bins, labels, num_bins) - np.bincount(bins, probabilities, num_bins))
  return float(gap.sum() / max(counts.sum(), 1))


def reliability(probabilities: np.ndarray, labels: np.ndarray, num_bins: int) -> dict:
  """Per-bin mean predicted probability, observed frequency and count (for the reliability plot)."""
  probabilities = np.asarray(probabilities, np.float64)
  bins = np.clip((probabilities * num_bins).astype(np.int64), 0, num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  safe = np.maximum(counts, 1)
  return {"predicted": (np.bincount(bins, probabilities, num_bins) / safe).tolist(),
          "observed": (np.bincount(bins, np.asarray(labels, np.float64), num_bins) / safe).tolist(),
          "count": counts.tolist()}


def _name(path) -> str:
  """'hidden/0/kernel' for a variable's tree path."""
  parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
  return "/".join(str(part) for part in parts if part != "value")


def _state_leaves(model: DiscoverabilityModel) -> dict[str, jax.Array]:
  """{name: array} of every variable of `model` (parameters and standardisation constants)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model))
  return {_name(path): leaf for path, leaf in leaves}


def save_model(model: DiscoverabilityModel, path: str) -> None:
  """Writes the model's variables to `path` (.npz); `load_model` rebuilds it."""
  arrays = {name: np.asarray(leaf) for name, leaf in _state_leaves(model).items()}
  partial = path + ".partial.npz"
  np.savez(partial, **arrays)
  os.replace(partial, path)


def load_model(path: str, embedding_dim: int, hidden_dims) -> DiscoverabilityModel:
  """The model `save_model` wrote to `path`, for `embedding_dim` inputs and `hidden_dims`; an
  error names the file and what differs if its variables do not fit that shape."""
  model = DiscoverabilityModel(embedding_dim, tuple(hidden_dims), rngs=nnx.Rngs(0))
  state = nnx.state(model)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  with np.load(path) as saved:
    names = [_name(p) for p, _ in leaves]
    if set(saved.files) != set(names):
      raise ValueError(f"{path}: its variables {sorted(saved.files)} are not those of a model with "
                       f"{embedding_dim} inputs and hidden_dims {tuple(hidden_dims)}: "
                       f"{sorted(names)}")
    restored = []
    for name, (_, leaf) in zip(names, leaves):
      if saved[name].shape != leaf.shape:
        raise ValueError(f"{path}: {name} has shape {saved[name].shape}, the model needs "
                         f"{leaf.shape}")
      restored.append(jnp.asarray(saved[name], leaf.dtype))
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, restored))
  return model
