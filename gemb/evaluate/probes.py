"""Models fitted on frozen embeddings, in numpy: logistic-regression probe, kNN, k-means.

Everything is seeded and deterministic; none of it needs a framework, so any embedding function's
output (a gemb checkpoint, an exported model, an outside model) is probed the same way.
"""
from __future__ import annotations

import numpy as np

from gemb.evaluate import search


# ----------------------------------------------------------------------------- logistic regression
def _softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
  """Mean cross-entropy and its gradient w.r.t. logits ([N, C], [N] int)."""
  logits = logits - logits.max(axis=1, keepdims=True)
  log_z = np.log(np.exp(logits).sum(axis=1))
  loss = float(np.mean(log_z - logits[np.arange(len(labels)), labels]))
  probs = np.exp(logits - log_z[:, None])
  probs[np.arange(len(labels)), labels] -= 1.0
  return loss, probs / len(labels)


def fit_logistic_regression(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                            l2: float, max_steps: int, tolerance: float,
                            memory: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Multinomial logistic regression by L-BFGS with a backtracking (Armijo) line search.

  Minimises mean_i CE(softmax(x_i W + b), y_i) + l2/2 ||W||^2 (bias not penalised), which is
  sklearn's LogisticRegression(C=1 / (l2 * N)). The objective is strongly convex for l2 > 0, so
  the optimum is unique and the probe's result does not depend on the optimiser.

  Args:
    features: [N, D] float.
    labels: [N] int in [0, num_classes).
    l2: weight decay on W; must be > 0.
    max_steps: L-BFGS iterations at most.
    tolerance: stop when the largest gradient entry is below this (sklearn's `tol` test).
    memory: number of (step, gradient change) pairs L-BFGS keeps.
  Returns:
    weights [D, C] and bias [C], float64.
  """
  if l2 <= 0:
    raise ValueError(f"l2={l2}; the logistic probe needs l2 > 0 (a unique, finite optimum).")
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  d = x.shape[1]

  def objective(params):  # params [D + 1, C]: weights then bias
    w, b = params[:d], params[d]
    loss, dlogits = _softmax_cross_entropy(x @ w + b, labels)
    grad = np.concatenate([x.T @ dlogits + l2 * w, dlogits.sum(0, keepdims=True)])
    return loss + 0.5 * l2 * float((w * w).sum()), grad

  params = np.zeros((d + 1, num_classes))
  value, grad = objective(params)
  history = []  # (s, y, 1 / <y, s>) of the last `memory` steps
  for _ in range(max_steps):
    if np.abs(grad).max() < tolerance:
      break
    # Two-loop recursion: direction = -H grad with H the L-BFGS inverse-Hessian estimate.
    direction, alphas = -grad, []
    for s, y, rho in reversed(history):
      alpha = rho * float((s * direction).sum())
      direction = direction - alpha * y
      alphas.append(alpha)
    if history:  # initial scaling <s, y> / <y, y> of the newest pair
      s, y, rho = history[-1]
      direction = direction / (rho * float((y * y).sum()))
    else:  # first step: unit length along -grad
      direction = direction / np.linalg.norm(direction)
    for (s, y, rho), alpha in zip(history, reversed(alphas)):
      direction = direction + (alpha - rho * float((y * direction).sum())) * s
    slope = float((grad * direction).sum())
    step = 1.0
    while True:
      candidate = params + step * direction
      candidate_value, candidate_grad = objective(candidate)
      if candidate_value <= value + 1e-4 * step * slope:
        break
      step *= 0.5
      if step < 1e-12:  # no decrease possible at float precision: converged
        return params[:d], params[d]
    s, y = candidate - params, candidate_grad - grad
    curvature = float((s * y).sum())
    if curvature > 1e-12:
      history = (history + [(s, y, 1.0 / curvature)])[-memory:]
    params, value, grad = candidate, candidate_value, candidate_grad
  return params[:d], params[d]


def predict_logistic_regression(features: np.ndarray, weights: np.ndarray,
                                bias: np.ndarray) -> np.ndarray:
  """Most probable class per row: [N, D] -> [N] int."""
  return np.argmax(np.asarray(features, np.float64) @ weights + bias, axis=1)


# ----------------------------------------------------------------------------- k nearest neighbours
def knn_votes(train_features: np.ndarray, train_targets: np.ndarray, test_features: np.ndarray,
              k: int) -> np.ndarray:
  """Sum of the k nearest (inner product) training rows' one-hot or multi-hot targets.

  train_targets: [N_train, C] 0/1; returns [N_test, C] vote counts.
  """
  _, neighbours = search.top_k(test_features, train_features, k)  # [N_test, k]
  targets = np.asarray(train_targets, np.int64)
  votes = np.zeros((len(neighbours), targets.shape[1]), np.int64)
  for rank in range(neighbours.shape[1]):  # one [N_test, C] slice at a time, never [N_test, k, C]
    votes += targets[neighbours[:, rank]]
  return votes


def knn_classify(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 k: int, num_classes: int) -> np.ndarray:
  """Majority vote of the k nearest training rows; ties go to the smallest class id (as sklearn)."""
  one_hot = np.eye(num_classes, dtype=np.int64)[np.asarray(train_labels)]
  return np.argmax(knn_votes(train_features, one_hot, test_features, k), axis=1)


def knn_multilabel(train_features: np.ndarray, train_targets: np.ndarray, test_features: np.ndarray,
                   k: int) -> np.ndarray:
  """Per label, predict 1 if more than half of the k nearest training rows have it ([N_test, L]
  bool)."""
  k = min(k, len(train_features))
  return 2 * knn_votes(train_features, train_targets, test_features, k) > k


# ----------------------------------------------------------------------------- k-means
def _squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """[N, D], [K, D] -> [N, K] squared Euclidean distances (clipped at 0 against rounding)."""
  d = (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
  return np.maximum(d, 0.0)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with prob ~ D^2."""
  centroids = [x[rng.integers(len(x))]]
  closest = _squared_distances(x, centroids[0][None])[:, 0]
  for _ in range(1, k):
    total = closest.sum()
    index = rng.choice(len(x), p=closest / total) if total > 0 else rng.integers(len(x))
    centroids.append(x[index])
    closest = np.minimum(closest, _squared_distances(x, x[index][None])[:, 0])
  return np.stack(centroids)


def kmeans(features: np.ndarray, num_clusters: int, *, seed: int, num_init: int, max_steps: int,
           tolerance: float = 1e-6) -> tuple[np.ndarray, np.ndarray, float]:
  """Lloyd's k-means with k-means++ seeding, best (lowest inertia) of `num_init` seeded runs.

  Returns assignments [N] int, centroids [K, D] and inertia (sum of squared distances to the
  assigned centroid). Stops when the centroids move less than tolerance * mean feature variance.
  """
  x = np.asarray(features, np.float64)
  if not 1 <= num_clusters <= len(x):
    raise ValueError(f"num_clusters={num_clusters} must be in 1..{len(x)} (the number of inputs).")
  rng = np.random.default_rng(seed)
  threshold = tolerance * float(np.mean(np.var(x, axis=0)))
  best = None
  for _ in range(num_init):
    centroids = _kmeans_plus_plus(x, num_clusters, rng)
    for _ in range(max_steps):
      distances = _squared_distances(x, centroids)
      assignments = np.argmin(distances, axis=1)
      counts = np.bincount(assignments, minlength=num_clusters)
      sums = np.zeros_like(centroids)
      np.add.at(sums, assignments, x)
      updated = sums / np.maximum(counts, 1)[:, None]
      for empty in np.flatnonzero(counts == 0):  # re-seed an empty cluster at the worst-fit point
        worst = np.argmax(distances[np.arange(len(x)), assignments])
        updated[empty] = x[worst]
        distances[worst] = 0.0
      shift = float(((updated - centroids) ** 2).sum())
      centroids = updated
      if shift <= threshold:
        break
    distances = _squared_distances(x, centroids)
    assignments = np.argmin(distances, axis=1)
    inertia = float(distances[np.arange(len(x)), assignments].sum())
    if best is None or inertia < best[2]:
      best = (assignments, centroids, inertia)
  return best
