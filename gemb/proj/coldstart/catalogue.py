"""Catalogues of items as content: a JSONL file of parts, or ToyWorld scenes.

A catalogue file has one item per line, parts in the manifest's format (gemb/datasets/manifest.py,
paths relative to the file's folder):

  {"item_id": "sku-17", "content": [{"text": "a red circle"}, {"image": "img/17.png"}]}

  item_id   a non-empty string, unique in the file.
  content   a non-empty list of parts, each {"text": str} or {"image" | "audio" | "video": path}.
  other keys are kept (`Item.extra`) and ignored.

`read_catalogue` checks every line and that every part's file exists (errors name "FILE:LINE" and
the field); `load_content` decodes an item's files, naming the line if one cannot be read. A
ToyWorld catalogue (`toyworld_items`) is one scene per item: its caption, image, sound and video
(or the parts of the item's content type), with the scene's attributes kept for the simulated
users' taste (never shown to a policy).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from gemb.data import features
from gemb.datasets import manifest, toyworld


class CatalogueError(ValueError):
  """A catalogue line cannot be read; the message names the file, the line and the field."""


class Item(NamedTuple):
  item_id: str
  content: list  # parts: {"text": str} or {modality: path or array}
  origin: str  # "FILE:LINE" (or "toyworld:INDEX"), for error messages
  root: str = ""  # folder that part paths are relative to
  scene: Any = None  # the ToyWorld scene (a tuple of toyworld.Obj); None for a file's items


def _check_line(record: Any) -> tuple[str, list]:
  """(item_id, content) of one decoded line; ValueError names the field."""
  if not isinstance(record, dict):
    raise ValueError(f"a line is a JSON object, got {type(record).__name__}")
  if "item_id" not in record:
    raise ValueError("field 'item_id' is missing")
  item_id = record["item_id"]
  if not isinstance(item_id, str) or not item_id:
    raise ValueError(f"field 'item_id' must be a non-empty string, got {item_id!r}")
  content = record.get("content")
  manifest.check_parts(content, "content")
  return item_id, content


def read_catalogue(path: str) -> list[Item]:
  """Every item of the catalogue file `path`; CatalogueError names the first bad line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"catalogue {path!r} does not exist (config.catalogue)")
  root = os.path.dirname(os.path.abspath(path))
  items, first_line = [], {}
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      origin = f"{path}:{number}"
      try:
        item_id, content = _check_line(json.loads(raw))
      except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise CatalogueError(f"{origin}: {e}") from None
      if item_id in first_line:
        raise CatalogueError(f"{origin}: duplicate item_id {item_id!r} (first on line "
                             f"{first_line[item_id]}); give every item its own id")
      first_line[item_id] = number
      for i, part in enumerate(content):
        (modality,) = part
        if modality != "text" and not os.path.isfile(os.path.join(root, part[modality])):
          raise CatalogueError(f"{origin} content[{i}].{modality}: {modality} file "
                               f"{os.path.join(root, part[modality])!r} does not exist")
      items.append(Item(item_id, content, origin, root))
  if not items:
    raise CatalogueError(f"catalogue {path!r} has no items")
  return items


def load_content(item: Item, feature_config: features.FeatureConfig) -> list[dict]:
  """The item's parts with files decoded to arrays; CatalogueError names the line and part."""
  parts = []
  for i, part in enumerate(item.content):
    modality = features.modality_of(part)
    try:
      parts.append(features.load_part(part, feature_config, item.root))
    except (ValueError, OSError) as e:
      raise CatalogueError(f"{item.origin} content[{i}].{modality}: {e}") from e
  return parts


def content_hash(item: Item) -> str:
  """A digest of the item's content as given (text and paths, or array bytes): a changed item
  under the same id is re-embedded."""
  digest = hashlib.sha1()
  for part in item.content:
    (modality, value), = part.items()
    digest.update(modality.encode())
    if isinstance(value, str):
      digest.update(value.encode())
    else:
      value = np.ascontiguousarray(value)
      digest.update(f"{value.dtype}{value.shape}".encode())
      digest.update(value.tobytes())
  return digest.hexdigest()[:16]


PARTS = ("text", "image", "audio", "video")  # a ToyWorld item's parts, in content order


def check_content_types(content_types: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
  """`content_types` as tuples of part names; ValueError names
  config.world.toyworld.content_types."""
  types = tuple(tuple(parts) for parts in content_types)
  if not types or any(not parts or set(parts) - set(PARTS) or len(set(parts)) < len(parts)
                      for parts in types):
    raise ValueError(f"config.world.toyworld.content_types={types}: give one or more content "
                     f"types, each a non-empty list of distinct parts of {PARTS}")
  return types


def toyworld_items(num_items: int, seed: int, split: str, world_config,
                   caption_aspect: str = "video",
                   content_types: Sequence[Sequence[str]] = (PARTS,)) -> list[Item]:
  """`num_items` ToyWorld scenes as items, each with the parts of one of `content_types`.

  A content type lists the parts an item has, of its caption ("text"), image, sound ("audio")
  and video: (PARTS,) gives every item all four; e.g. (("text",), ("image",), ("audio",),
  ("video",)) makes a platform of captions, pictures, sounds and clips, each item's type drawn
  uniformly (rng stream [seed, 1_000_004, index]). Scenes and renderings come from the rng
  stream [seed, 1_000_003, index], which no training task uses (theirs is [seed, split id, task
  id, index]): renderings no model was trained on, the same scene whatever the item's type.
  split 'train' draws the training (shape, colour) pairs, 'eval' puts a held-out pair in every
  scene.
  """
  world_config = toyworld.WorldConfig.from_config(world_config)
  types = check_content_types(content_types)
  items = []
  for index in range(num_items):
    rng = np.random.default_rng([seed, 1_000_003, index])
    scene = toyworld.sample_scene(rng, split, world_config)
    parts = {"text": toyworld.render_caption(scene, rng, "en", caption_aspect),
             "image": toyworld.render_image(scene, rng, world_config),
             "audio": toyworld.render_audio(scene, rng, world_config),
             "video": toyworld.render_video(scene, rng, world_config)}  # all: one rng stream
    kept = types[0] if len(types) == 1 else types[
        int(np.random.default_rng([seed, 1_000_004, index]).integers(len(types)))]
    content = [{name: parts[name]} for name in PARTS if name in kept]
    items.append(Item(f"toyworld-{seed}-{index}", content, f"toyworld:{index}", scene=scene))
  return items


def write_catalogue(path: str, items: Sequence[Item]) -> None:
  """Writes items with array parts as a catalogue file plus media files beside it (PNG, 16-bit
  WAV at 16 kHz, .npy video): a platform's catalogue, for the service path and its tests."""
  root = os.path.dirname(os.path.abspath(path))
  os.makedirs(os.path.join(root, "media"), exist_ok=True)
  lines = []
  for number, item in enumerate(items):
    content = []
    for i, part in enumerate(item.content):
      (modality, value), = part.items()
      if modality == "text" or isinstance(value, str):
        content.append({modality: value})
        continue
      name = manifest.write_part(root, os.path.join("media", f"{number:06d}_{i}"), modality, value)
      content.append({modality: name})
    lines.append(json.dumps({"item_id": item.item_id, "content": content}))
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
