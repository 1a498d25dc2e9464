"""Shared by the model tests: an encoder whose shared tables are not zero, as after training."""
import numpy as np

MODALITIES = ("text", "image", "audio", "video")


def shared_tables(model) -> list:
  """The part-index table and every stem's position and modality tables (they start at zero)."""
  return [model.part_embed] + [getattr(model.stems[m], name) for m in MODALITIES
                               for name in vars(model.stems[m])
                               if "position" in name or name == "modality"]


def with_nonzero_shared_tables(model, seed: int = 7):
  """Fills the shared tables with distinct random rows (in place; returns the model), so a test
  of padding, order or sharding fails when a table is read at the wrong index."""
  rng = np.random.default_rng(seed)
  for table in shared_tables(model):
    table.set_value(rng.normal(0, 0.5, table.get_value().shape).astype(np.float32))
  return model
