"""The simulated users' taste over what ToyWorld items are: their latent engagement rate.

Each attribute value (a shape, a colour, a size, a motion, ...) has a seeded utility ~ N(0, 1);
an object's utility is the weighted sum over `attributes`, a scene's the mean over its objects.
An item's sound follows from its objects' shape, colour and size, so taste over those is also
taste over sounds; motion shows only in the video. Then

    quality = sigmoid(base_logit + content_scale * z(taste) + noise_scale * eps)

with z standardised over the catalogue and eps ~ N(0, 1) the part content cannot explain. The
policies never see attributes or utilities: only embeddings and engagement logs.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from gemb.datasets import toyworld


def attribute_utilities(seed: int, attributes: Mapping[str, float]) -> dict[str, np.ndarray]:
  """{attribute: utility [number of values] float64}, each N(0, 1) times its weight."""
  unknown = set(attributes) - set(toyworld.ATTRIBUTES)
  if unknown:
    raise ValueError(f"config.world.taste.attributes has unknown ToyWorld attributes "
                     f"{sorted(unknown)}; known: {toyworld.ATTRIBUTES}")
  rng = np.random.default_rng([seed, 4_242])
  # Drawn for every attribute in a fixed order, so one attribute's weight leaves the others alone.
  draws = {name: rng.standard_normal(len(toyworld.VALUES[name])) for name in toyworld.ATTRIBUTES}
  return {name: float(weight) * draws[name] for name, weight in attributes.items()}


def scene_taste(scenes: Sequence[tuple], utilities: Mapping[str, np.ndarray]) -> np.ndarray:
  """Taste [N] float64: per scene, the mean over its objects of the summed attribute utilities."""
  taste = np.zeros(len(scenes))
  for i, scene in enumerate(scenes):
    taste[i] = np.mean([sum(u[getattr(obj, name)] for name, u in utilities.items())
                        for obj in scene])
  return taste


def quality_from_taste(rng: np.random.Generator, taste: np.ndarray, base_logit: float,
                       content_scale: float, noise_scale: float) -> np.ndarray:
  """Engagement rate [N] in (0, 1) from the standardised taste plus unexplained noise."""
  z = (taste - taste.mean()) / max(taste.std(), 1e-12)
  logits = base_logit + content_scale * z + noise_scale * rng.standard_normal(len(z))
  return 1.0 / (1.0 + np.exp(-logits))
