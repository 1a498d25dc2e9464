r"""Compile time of the encoder's forward + backward against depth, blocks looped or scanned.

  python -m gemb.bench.compile                  # configs/smoke.py's model at depths 2, 12, 24
  python -m gemb.bench.compile --config=configs/scale.py:S --depths=2,12

A loop over blocks traces and compiles every block (time grows with depth); `scan_layers`
traces one block under nnx.scan (time about flat). Each line lowers and compiles
`value_and_grad` of a sum over the embeddings of one mixed text + image batch; the last
column is loop / scan.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from gemb.data.packing import Layout, pack_inputs
from gemb.model.encoder import Encoder

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/smoke.py", "Config whose model is timed.")
flags.DEFINE_list("depths", ["2", "12", "24"], "Encoder depths.")
flags.DEFINE_integer("batch", 8, "Examples in the batch.")


def compile_seconds(model_cfg, side) -> float:
  """Seconds to lower and compile value_and_grad of the encoder on `side` (nothing runs)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Encoder(model_cfg, rngs=nnx.Rngs(0))))

  def loss(state):
    return nnx.merge(graphdef, state)(side).sum()
  start = time.perf_counter()
  jax.jit(jax.value_and_grad(loss)).lower(state).compile()
  return time.perf_counter() - start


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  warm = FLAGS.config.model.copy_and_resolve_references()  # the first compile pays one-offs
  warm.depth, warm.scan_layers = 1, True
  compile_seconds(warm, pack_inputs([[{"text": np.ones(4, np.int32)}]],
                                    Layout.from_config(warm, {"text": 1})))
  print(f"{'depth':>5} {'loop s':>8} {'scan s':>8} {'loop/scan':>10}")
  for depth in map(int, FLAGS.depths):
    cfg = FLAGS.config.model.copy_and_resolve_references()
    cfg.depth, cfg.remat = depth, False
    size = cfg.patch_size * 2
    inputs = [[{"text": rng.integers(3, 200, size=12).astype(np.int32)},
               {"image": rng.normal(size=(size, size, 3)).astype(np.float32)}]] * FLAGS.batch
    side = pack_inputs(inputs, Layout.from_config(cfg, {"text": 1, "image": 1}))
    seconds = {}
    for scan in (False, True):
      cfg.scan_layers = scan
      seconds[scan] = compile_seconds(cfg, side)
    print(f"{depth:>5} {seconds[False]:>8.2f} {seconds[True]:>8.2f} "
          f"{seconds[False] / seconds[True]:>9.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
