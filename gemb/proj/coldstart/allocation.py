"""Exploration budget allocation by inverting the discoverability model (the discoverability
policy).

Each round, for every item of the cohort:
  1. re-score it with its engagement so far: a curve P_i(Y) of discoverability in total traffic Y;
  2. graduate it (stop exploring) once P_i(impressions so far) >= confidence (CF);
  3. invert the curve: X_i = the traffic at which P_i(X_i) = CF (`required_traffic`), capped at
     max_traffic_per_item; X_i is as far as the item will ever be explored;
  4. give it up as hopeless when even the cap promises P_i < hopeless_probability, or it has had
     its X_i without graduating;
  5. spend the round's budget where the expected gain per impression is highest: for each open
     item the step d (from `steps`, at most X_i - now) maximising (P_i(now + d) - P_i(now)) / d,
     items funded in order of that gain; if budget is left after every open item got its step,
     another pass plans the next step on top (up to `max_passes`).
With a perfect (step-function) model this is cheapest-to-discover first. Budget that graduated or
hopeless items no longer take stays in the pool for later rounds (see `simulator.explore`).
Everything is vectorised numpy over [N, len(steps)] arrays; a sort over the items costs the most.
"""
import numpy as np

from gemb.proj.coldstart import discoverability, simulator


def fund_by_priority(priority: np.ndarray, need: np.ndarray, budget: int) -> np.ndarray:
  """Gives items their `need` [N] in descending `priority` [N] until `budget` runs out.

  Items with need <= 0 or priority NaN get nothing; the first item that does not fit gets what is
  left. Returns new impressions [N] int64 whose sum is min(budget, sum of needs).
  """
  if budget < 0:
    raise ValueError(f"the round budget must be >= 0 impressions; got {budget}.")
  need = np.maximum(np.asarray(need, np.int64), 0)
  candidates = np.flatnonzero((need > 0) & ~np.isnan(priority))
  order = candidates[np.argsort(-priority[candidates], kind="stable")]
  spent_before = np.cumsum(need[order]) - need[order]  # budget used by the items ahead of each one
  grant = np.clip(budget - spent_before, 0, need[order])
  increments = np.zeros(len(need), np.int64)
  increments[order] = grant
  return increments


def allocate_round(curves: discoverability.Curves, impressions: np.ndarray, round_budget: int,
                   allocation_config) -> tuple[np.ndarray, dict]:
  """One round of the discoverability policy: new impressions [N] int64 and counts of the items'
  states."""
  ac = allocation_config
  if round_budget < 0:
    raise ValueError(f"the round budget must be >= 0 impressions; got {round_budget}.")
  num_items = len(impressions)
  impressions = np.asarray(impressions, np.int64)
  p_now = discoverability.discoverability(curves, impressions)
  target = np.minimum(np.ceil(discoverability.required_traffic(curves, ac.confidence)),
                      ac.max_traffic_per_item)  # [N] X_i, capped
  p_cap = discoverability.discoverability(curves,
                                          np.full(num_items, float(ac.max_traffic_per_item)))
  graduated = p_now >= ac.confidence
  hopeless = ~graduated & ((p_cap < ac.hopeless_probability) | (target <= impressions))
  active = ~graduated & ~hopeless
  steps = np.asarray(ac.steps, np.float64)  # [G] candidate step sizes
  increments = np.zeros(num_items, np.int64)
  budget_left = int(round_budget)
  for _ in range(ac.max_passes):
    base = impressions + increments
    room = target - base
    open_items = active & (room >= 1)
    if budget_left <= 0 or not open_items.any():
      break
    step = np.minimum(steps[None, :], np.maximum(room, 1.0)[:, None])  # [N, G]
    p_base = discoverability.discoverability(curves, base)
    gain_per_impression = (discoverability.discoverability(curves, base[:, None] + step)
                           - p_base[:, None]) / step  # [N, G]
    best = np.argmax(gain_per_impression, axis=1)
    rows = np.arange(num_items)
    priority = np.where(open_items, gain_per_impression[rows, best], np.nan)
    need = np.where(open_items, step[rows, best], 0.0).astype(np.int64)
    new = fund_by_priority(priority, need, budget_left)
    increments += new
    budget_left -= int(new.sum())
  state = {"graduated": int(graduated.sum()), "hopeless": int(hopeless.sum()),
           "funded": int((increments > 0).sum())}
  return increments, state


def discoverability_policy(model: discoverability.DiscoverabilityModel, embeddings: np.ndarray,
                allocation_config) -> simulator.RoundPolicy:
  """The round policy that re-scores a cohort's items with `model` and allocates by inversion."""
  embeddings = simulator.check_embeddings(embeddings)

  def round_policy(round_index, impressions, clicks, round_budget, rng):
    del round_index, rng  # deterministic given the engagement so far
    curves = discoverability.predict_curves(model, embeddings, impressions, clicks)
    increments, _ = allocate_round(curves, impressions, round_budget, allocation_config)
    return increments

  return round_policy
