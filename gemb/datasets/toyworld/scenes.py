"""ToyWorld scenes: objects with attributes, the train/eval split, hard negatives, overlap.

A scene is a tuple of 1..max_objects objects (how many: config.count_weights), sorted by
grid cell, at most one object per cell of a 3x3 grid. Every object has five attributes, each
an index into a value table:

  shape     square circle triangle cross diamond                 (5)
  colour    red orange yellow green cyan blue purple white        (8)
  size      small medium large                                    (3)
  position  the 9 cells of a 3x3 grid, cell = 3 * row + column    (9)
  motion    still up down left right                              (5)

`count` is the number of objects. An object's sound is a function of its shape (pitch),
colour (timbre) and size (pulse rate), see signals.py, so the sound needs no
attribute of its own and a caption that names those three attributes is decodable from it.

What each rendering shows (its "aspect"): an image shows shape, colour, size and position;
a video adds motion; a sound shows shape, colour and size (not where an object is nor how it
moves); "full" is everything (used by captions that describe whole scenes: STS, bitext).

Compositional split: a fixed set of (shape, colour) pairs, one per colour, is held out of
train. Train scenes contain no held-out pair; every eval scene contains at least one object
with a held-out pair, so no eval scene (in any aspect) is a train scene.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Mapping, NamedTuple

import numpy as np

SHAPES = ("square", "circle", "triangle", "cross", "diamond")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "medium", "large")
GRID = 3  # positions form a GRID x GRID grid; position words assume 3
POSITIONS = ("top left", "top", "top right", "left", "centre", "right",
             "bottom left", "bottom", "bottom right")
MOTIONS = ("still", "up", "down", "left", "right")
ATTRIBUTES = ("shape", "colour", "size", "position", "motion")
VALUES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS,
          "motion": MOTIONS}
ASPECTS = {  # the attributes each kind of rendering shows
    "image": ("shape", "colour", "size", "position"),
    "video": ("shape", "colour", "size", "position", "motion"),
    "audio": ("shape", "colour", "size"),
    "full": ATTRIBUTES,
}
SPLITS = ("train", "eval")


class Obj(NamedTuple):
  """One object; every field is an index into VALUES[field]."""
  shape: int
  colour: int
  size: int
  position: int
  motion: int


Scene = tuple  # tuple[Obj, ...], sorted by position, positions distinct


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Every number of the ToyWorld generator. Build from a config with `from_config`."""

  count_weights: tuple[float, ...] = (1.0, 2.0)  # relative frequency of 1, 2, ... objects
  held_out_seed: int = 0              # which (shape, colour) pairs are held out of train
  languages: tuple[str, ...] = ("en",)  # caption/question/label languages of cross-modal tasks
  bitext_languages: tuple[str, ...] = ("en", "de", "fr", "es")
  image_size: tuple[int, int] = (32, 32)   # (H, W) of images
  video_size: tuple[int, int] = (32, 32)   # (H, W) of video frames
  video_frames: int = 8
  object_scale: tuple[float, ...] = (0.08, 0.11, 0.15)  # half-extent per size / image side
  position_jitter: float = 0.03       # max shift of an object centre / image side
  size_jitter: float = 0.05           # relative jitter of the half-extent
  colour_jitter: float = 12.0         # max shift per channel of an object's colour (0..255)
  background_max: float = 60.0        # background channels uniform in [0, background_max]
  background_gradient: float = 12.0   # max brightness change across the background
  pixel_noise: float = 4.0            # std of Gaussian pixel noise (0..255)
  motion_extent: float = 0.2          # distance travelled in a video / image side
  sample_rate: int = 16000
  audio_seconds: float = 1.0
  pitch_hz: tuple[float, ...] = (250.0, 400.0, 640.0, 1024.0, 1638.4)  # per shape
  harmonic_gain: tuple[float, ...] = (0.6, 0.5, 0.4)  # harmonics 2..4, switched by colour bits
  pulse_hz: tuple[float, ...] = (12.0, 6.0, 3.0)  # per size: small objects pulse fast
  detune: float = 0.01                # max relative pitch detune
  audio_noise: float = 0.01           # std of additive Gaussian noise
  audio_gain: tuple[float, float] = (0.5, 0.9)  # peak amplitude range of the mix

  @property
  def max_objects(self) -> int:
    return len(self.count_weights)

  @property
  def count_cdf(self) -> np.ndarray:
    """[max_objects] cumulative probability of 1, 2, ... objects."""
    w = np.cumsum(np.asarray(self.count_weights, np.float64))
    return w / w[-1]

  def __post_init__(self):
    if not 1 <= self.max_objects <= GRID * GRID or min(self.count_weights) < 0 or not any(
        self.count_weights):
      raise ValueError(f"WorldConfig.count_weights={self.count_weights}: needs 1..{GRID * GRID} "
                       "non-negative weights (for 1, 2, ... objects), not all zero")
    for name, n in (("object_scale", len(SIZES)), ("pitch_hz", len(SHAPES)),
                    ("pulse_hz", len(SIZES))):
      if len(getattr(self, name)) != n:
        raise ValueError(f"WorldConfig.{name} needs {n} values, got {getattr(self, name)}")
    if (1 << len(self.harmonic_gain)) < len(COLOURS):
      raise ValueError(f"WorldConfig.harmonic_gain: {len(self.harmonic_gain)} harmonics give "
                       f"fewer timbres than the {len(COLOURS)} colours; add harmonics")
    if self.sample_rate / 2 <= max(self.pitch_hz) * (len(self.harmonic_gain) + 1):
      raise ValueError("WorldConfig.pitch_hz: the highest harmonic is above Nyquist; "
                       "lower pitch_hz or raise sample_rate")

  @classmethod
  def from_config(cls, cfg: "Mapping[str, Any] | WorldConfig | None") -> "WorldConfig":
    """Builds a WorldConfig from a `config.data.toyworld`-style mapping (unknown keys fail);
    None gives the defaults and a WorldConfig is returned as it is."""
    if isinstance(cfg, WorldConfig):
      return cfg
    if cfg is None:
      return cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(dict(cfg)) - fields
    if unknown:
      raise ValueError(f"unknown ToyWorld config keys {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                  for k, v in dict(cfg).items()})


DEFAULT_CONFIG = WorldConfig()


@functools.lru_cache(maxsize=None)
def _held_out_pairs(held_out_seed: int) -> frozenset[tuple[int, int]]:
  """One held-out shape per colour, shapes used as evenly as possible."""
  rng = np.random.default_rng([held_out_seed, 7])
  shape_order = rng.permutation(len(SHAPES))
  colour_order = rng.permutation(len(COLOURS))
  return frozenset((int(shape_order[i % len(SHAPES)]), int(c)) for i, c in enumerate(colour_order))


@functools.lru_cache(maxsize=None)
def _pair_tables(held_out_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train pairs [P, 2], held-out pairs [Q, 2], all pairs [P+Q, 2]) as (shape, colour)."""
  held = _held_out_pairs(held_out_seed)
  every = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
  train = np.array([p for p in every if p not in held], np.int64)
  return train, np.array(sorted(held), np.int64), np.array(every, np.int64)


def held_out_combinations(config: WorldConfig = DEFAULT_CONFIG) -> tuple[tuple[str, str], ...]:
  """The (shape, colour) pairs that never occur in train scenes, by name."""
  return tuple((SHAPES[s], COLOURS[c]) for s, c in sorted(_held_out_pairs(config.held_out_seed)))


def is_held_out(obj: Obj, config: WorldConfig = DEFAULT_CONFIG) -> bool:
  return (obj.shape, obj.colour) in _held_out_pairs(config.held_out_seed)


def in_split(scene: Scene, split: str, config: WorldConfig = DEFAULT_CONFIG) -> bool:
  """Train: no object has a held-out pair. Eval: at least one does."""
  novel = any(is_held_out(o, config) for o in scene)
  return novel if split == "eval" else not novel


def _check_split(split: str):
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {SPLITS}")


def _random_pairs(rng: np.random.Generator, n: int, split: str, config: WorldConfig) -> np.ndarray:
  """n (shape, colour) pairs [n, 2]: "train" from train pairs, "eval" with one held-out pair,
  "any" from all pairs."""
  train, held, every = _pair_tables(config.held_out_seed)
  if split == "train":
    return train[rng.integers(len(train), size=n)]
  pairs = every[rng.integers(len(every), size=n)]
  if split == "eval":
    pairs[rng.integers(n)] = held[rng.integers(len(held))]  # one novel composition
  return pairs


def sample_scene(rng: np.random.Generator, split: str,
                 config: WorldConfig = DEFAULT_CONFIG) -> Scene:
  """A random scene of `split`: 1..max_objects objects (count_weights) in distinct cells."""
  _check_split(split)
  n = 1 + int(np.searchsorted(config.count_cdf, rng.random(), side="right"))
  cells = rng.permutation(GRID * GRID)[:n]
  pairs = _random_pairs(rng, n, split, config)
  sizes = rng.integers(len(SIZES), size=n)
  motions = rng.integers(len(MOTIONS), size=n)
  objs = [Obj(int(pairs[i, 0]), int(pairs[i, 1]), int(sizes[i]), int(cells[i]), int(motions[i]))
          for i in range(n)]
  return tuple(sorted(objs, key=lambda o: o.position))


def scene_key(scene: Scene, aspect: str = "full") -> tuple:
  """The attribute tuple of what `aspect` shows: equal keys = renderings of identical content.

  Objects are reduced to the aspect's attributes and sorted, so e.g. two scenes that differ
  only in where their objects are have the same "audio" key.
  """
  idx = [ATTRIBUTES.index(a) for a in ASPECTS[aspect]]
  return tuple(sorted(tuple(o[i] for i in idx) for o in scene))


def key_string(scene: Scene, aspect: str = "full") -> str:
  """scene_key as a compact string, e.g. '1.0.2.4;3.5.0.8' (attributes joined by '.')."""
  return ";".join(".".join(map(str, o)) for o in scene_key(scene, aspect))


def attribute_overlap(a: Scene, b: Scene, aspect: str = "full") -> float:
  """Fraction of matching attributes in [0, 1] under the best pairing of objects.

  Matched attributes are summed over the best one-to-one pairing of the objects of `a` and
  `b` and divided by (attributes per object) * max(len(a), len(b)), so unpaired objects (a
  different count) count as mismatches.
  """
  idx = [ATTRIBUTES.index(x) for x in ASPECTS[aspect]]
  small, big = (a, b) if len(a) <= len(b) else (b, a)
  best = 0
  for perm in itertools.permutations(range(len(big)), len(small)):
    best = max(best, sum(small[i][k] == big[j][k] for i, j in enumerate(perm) for k in idx))
  return best / (len(idx) * max(len(a), len(b)))


def sts_score(a: Scene, b: Scene) -> float:
  """Graded similarity 0..5 of two scenes: 5 * attribute_overlap over all attributes."""
  return 5.0 * attribute_overlap(a, b, "full")


def _replace(scene: Scene, i: int, **change) -> Scene:
  objs = list(scene)
  objs[i] = objs[i]._replace(**change)
  return tuple(sorted(objs, key=lambda o: o.position))


def _single_changes(scene: Scene, attribute: str, rng: np.random.Generator, split: str,
                    config: WorldConfig) -> list[Scene]:
  """Every scene that differs from `scene` in `attribute` only (count: one object more/less)."""
  out = []
  if attribute == "count":
    if len(scene) > 1:
      out += [scene[:i] + scene[i + 1:] for i in range(len(scene))]
    if len(scene) < config.max_objects:
      free = sorted(set(range(GRID * GRID)) - {o.position for o in scene})
      pair = _random_pairs(rng, 1, "train" if split == "train" else "any", config)[0]
      new = Obj(int(pair[0]), int(pair[1]), int(rng.integers(len(SIZES))),
                int(free[rng.integers(len(free))]), int(rng.integers(len(MOTIONS))))
      out.append(tuple(sorted(scene + (new,), key=lambda o: o.position)))
  else:
    taken = {o.position for o in scene}
    for i, obj in enumerate(scene):
      for v in range(len(VALUES[attribute])):
        if v == getattr(obj, attribute) or (attribute == "position" and v in taken):
          continue
        out.append(_replace(scene, i, **{attribute: v}))
  if split == "train":  # a train negative must not leak a held-out composition
    out = [s for s in out if in_split(s, "train", config)]
  return out


def hard_negative(scene: Scene, rng: np.random.Generator, split: str, aspect: str,
                  config: WorldConfig = DEFAULT_CONFIG) -> tuple[Scene, str]:
  """The same scene with one attribute that `aspect` shows changed (or one object added or
  removed). Returns (negative scene, changed attribute). Train negatives stay in train."""
  _check_split(split)
  candidates = list(ASPECTS[aspect]) + (["count"] if config.max_objects > 1 else [])
  for k in rng.permutation(len(candidates)):
    options = _single_changes(scene, candidates[k], rng, split, config)
    if options:
      return options[int(rng.integers(len(options)))], candidates[k]
  raise ValueError(f"no single-attribute change of {scene} is a valid {split} scene")


def main_object(scene: Scene) -> Obj:
  """The largest object; ties go to the first in reading order (top left to bottom right)."""
  return max(scene, key=lambda o: (o.size, -o.position))


CLASS_NAMES = SHAPES  # classification: the shape of the main object


def class_label(scene: Scene) -> int:
  """Classification label of a scene: index into CLASS_NAMES (shape of the main object)."""
  return main_object(scene).shape
