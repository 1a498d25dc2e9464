"""Writers for evaluation results: `eval/<name>.json`, a markdown table, and PNG plots.

Results are flat dicts {"<suite>/<task>/<metric>": value}, as `suite.run_suite` returns them.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Callable, Iterable, Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure  # drawn with the Agg canvas; no pyplot state, no window

_MRL_SUFFIX = re.compile(r"^(?P<base>.+)@dim=(?P<dim>\d+)$")


def write_json(results: Mapping[str, float], workdir: str, name: str) -> str:
  """Writes WORKDIR/eval/NAME.json (sorted keys; nan/inf as null) and returns its path."""
  path = os.path.join(workdir, "eval", f"{name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  clean = {k: (float(v) if math.isfinite(v) else None) for k, v in results.items()}
  with open(path, "w") as f:
    json.dump(clean, f, indent=1, sort_keys=True, allow_nan=False)
  return path


def split_key(key: str) -> tuple[str, str]:
  """"suite/task/metric" -> ("suite/task", "metric")."""
  parts = key.split("/", 2)
  if len(parts) != 3:
    raise ValueError(f"result key {key!r} is not '<suite>/<task>/<metric>'.")
  return f"{parts[0]}/{parts[1]}", parts[2]


def _format(value: float) -> str:
  if value is None or not math.isfinite(value):
    return "nan"
  # sizes as ints
  return str(int(value)) if float(value).is_integer() and abs(value) > 1 else f"{value:.4f}"


def markdown_table(results: Mapping[str, float], columns: Sequence[str] | None = None,
                   print_fn: Callable[[str], None] | None = print) -> str:
  """A markdown table, one row per suite/task, one column per metric; printed and returned.

  Args:
    results: flat results.
    columns: metric names to show, in order (default: every metric, in first-seen order).
    print_fn: where to print the table (None: do not print).
  """
  rows: dict[str, dict[str, float]] = {}
  seen: dict[str, None] = {}
  for key, value in results.items():
    row, metric = split_key(key)
    rows.setdefault(row, {})[metric] = value
    seen[metric] = None
  columns = list(columns) if columns is not None else list(seen)
  table = format_table(["task", *columns],
                       [[row, *(_format(values[c]) if c in values else "-" for c in columns)]
                        for row, values in rows.items()])
  if print_fn is not None:
    print_fn(table)
  return table


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                 align_right: bool = False) -> str:
  """Markdown lines of a table: `header`, then `rows` of cells; `align_right` right-aligns every
  column after the first (numbers)."""
  rule = "---:|" if align_right else "---|"
  lines = ["| " + " | ".join(header) + " |", "|---|" + rule * (len(header) - 1)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _as_step_records(records: Iterable) -> list[tuple[int, Mapping[str, float]]]:
  """(step, flat dict) pairs, or metrics.jsonl-style dicts with a "step" field -> pairs."""
  pairs = []
  for record in records:
    if isinstance(record, Mapping):
      if "step" not in record:
        raise ValueError(f"metrics record {str(record)[:80]} has no 'step' field.")
      pairs.append((int(record["step"]), record))
    else:
      step, values = record
      pairs.append((int(step), values))
  return pairs


def plot_over_steps(records: Iterable, keys: Sequence[str], path: str,
                    title: str | None = None) -> str:
  """PNG of each key's value against training step; a key missing at a step is skipped there.

  records: (step, flat dict) pairs, or dicts with a "step" field (lines of metrics.jsonl).
  """
  pairs = sorted(_as_step_records(records), key=lambda r: r[0])
  fig = Figure(figsize=(6.4, 4.0))
  ax = fig.subplots()
  plotted = 0
  colours = matplotlib.colormaps["tab20" if len(keys) > 10 else "tab10"].colors  # one per key
  for key in keys:
    points = [(step, values[key]) for step, values in pairs if key in values]
    if points:
      ax.plot(*zip(*points), marker="o", markersize=3, label=key,
              color=colours[plotted % len(colours)])
      plotted += 1
  if not plotted:
    raise ValueError(f"none of the keys {list(keys)[:5]} occurs in the records; nothing to plot.")
  ax.set_xlabel("step")
  ax.set_ylabel("value")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small" if plotted <= 6 else "x-small", ncol=1 if plotted <= 6 else 2)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def mrl_curve(results: Mapping[str, float], key: str,
              full_dim: int | None = None) -> list[tuple[int, float]]:
  """(dim, value) points of one metric key over its `@dim=N` variants (+ the full dim if given)."""
  points = []
  for other, value in results.items():
    match = _MRL_SUFFIX.match(other)
    if match and match["base"] == key:
      points.append((int(match["dim"]), value))
  if full_dim is not None and key in results:
    points.append((full_dim, results[key]))
  return sorted(points)


def plot_mrl(results: Mapping[str, float], keys: Sequence[str], path: str,
             full_dim: int | None = None, title: str | None = None) -> str:
  """PNG of each metric key against MRL prefix dim (log2 axis); `full_dim` places the unsuffixed
  value."""
  fig = Figure(figsize=(6.4, 4.0))
  ax = fig.subplots()
  dims = set()
  for key in keys:
    points = mrl_curve(results, key, full_dim)
    if points:
      ax.plot(*zip(*points), marker="o", label=key)
      dims.update(d for d, _ in points)
  if not dims:
    raise ValueError(f"no '<key>@dim=N' results for keys {list(keys)[:5]}; was the evaluator run "
                     "with mrl_dims?")
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted(dims), [str(d) for d in sorted(dims)])
  ax.set_xlabel("embedding dim (MRL prefix)")
  ax.set_ylabel("value")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  if title:
    ax.set_title(title)
  return _save(fig, path)


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
