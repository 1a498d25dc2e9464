"""gemb.evaluate.report: JSON file, markdown table and PNG plots of flat results."""
import json
import math

import matplotlib.image
import numpy as np
import pytest

from gemb.evaluate import report

RESULTS = {
    "toy/t2i/R@1": 0.5, "toy/t2i/R@1@dim=16": 0.25, "toy/t2i/R@1@dim=32": 0.375,
    "toy/t2i/bytes_per_vector": 256.0, "toy/sts/spearman": float("nan"),
}


def test_write_json_round_trip_with_nan_as_null(tmp_path):
  path = report.write_json(RESULTS, str(tmp_path), "step_100")
  assert path == str(tmp_path / "eval" / "step_100.json")
  with open(path) as f:
    loaded = json.load(f)
  assert loaded["toy/sts/spearman"] is None
  assert {k: v for k, v in loaded.items() if v is not None} == {
      k: v for k, v in RESULTS.items() if not math.isnan(v)}


def test_markdown_table_rows_are_tasks_and_columns_metrics():
  printed = []
  table = report.markdown_table(RESULTS, print_fn=printed.append)
  assert printed == [table]
  assert table.splitlines() == [
      "| task | R@1 | R@1@dim=16 | R@1@dim=32 | bytes_per_vector | spearman |",
      "|---|---|---|---|---|---|",
      "| toy/t2i | 0.5000 | 0.2500 | 0.3750 | 256 | - |",
      "| toy/sts | - | - | - | - | nan |",
  ]
  only_spearman = report.markdown_table(RESULTS, columns=["spearman"], print_fn=None)
  assert only_spearman.splitlines()[2] == "| toy/t2i | - |"


def test_markdown_table_rejects_keys_without_suite_and_task():
  with pytest.raises(ValueError, match="<suite>/<task>/<metric>"):
    report.markdown_table({"R@1": 1.0}, print_fn=None)


def _png_shape(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return matplotlib.image.imread(path).shape


def test_plot_over_steps_from_pairs_and_jsonl_records(tmp_path):
  pairs = [(step, {"toy/t2i/R@1": step / 1000}) for step in (0, 500, 1000)]
  assert _png_shape(report.plot_over_steps(pairs, ["toy/t2i/R@1"],
                                           str(tmp_path / "a.png"))) == (400, 640, 4)
  # metrics.jsonl lines
  records = [{"stage": "s", "step": step, "loss": 1 / (step + 1)} for step in range(5)]
  assert _png_shape(report.plot_over_steps(records, ["loss"], str(tmp_path / "b.png"),
                                           title="loss"))[2] == 4
  with pytest.raises(ValueError, match="nothing to plot"):
    report.plot_over_steps(pairs, ["toy/x/R@1"], str(tmp_path / "c.png"))


def test_mrl_curve_and_plot(tmp_path):
  assert report.mrl_curve(RESULTS, "toy/t2i/R@1", full_dim=64) == [(16, 0.25), (32, 0.375),
                                                                     (64, 0.5)]
  assert report.mrl_curve(RESULTS, "toy/t2i/R@1") == [(16, 0.25), (32, 0.375)]
  path = report.plot_mrl(RESULTS, ["toy/t2i/R@1"], str(tmp_path / "plots" / "mrl.png"), full_dim=64)
  image = matplotlib.image.imread(path)
  assert image.shape == (400, 640, 4) and np.ptp(image[..., :3]) > 0  # not a blank canvas
  with pytest.raises(ValueError, match="mrl_dims"):
    report.plot_mrl(RESULTS, ["toy/sts/spearman"], str(tmp_path / "none.png"))
