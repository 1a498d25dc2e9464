r"""How cold-start embedding and allocation scale with the catalogue, as items/s.

  python -m gemb.bench.coldstart --bundle=BUNDLE            # 10k, 100k, 1M items
  python -m gemb.bench.coldstart --bundle=BUNDLE --sizes=10000 --embed_items=128

Embedding: `--embed_items` ToyWorld items (caption + image + sound + video) through the serving
bundle, after one warm-up batch (compilation); the seconds for each catalogue size are projected
from that rate (embedding is per item, so it scales linearly). Allocation: one round of the
discoverability policy, JAX scoring (`predict_curves`) plus numpy allocation (`allocate_round`),
timed at each size on synthetic embeddings of the bundle's width (a model's weights do not change
its cost, so the model is a random init of config.model's shape).
"""
from __future__ import annotations

import json
import time

from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from gemb.proj.coldstart import catalogue, discoverability, embedder, report

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (the tests import this module beside other
  commands)."""
  config_flags.DEFINE_config_file("config", "configs/proj/coldstart.py", "The cold-start config.")
  flags.DEFINE_string("bundle", None,
                      "Serving bundle that embeds the items (none: allocation only).")
  flags.DEFINE_list("sizes", ["10000", "100000", "1000000"], "Catalogue sizes.")
  flags.DEFINE_integer("embed_items", 256, "Items actually embedded to measure items/s.")
  flags.DEFINE_integer("dim", 64, "Embedding width when there is no bundle.")
  flags.DEFINE_string("output", "", "Optional JSON file for the results.")


def embedding_rate(config, bundle: str, num_items: int) -> dict:
  """Items/s of ToyWorld items through `bundle` (after a warm-up batch), and the width."""
  ec = config.embedder.copy_and_resolve_references()
  ec.bundle, ec.cache_dir = bundle, ""
  encoder = embedder.item_encoder(ec, "trained")
  tc = config.world.toyworld
  items = catalogue.toyworld_items(num_items + ec.batch_size, 77, tc.split, tc.world.to_dict(),
                                   tc.caption_aspect)
  quiet = lambda line: None
  embedder.embed_items(encoder, items[:ec.batch_size], batch_size=ec.batch_size,
                       combine=ec.combine, log=quiet)
  start = time.perf_counter()
  rows = embedder.embed_items(encoder, items[ec.batch_size:], batch_size=ec.batch_size,
                              combine=ec.combine, log=quiet)
  seconds = time.perf_counter() - start
  return {"items": num_items, "seconds": seconds, "items_per_second": num_items / seconds,
          "dim": int(rows.shape[1]), "combine": ec.combine, "batch_size": ec.batch_size}


def allocation_round(config, num_items: int, dim: int) -> dict:
  """Seconds of one discoverability round (score + allocate) for `num_items` items, by an
  untrained model of the config's shape (the timing does not depend on its weights)."""
  model = discoverability.DiscoverabilityModel(dim, tuple(config.model.hidden_dims),
                                               rngs=nnx.Rngs(0))
  return report.benchmark_allocation(config, model, dim, num_items)


def main(argv):
  del argv
  config = FLAGS.config
  sizes = [int(size) for size in FLAGS.sizes]
  embedding = embedding_rate(config, FLAGS.bundle, FLAGS.embed_items) if FLAGS.bundle else None
  dim = embedding["dim"] if embedding else FLAGS.dim
  if embedding:
    print(f"embedding through {FLAGS.bundle}: {embedding['items_per_second']:.0f} items/s "
          f"({embedding['items']} ToyWorld items, combine={embedding['combine']}, dim {dim})")
  print(f"{'items':>9} {'embed s':>9} {'score s':>8} {'alloc s':>8} {'round s':>8} "
        f"{'round items/s':>14}")
  rounds = []
  for size in sizes:
    result = allocation_round(config, size, dim)
    rounds.append(result)
    embed = f"{size / embedding['items_per_second']:.0f}" if embedding else "-"
    print(f"{size:>9} {embed:>9} {result['score_seconds']:>8.2f} "
          f"{result['allocate_seconds']:>8.2f} {result['round_seconds']:>8.2f} "
          f"{result['items_per_second']:>14.0f}", flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"embedding": embedding, "allocation": rounds}, f, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
