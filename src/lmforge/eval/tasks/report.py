"""The evaluation report: means with bootstrap standard errors, JSON + JSONL, Markdown.

For a metric with per-example values x_1 … x_n the report gives the mean x̄ and its
bootstrap standard error (Efron and Tibshirani, 1993): the standard deviation of the
means of B resamples of n values drawn with replacement (B = 1000, numpy's PCG64 from the
run's seed, so a report is reproducible). For 0/1 accuracies it is close to
sqrt(p(1 − p)/n), the binomial standard error.

Files: `report.json` (settings and per-task metrics) and, beside it, `report.jsonl`
(one line per example: task, index, metrics, prediction and log-likelihoods), so two
runs can be compared example by example (`compare.py`). Both are written atomically.

The settings name the weights by content (`model_settings`): the sha256 content hash of
`interop.fingerprint` over the model's state dict with floating tensors as float32, so an
fp32 run's hash equals the one `train.init_from` and adapters record for the same base.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import ExampleRecord
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.tensors import load_safetensors
from lmforge.io import atomic_write_text

RESAMPLES = 1000
CHUNK = 100  # resamples drawn at once: bounds the (CHUNK, n) index array
NOT_PERCENT = frozenset({"nll"})  # metrics in their own unit (nats), not shares; by the
# name's last part, so a setting's "greedy/nll" is one too
ADAPTER_WEIGHTS = "adapter_model.safetensors"


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


def summarize(records: Sequence[ExampleRecord], metrics: Sequence[str], seed: int,
              seconds: float | None = None,
              aggregate: dict[str, float] | None = None) -> dict[str, Any]:
    """{"n": n, metric: {"value": mean, "stderr": bootstrap stderr}} of one task's records.

    A metric only some records have (a breakdown by category) is the mean over those, with
    its own "n". `aggregate`: metrics of the whole set (no standard error). With the task's
    wall time `seconds`, also "seconds" and "examples_per_s" (n / seconds)."""
    out: dict[str, Any] = {"n": len(records)}
    if seconds is not None:
        out["seconds"] = seconds
        out["examples_per_s"] = len(records) / seconds if seconds > 0 else None
    for m in metrics:
        values = [r.metrics[m] for r in records if m in r.metrics]
        out[m] = {"value": float(np.mean(values)) if values else None,
                  "stderr": bootstrap_stderr(values, seed)}
        if len(values) != len(records):
            out[m]["n"] = len(values)
    for m, value in (aggregate or {}).items():
        out[m] = {"value": value, "stderr": None}
    return out


def task_metrics(summary: dict[str, Any]) -> list[str]:
    """The metric names of one task's summary (its entries with a value and a stderr)."""
    return [k for k, v in summary.items() if isinstance(v, dict)]


def weights_hash(model: torch.nn.Module) -> str:
    """Content hash of `model`'s weights, floating tensors as float32 (the form
    `interop.load.load_weights` returns and `fingerprint` expects). A bf16 model hashes its
    bf16-rounded values, so it differs from the fp32 hash of the same file, as its outputs do."""
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    return content_hash(state)


def adapter_settings(adapter: str | Path) -> dict[str, str]:
    """{"path", "hash"} of an adapter directory: the content hash of its tensors as stored."""
    d = Path(adapter)
    weights = d / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise LmforgeError(f"adapter {d} has no {ADAPTER_WEIGHTS}: give the directory an "
                           "adaptation run wrote (adapter_config.json + adapter_model.safetensors)")
    return {"path": str(d.resolve()), "hash": content_hash(load_safetensors([weights], None))}


def model_settings(lm: Any, adapter: str | Path | None = None) -> dict[str, Any]:
    """What a report records about the model run: name, source, dtype, the weights' content
    hash, the adapter ({"path", "hash"} or None), torch's version and thread count.
    `lm`: a loaded model (`lmforge.load`), weights as evaluated (adapter applied or not)."""
    return {"model": lm.name, "source": lm.source,
            "dtype": str(lm.model.dtype).removeprefix("torch."),
            "weights_hash": weights_hash(lm.model),
            "adapter": None if adapter is None else adapter_settings(adapter),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


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


def format_number(metric: str, x: float) -> str:
    """A share as percent with one decimal (0.409 → 40.9); `NOT_PERCENT` metrics as they are."""
    return f"{x:.3f}" if metric.rsplit("/", 1)[-1] in NOT_PERCENT else f"{100 * x:.1f}"


def format_entry(metric: str, entry: dict[str, Any] | None) -> str:
    """"value ± stderr" of one metric's summary entry; "–" when there is none."""
    if not entry or entry["value"] is None:
        return "–"
    value = format_number(metric, entry["value"])
    return value if entry["stderr"] is None else \
        f"{value} ± {format_number(metric, entry['stderr'])}"


def describe_settings(s: dict[str, Any]) -> str:
    """One line: model (dtype, shots, limit, seed[, adapter])."""
    adapter = f", adapter {s['adapter']['path']}" if s.get("adapter") else ""
    shots = "each task's default shots" if s.get("shots") is None else f"{s['shots']}-shot"
    return (f"{s.get('model')} ({s.get('dtype')}, {shots}, limit "
            f"{s.get('limit')}, seed {s.get('seed')}{adapter})")


def markdown_table(report: dict[str, Any]) -> str:
    """One row per task and metric: n, the metric as percent ± bootstrap stderr
    (`NOT_PERCENT` metrics in their unit), the task's shots and, when timed, examples/s
    (on the task's first row)."""
    tasks = report["tasks"]
    timed = any(t.get("examples_per_s") is not None for t in tasks.values())
    lines = [describe_settings(report["settings"]), "",
             "| task | metric | n | value | shots |" + (" ex/s |" if timed else ""),
             "|---|---|---:|---:|---:|" + ("---:|" if timed else "")]
    for name, t in tasks.items():
        for i, m in enumerate(task_metrics(t)):
            speed = t.get("examples_per_s") if i == 0 else None
            cells = [name if i == 0 else "", m, str(t[m].get("n", t["n"])),
                     format_entry(m, t[m]), str(t.get("shots", "")) if i == 0 else ""]
            if timed:
                cells.append("" if speed is None else f"{speed:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
