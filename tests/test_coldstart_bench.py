"""gemb.bench.coldstart: the embedding rate through a bundle and one allocation round, timed."""
from configs.proj import coldstart
from gemb.bench import coldstart as bench
from tests import serve_helpers


def test_bench_times_embedding_and_an_allocation_round(tmp_path):
  config = coldstart.get_config("toyworld_tiny")
  config.embedder.batch_size = 4
  embedding = bench.embedding_rate(config, serve_helpers.tiny_bundle(str(tmp_path / "bundle")), 8)
  assert embedding["items"] == 8 and embedding["items_per_second"] > 0 and embedding["dim"] == 64
  result = bench.allocation_round(config, 3000, embedding["dim"])
  assert result["items"] == 3000
  assert 0 < result["score_seconds"] <= result["round_seconds"]
  assert result["items_per_second"] == 3000 / result["round_seconds"]
