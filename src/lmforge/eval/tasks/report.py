"""The evaluation report: means with bootstrap standard errors, JSON + JSONL, Markdown.

For a metric with per-example values x_1 … x_n the report gives the mean x̄ and its
bootstrap standard error (Efron and Tibshirani, 1993): the standard deviation of the
means of B resamples of n values drawn with replacement (B = 1000, numpy's PCG64 from the
run's seed, so a report is reproducible). For 0/1 accuracies it is close to
sqrt(p(1 − p)/n), the binomial standard error.

Files: `report.json` (settings and per-task metrics) and, beside it, `report.jsonl`
(one line per example: task, index, metrics, prediction and log-likelihoods), so two
runs can be compared example by example. Both are written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import ExampleRecord
from lmforge.io import atomic_write_text

RESAMPLES = 1000
CHUNK = 100  # resamples drawn at once: bounds the (CHUNK, n) index array


def bootstrap_stderr(values: Sequence[float], seed: int, resamples: int = RESAMPLES
                     ) -> float | None:
    """std of the means of `resamples` bootstrap resamples; None below two values."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.concatenate([x[rng.integers(0, n, size=(min(CHUNK, resamples - i), n))]
                            .mean(axis=1) for i in range(0, resamples, CHUNK)])
    return float(means.std(ddof=1))


def summarize(records: Sequence[ExampleRecord], metrics: Sequence[str], seed: int
              ) -> dict[str, Any]:
    """{"n": n, metric: {"value": mean, "stderr": bootstrap stderr}} of one task's records."""
    out: dict[str, Any] = {"n": len(records)}
    for m in metrics:
        values = [r.metrics[m] for r in records]
        out[m] = {"value": float(np.mean(values)) if values else None,
                  "stderr": bootstrap_stderr(values, seed)}
    return out


def jsonl_path(path: str | Path) -> Path:
    """The per-example JSONL beside a report: report.json → report.jsonl."""
    return Path(path).with_suffix(".jsonl")


def write_report(path: str | Path, report: dict[str, Any],
                 records: Sequence[ExampleRecord]) -> Path:
    """Write the report JSON at `path` and its per-example JSONL beside it (atomically);
    returns the JSONL's path."""
    if Path(path).suffix != ".json":
        raise LmforgeError(f"--out {path} must end in .json (the per-example records go "
                           "beside it, in .jsonl)")
    lines = jsonl_path(path)
    atomic_write_text(lines, "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n"
                                     for r in records))
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return lines


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry["value"] is None:
        return "–"
    value = f"{100 * entry['value']:.1f}"
    return value if entry["stderr"] is None else f"{value} ± {100 * entry['stderr']:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """One row per task: n and each metric as percent ± bootstrap stderr."""
    tasks = report["tasks"]
    metrics = list(dict.fromkeys(m for t in tasks.values() for m in t if m != "n"))
    s = report["settings"]
    lines = [f"{s['model']} ({s['dtype']}, {s['shots']}-shot, limit {s['limit']}, "
             f"seed {s['seed']})", "",
             "| task | n | " + " | ".join(metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for name, t in tasks.items():
        lines.append(f"| {name} | {t['n']} | " + " | ".join(_cell(t.get(m)) for m in metrics)
                     + " |")
    return "\n".join(lines)
