"""The content world: ToyWorld items, their taste-based quality, and their embeddings per variant.

`config.world.source='toyworld'`: the catalogue is `items_per_day * days` ToyWorld scenes
(catalogue.toyworld_items); quality comes from the users' taste over the scenes' attributes
(taste.py); the discoverability policy runs once per embedding variant of `config.world.variants`:

  trained      the gemb model of config.embedder (bundle or checkpoint)
  random_init  the same architecture at random init
  no_content   no content at all (a constant embedding: engagement only)
  oracle       the users' taste itself, the part of quality content can explain: what a perfect
               content model would give, the headroom the embeddings are measured against

Embeddings are computed once per catalogue (cached by item id); each seed re-draws the taste,
the noise and which items arrive on which day.
"""
from __future__ import annotations

import os

import numpy as np

from gemb.proj.coldstart import catalogue, embedder, simulator, taste

VARIANTS = ("trained", "random_init", "no_content", "oracle")


def policy_name(variant: str) -> str:
  return f"discoverability/{variant}"


def num_items(config) -> int:
  wc = config.world
  return wc.items_per_day * (wc.history_days + wc.tuning_days + wc.eval_days)


def toyworld_catalogue(config, count: int | None = None, seed_offset: int = 0
                       ) -> list[catalogue.Item]:
  """`count` ToyWorld items (default: the whole world's) of config.world.toyworld, drawn from
  its seed + `seed_offset`."""
  tc = config.world.toyworld
  world = tc.world.to_dict() if hasattr(tc.world, "to_dict") else tc.world
  return catalogue.toyworld_items(count or num_items(config), tc.seed + seed_offset, tc.split,
                                  world, tc.caption_aspect,
                                  tc.get("content_types", (catalogue.PARTS,)))


def scene_taste(config, scenes) -> np.ndarray:
  """The users' taste [N] for `scenes` (seeded by config.world.seed; taste.py)."""
  wc = config.world
  utilities = taste.attribute_utilities(
      wc.seed, {name: float(weight) for name, weight in wc.taste.attributes.items()})
  return taste.scene_taste(scenes, utilities)


def scene_quality(config, scenes, rng: np.random.Generator,
                  tastes: np.ndarray | None = None) -> np.ndarray:
  """Latent quality [N] of `scenes`: their taste (`tastes` if already computed) through
  taste.quality_from_taste, its noise drawn from `rng`."""
  wc = config.world
  tastes = scene_taste(config, scenes) if tastes is None else tastes
  return taste.quality_from_taste(rng, tastes, wc.base_logit, wc.content_scale, wc.noise_scale)


def cache_dir(config, workdir: str) -> str:
  return config.embedder.cache_dir or os.path.join(workdir, "coldstart", "embedding_cache")


def embedding_sets(config, items, workdir: str) -> dict[str, np.ndarray]:
  """{policy name: [N, D] embeddings of `items`} for every variant of config.world.variants."""
  variants = tuple(config.world.variants)
  unknown = set(variants) - set(VARIANTS)
  if not variants or unknown:
    raise ValueError(f"config.world.variants={variants}: give one or more of {VARIANTS}")
  sets = {}
  for variant in variants:
    if variant == "no_content":
      sets[policy_name(variant)] = np.zeros((len(items), 1), np.float32)
      continue
    if variant == "oracle":  # the taste depends on the seed: make_world fills it in
      sets[policy_name(variant)] = None
      continue
    encoder = embedder.item_encoder(config.embedder, variant)
    sets[policy_name(variant)] = embedder.embed_items(
        encoder, items, batch_size=config.embedder.batch_size, combine=config.embedder.combine,
        cache_dir=cache_dir(config, workdir))
  return sets


def make_world(config, items, sets: dict[str, np.ndarray]) -> tuple[simulator.World, dict]:
  """(World, {policy name: embeddings in the world's item order}) for config.world.seed."""
  wc = config.world
  n = num_items(config)
  if len(items) != n:
    raise ValueError(f"the catalogue has {len(items)} items but the world needs {n}")
  rng = np.random.default_rng(wc.seed)
  order = rng.permutation(n)
  scenes = [items[i].scene for i in order]
  tastes = scene_taste(config, scenes)
  quality = scene_quality(config, scenes, rng, tastes)
  day = np.repeat(np.arange(n // wc.items_per_day, dtype=np.int32), wc.items_per_day)
  oracle = tastes[:, None].astype(np.float32)  # one feature: no ridge on it
  ordered = {name: simulator.check_embeddings(oracle if e is None else e[order], name=name)
             for name, e in sets.items()}
  return simulator.World(next(iter(ordered.values())), quality, day), ordered


def taste_probe(config, items, sets: dict, train_fraction: float = 0.75) -> dict:
  """How much of the users' taste each embedding set carries linearly: held-out R^2 of a ridge
  regression (RidgeCV) from an item's embedding to its taste, trained on the first
  `train_fraction` of the catalogue, scored on the rest, over all items and per content type
  ('text', 'image+audio', ...). {policy name: {"all": r2, type: r2, ...}}; sets with one column
  (no content, the oracle) are left out."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  target = scene_taste(config, [item.scene for item in items])
  kinds = np.array(["+".join(name for part in item.content for name in part) for item in items])
  split = int(train_fraction * len(items))
  probe = {}
  for name, embeddings in sets.items():
    if embeddings is None or embeddings.shape[1] == 1:
      continue
    x = np.asarray(embeddings, np.float64)
    ridge = linear_model.RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x[:split], target[:split])
    held_out = np.arange(len(items)) >= split
    probe[name] = {"all": float(ridge.score(x[held_out], target[held_out]))}
    for kind in sorted(set(kinds)) if len(set(kinds)) > 1 else ():
      rows = held_out & (kinds == kind)
      probe[name][kind] = float(ridge.score(x[rows], target[rows]))
  return probe
