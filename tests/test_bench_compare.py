"""gemb.bench.compare at a tiny size: before anything is timed, gemb and sentence-transformers
embed the same batches alike and start from the same MultipleNegativesRankingLoss, which numpy
recomputes here from SentenceTransformer.encode; the report ends in the ratio line."""
import re

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from gemb.bench import compare

BATCH, SEQ_LEN = 4, 16


@pytest.fixture(scope="module")
def report():
  lines = []
  result = compare.run(batch_size=BATCH, seq_len=SEQ_LEN, repeats=1, sentences=2 * BATCH,
                       echo=lines.append)
  return result, lines


def test_gemb_and_torch_embed_the_batches_alike(report):
  check = report[0]["check"]
  assert check["cosine"] >= 0.9999 and check["cosine_st_encode"] >= 0.9999, check


def test_initial_losses_equal_mnrl_of_sentence_transformers_embeddings(report):
  queries, passages = compare.pairs(BATCH)
  model = SentenceTransformer(compare.FOLDER, device="cpu")
  model.max_seq_length = SEQ_LEN
  q, p = (model.encode(texts, convert_to_numpy=True).astype(np.float64)
          for texts in (queries, passages))
  logits = compare.SCALE * (q / np.linalg.norm(q, axis=-1, keepdims=True)) @ (
      p / np.linalg.norm(p, axis=-1, keepdims=True)).T  # [B, B], positives on the diagonal
  want = np.mean(np.log(np.exp(logits).sum(-1)) - np.diag(logits))
  check = report[0]["check"]
  for name in ("gemb_loss", "torch_loss"):
    assert abs(check[name] - want) <= 1e-4 * want, (name, check[name], want)


def test_the_last_line_gives_both_ratios(report):
  result, lines = report
  assert re.fullmatch(r"gemb/torch: encode=\d+\.\d\d train=\d+\.\d\d", lines[-1]), lines[-1]
  rates = result["rates"]
  assert lines[-1] == (f"gemb/torch: encode={rates['encode'][0] / rates['encode'][1]:.2f} "
                       f"train={rates['train'][0] / rates['train'][1]:.2f}")
