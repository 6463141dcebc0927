"""Several evaluation reports side by side: `lmforge eval --compare a.json b.json …`.

One Markdown table with a row per (task, metric) and a column per report (value ± bootstrap
standard error); each report after the first also gets a column with its difference to the
first, marked `*` when

    |x̄_k − x̄_1| > sqrt(se_k² + se_1²)

the standard error of a difference of two independent means. Two runs on the same examples
are positively correlated, which makes the true standard error of their difference smaller:
the mark is conservative, and the per-example counts below it say more.

Below the table, notes: settings that make the runs not comparable example by example
(`prompt_format`, `shots`, `limit`), and, when the per-example JSONL files lie beside both
reports, per task the number of shared examples whose outcome differs on `acc` (or the
task's first metric), matched by their row in the task's data file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import read_jsonl
from lmforge.eval.tasks.report import (
    describe_settings,
    format_entry,
    format_number,
    jsonl_path,
    task_metrics,
)

COMPARABLE = ("prompt_format", "shots", "limit")  # settings that change what is scored


def load_report(path: str | Path) -> dict[str, Any]:
    """A report JSON written by `lmforge eval --tasks … --out`; a one-line LmforgeError naming
    the file when it is missing, not JSON, or not shaped like a report."""
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"report {p} not found: give the .json that `lmforge eval --tasks "
                           "… --out FILE` wrote")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"report {p} is not valid JSON ({exc}); give the .json that "
                           "`lmforge eval --tasks … --out FILE` wrote") from None
    ok = (isinstance(report, dict) and isinstance(report.get("settings"), dict)
          and isinstance(report.get("tasks"), dict)
          and all(isinstance(t, dict) and "n" in t for t in report["tasks"].values()))
    if not ok:
        raise LmforgeError(f"report {p} is not an lmforge evaluation report (it needs "
                           "'settings' and 'tasks' with 'n' per task); give the .json that "
                           "`lmforge eval --tasks … --out FILE` wrote")
    return report


def outcome_metric(summary: dict[str, Any]) -> str | None:
    """The metric whose per-example values are compared: `acc`, else the first one."""
    metrics = task_metrics(summary)
    return "acc" if "acc" in metrics else (metrics[0] if metrics else None)


def read_outcomes(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(task, index) → the example's JSONL record."""
    out = {}
    for r in read_jsonl(path):
        if "task" not in r or "index" not in r:
            raise LmforgeError(f"{path} is not a per-example report file (a line lacks "
                               "'task' or 'index'); give the .jsonl written beside the report")
        out[(r["task"], r["index"])] = r
    return out


def differing(a: dict[tuple[str, int], dict], b: dict[tuple[str, int], dict], task: str,
              metric: str) -> tuple[int, int]:
    """(examples whose `metric` differs, examples of `task` present in both)."""
    shared = [k for k in a if k[0] == task and k in b]
    return sum(a[k].get(metric) != b[k].get(metric) for k in shared), len(shared)


def difference(metric: str, first: dict[str, Any] | None, other: dict[str, Any] | None
               ) -> str:
    """"+1.2 *": other − first, `*` beyond the combined standard error; "–" without both."""
    if not first or not other or first["value"] is None or other["value"] is None:
        return "–"
    d = other["value"] - first["value"]
    text = ("+" if d >= 0 else "−") + format_number(metric, abs(d))
    if first["stderr"] is None or other["stderr"] is None:
        return text
    return text + (" *" if abs(d) > math.hypot(first["stderr"], other["stderr"]) else "")


def _table(reports: list[dict[str, Any]]) -> list[str]:
    rows = list(dict.fromkeys((task, m) for r in reports for task, t in r["tasks"].items()
                              for m in task_metrics(t)))
    head = ["task", "metric", "[1]"] + [c for k in range(2, len(reports) + 1)
                                        for c in (f"[{k}]", f"[{k}] − [1]")]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for task, m in rows:
        entries = [r["tasks"].get(task, {}).get(m) for r in reports]
        cells = [task, m, format_entry(m, entries[0])]
        for e in entries[1:]:
            cells += [format_entry(m, e), difference(m, entries[0], e)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _notes(paths: list[Path], reports: list[dict[str, Any]]) -> list[str]:
    notes = []
    first = reports[0]
    lines = [jsonl_path(p) for p in paths]
    outcomes = [read_outcomes(p) if p.is_file() else None for p in lines]
    for k, r in enumerate(reports[1:], 2):
        for key in COMPARABLE:
            a, b = first["settings"].get(key), r["settings"].get(key)
            if a != b:
                notes.append(f"[{k}] vs [1]: {key} differs ({b} vs {a}): not comparable "
                             "example by example")
        if outcomes[0] is None or outcomes[k - 1] is None:
            missing = [str(lines[i]) for i in (0, k - 1) if outcomes[i] is None]
            notes.append(f"[{k}] vs [1]: no per-example comparison ({', '.join(missing)} "
                         "missing)")
            continue
        for task, t in first["tasks"].items():
            metric = outcome_metric(t)
            if task in r["tasks"] and metric is not None:
                n_diff, n = differing(outcomes[0], outcomes[k - 1], task, metric)
                notes.append(f"[{k}] vs [1]: {task}: {n_diff} of {n} shared examples differ "
                             f"on {metric}")
    return notes


def compare_reports(paths: Sequence[str | Path]) -> str:
    """The Markdown comparison of two or more reports (see the module docstring)."""
    if len(paths) < 2:
        raise LmforgeError(f"--compare needs two or more report files, got {len(paths)}")
    files = [Path(p) for p in paths]
    reports = [load_report(p) for p in files]
    legend = [f"[{k}] {p}: {describe_settings(r['settings'])}"
              for k, (p, r) in enumerate(zip(files, reports, strict=True), 1)]
    key = ("* |difference| > sqrt(se[k]² + se[1]²), the combined bootstrap standard error "
           "(shares in percentage points)")
    notes = _notes(files, reports)
    return "\n".join(legend + [""] + _table(reports) + ["", key]
                     + ([""] + notes if notes else []))
