"""Cold-start world: fresh items, their engagement, and the exploitation recommender.

Every day a cohort of fresh items arrives. Each item has a content embedding and a latent
engagement rate ("quality") that its content predicts only partly:

    quality = sigmoid(base_logit + content_scale * z(embedding) + noise_scale * eps)

where z is the embedding's projection on a seeded random unit direction, standardised over the
corpus, and eps ~ N(0, 1) is the part of quality that content cannot predict. An impression is
engaged with probability `quality` (Bernoulli).

Exploration gives each item some impressions. Afterwards the exploitation recommender scores every
item by its posterior-mean engagement rate under a pessimistic Beta prior and serves, in steps of
`serve_step` impressions, the items whose estimate passes `threshold`; an item that falls below
the threshold is never served again. An item is *discoverable* when exploitation serves it at
least `min_served` (M) times.

Policies see only impressions and clicks (and, for the discoverability policy, content embeddings
and a model trained on past days' logs); the latent quality stays inside this module.
All functions are seeded through an explicit `np.random.Generator` and are deterministic.
"""
from typing import Callable, NamedTuple

import numpy as np


class World(NamedTuple):
  """Every item of the simulated platform, split into days of fresh items."""
  embeddings: np.ndarray  # [N, D] float32 content embeddings
  quality: np.ndarray  # [N] float64 latent engagement rate in (0, 1); never shown to policies
  day: np.ndarray  # [N] int32 the day each item arrives on


class History(NamedTuple):
  """Logs of past items explored with randomised traffic (the discoverability model's training
  data)."""
  traffic: np.ndarray  # [N] int64 exploration impressions each past item received in total
  checkpoint_impressions: np.ndarray  # [N, K] int64 impressions seen at K points during exploration
  checkpoint_clicks: np.ndarray  # [N, K] int64 clicks among those impressions
  discoverable: np.ndarray  # [N] bool exploitation served the item at least M times


class Exploration(NamedTuple):
  """The outcome of one policy exploring one cohort."""
  impressions: np.ndarray  # [N] int64 exploration impressions per item
  clicks: np.ndarray  # [N] int64
  served: np.ndarray  # [N] int64 exploitation impressions per item
  discoverable: np.ndarray  # [N] bool


# A round of a policy: (round_index, impressions [N], clicks [N], round_budget, rng) -> new
# impressions [N].
RoundPolicy = Callable[[int, np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]


def check_embeddings(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
  """Returns `embeddings` as float32 [N, D]; raises a ValueError naming what is wrong."""
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array [num_items, dim]; got shape {embeddings.shape}.")
  if embeddings.shape[0] == 0:
    raise ValueError(f"{name} is an empty corpus (0 items); give at least one item.")
  if embeddings.shape[1] == 0:
    raise ValueError(f"{name} has dimension 0; each item needs a content embedding.")
  if not np.issubdtype(embeddings.dtype, np.number):
    raise ValueError(f"{name} must be numeric; got dtype {embeddings.dtype}.")
  bad = ~np.isfinite(embeddings).all(axis=1)
  if bad.any():
    rows = np.flatnonzero(bad)
    raise ValueError(
        f"{name} has {rows.size} item(s) with NaN or infinite values (first rows: "
        f"{rows[:5].tolist()}); drop or re-embed those items.")
  return embeddings.astype(np.float32)


def synthetic_embeddings(rng: np.random.Generator, num_items: int, dim: int, num_clusters: int,
                         cluster_spread: float) -> np.ndarray:
  """Unit-norm embeddings [num_items, dim] scattered around `num_clusters` random topic centres."""
  centres = rng.standard_normal((num_clusters, dim))  # [C, D]
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  topic = rng.integers(num_clusters, size=num_items)
  embeddings = centres[topic] + cluster_spread / np.sqrt(dim) * rng.standard_normal(
      (num_items, dim))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  return embeddings.astype(np.float32)


def latent_quality(rng: np.random.Generator, embeddings: np.ndarray, base_logit: float,
                   content_scale: float, noise_scale: float) -> np.ndarray:
  """Engagement rate [N] in (0, 1) that the embedding [N, D] predicts through one random
  direction."""
  direction = rng.standard_normal(embeddings.shape[1])
  direction /= np.linalg.norm(direction)
  projection = embeddings.astype(np.float64) @ direction  # [N]
  z = (projection - projection.mean()) / max(projection.std(), 1e-12)
  logits = base_logit + content_scale * z + noise_scale * rng.standard_normal(len(z))
  return 1.0 / (1.0 + np.exp(-logits))


def make_world(config) -> World:
  """Builds every day's items from `config.world` (synthetic, or embeddings read from a .npy
  file)."""
  wc = config.world
  days = wc.history_days + wc.tuning_days + wc.eval_days
  num_items = wc.items_per_day * days
  rng = np.random.default_rng(wc.seed)
  if wc.embeddings_path:
    embeddings = check_embeddings(np.load(wc.embeddings_path),
                                  name=f"world.embeddings_path={wc.embeddings_path}")
    if embeddings.shape[0] < num_items:
      raise ValueError(
          f"world.embeddings_path has {embeddings.shape[0]} items but world.items_per_day *"
          f" (history_days + tuning_days + eval_days) = {wc.items_per_day} * {days} = {num_items};"
          " lower world.items_per_day or give more items.")
    embeddings = embeddings[rng.permutation(embeddings.shape[0])[:num_items]]
  else:
    embeddings = synthetic_embeddings(rng, num_items, wc.dim, wc.num_clusters, wc.cluster_spread)
  quality = latent_quality(rng, embeddings, wc.base_logit, wc.content_scale, wc.noise_scale)
  day = np.repeat(np.arange(days, dtype=np.int32), wc.items_per_day)
  return World(embeddings, quality, day)


def engage(rng: np.random.Generator, quality: np.ndarray, impressions: np.ndarray) -> np.ndarray:
  """Clicks [N] int64 that `impressions` [N] new impressions earn: Binomial(impressions,
  quality)."""
  return rng.binomial(impressions.astype(np.int64), quality).astype(np.int64)


def estimated_quality(impressions: np.ndarray, clicks: np.ndarray, recommender) -> np.ndarray:
  """The exploitation recommender's posterior-mean engagement rate [N] under its Beta prior."""
  prior_clicks = recommender.prior_rate * recommender.prior_impressions
  return (clicks + prior_clicks) / (impressions + recommender.prior_impressions)


def exploit(rng: np.random.Generator, quality: np.ndarray, impressions: np.ndarray,
            clicks: np.ndarray, recommender) -> tuple[np.ndarray, np.ndarray]:
  """Runs the exploitation recommender after exploration; returns (served [N], discoverable [N])."""
  steps = -(-recommender.min_served // recommender.serve_step)  # ceil
  impressions, clicks = impressions.astype(np.int64), clicks.astype(np.int64)
  served = np.zeros_like(impressions)
  alive = estimated_quality(impressions, clicks, recommender) >= recommender.threshold
  for _ in range(steps):
    step = np.where(alive, recommender.serve_step, 0)
    served += step
    impressions = impressions + step
    clicks = clicks + engage(rng, quality, step)
    alive &= estimated_quality(impressions, clicks, recommender) >= recommender.threshold
  return served, served >= recommender.min_served


def log_history(rng: np.random.Generator, quality: np.ndarray, config) -> History:
  """Past items explored with log-uniform random traffic, engagement logged at checkpoints.

  Randomised traffic is what lets a model learn how discoverability grows with traffic; the
  checkpoints (fractions of each item's traffic) give rows with early engagement, as the rounds of
  an allocation see it.
  """
  hc = config.history
  num_items = len(quality)
  traffic = np.floor(np.exp(rng.uniform(0.0, np.log1p(hc.max_traffic),
                                        num_items))).astype(np.int64) - 1
  traffic[rng.random(num_items) < hc.unexplored_fraction] = 0
  fractions = np.asarray(hc.checkpoint_fractions, np.float64)  # [K] ascending in [0, 1]
  if np.any(np.diff(fractions) < 0) or fractions.min() < 0 or fractions.max() > 1:
    raise ValueError(f"history.checkpoint_fractions must ascend within [0, 1]; got "
                     f"{list(fractions)}.")
  checkpoints = np.floor(traffic[:, None] * fractions[None, :]).astype(np.int64)  # [N, K]
  steps = np.diff(checkpoints, axis=1, prepend=0)
  checkpoint_clicks = np.cumsum(rng.binomial(steps, quality[:, None]), axis=1).astype(np.int64)
  rest = traffic - checkpoints[:, -1]
  clicks = checkpoint_clicks[:, -1] + engage(rng, quality, rest)
  _, discoverable = exploit(rng, quality, traffic, clicks, config.recommender)
  return History(traffic, checkpoints, checkpoint_clicks, discoverable)


def explore(rng: np.random.Generator, quality: np.ndarray, policy: RoundPolicy, budget: int,
            num_rounds: int, recommender) -> Exploration:
  """Runs `policy` for `num_rounds` rounds within `budget` impressions, then exploitation.

  Each round may spend what is left of the budget divided by the rounds left, so budget a policy
  does not use (items that graduated or look hopeless) is recycled into later rounds. Clicks of a
  round are seen by the policy in the next round.
  """
  if budget < 0:
    raise ValueError(f"budget must be >= 0 impressions; got {budget}.")
  if num_rounds < 1:
    raise ValueError(f"num_rounds must be >= 1; got {num_rounds}.")
  if len(quality) == 0:
    raise ValueError("the cohort is empty (0 items); nothing to explore.")
  impressions = np.zeros(len(quality), np.int64)
  clicks = np.zeros(len(quality), np.int64)
  for round_index in range(num_rounds):
    remaining = budget - int(impressions.sum())
    round_budget = remaining // (num_rounds - round_index)
    if round_index == num_rounds - 1:
      round_budget = remaining
    new = np.asarray(policy(round_index, impressions, clicks, round_budget, rng))
    if new.shape != impressions.shape or not np.issubdtype(new.dtype, np.integer):
      raise ValueError(f"a policy must return integer impressions of shape {impressions.shape}; "
                       f"got {new.dtype} {new.shape}.")
    if new.min(initial=0) < 0 or int(new.sum()) > round_budget:
      raise ValueError(f"policy overspent round {round_index}: {int(new.sum())} impressions "
                       f"(min {new.min()}) for a round budget of {round_budget}.")
    impressions += new
    clicks += engage(rng, quality, new)
  served, discoverable = exploit(rng, quality, impressions, clicks, recommender)
  return Exploration(impressions, clicks, served, discoverable)
