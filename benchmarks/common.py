"""What every speed record states about where it was measured, so that a figure can be
judged without the run that made it: the CPU, its cores, the threads the benchmark used,
the repetitions behind each median, the software, and the machine's load average (from
`os.getloadavg`, the 1-, 5- and 15-minute means of runnable processes) before and after.

    from common import machine, finish
    record = {"benchmark": "decode", **machine(threads=2, reps=3)}
    ...
    finish(record, path)   # adds load_after, writes the JSON atomically

A load above the core count means the figures were taken while other processes competed
for the cores: absolute speeds are then low and noisy, and only ratios measured side by
side in the same run are worth comparing.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from lmforge.hardware import cpu_name
from lmforge.io import atomic_write_text


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(threads: int, reps: int) -> dict:
    """The fields every record starts with (`load_before` taken now)."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads, "reps": reps,
            "torch": torch.__version__, "python": platform.python_version(),
            "load_before": load_average()}


def finish(record: dict, path: Path | None) -> None:
    """Add `load_after`, print the record as one JSON line and write it to `path` (if given)
    atomically."""
    record["load_after"] = load_average()
    print(json.dumps(record))
    if path is not None:
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
