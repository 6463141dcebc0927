"""Tasks: what an evaluation task is, the registry of tasks, and where their data lives.

A task turns the records of one data file under the shared data directory
(`../shared/data` beside the repository, or `data_root`) into examples, scores each
example with a loaded model and returns one `ExampleRecord` per example; `report.py`
aggregates those into means with bootstrap standard errors.

Design choices:
- One registry (`TASKS`, name → `Task`), filled by the task modules as they are imported
  (`register`); the CLI's `--tasks list` and the runner read only the registry.
- A task's data file is a path relative to the data root, so a missing file names both
  the file and the folder where it belongs.
- `PROMPT_FORMAT` versions the prompt formats: a report records it, and two reports with
  different versions are not comparable example by example.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

# the repository root's sibling `shared/data` (tests/conftest.py's SHARED_DATA)
DATA_ROOT = Path(__file__).resolve().parents[4] / ".." / "shared" / "data"
PROMPT_FORMAT = "lm-eval-harness/1"


@dataclass
class ExampleRecord:
    """The outcome of one example: its metrics (0/1 for accuracies) and what produced them
    (the prompt, the per-choice log-likelihoods), written as one JSONL line."""

    task: str
    index: int  # the example's row in the task's data file (0-based)
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "index": self.index, **self.metrics, **self.details}


@dataclass(frozen=True)
class Task:
    """One evaluation task: `load(path)` reads its examples from the data file, and
    `score(lm, example)` scores one with a loaded model (`lmforge.load`)."""

    name: str
    data_file: str  # relative to the data root
    metrics: tuple[str, ...]
    default_shots: int
    description: str
    load: Callable[[Path], list[Any]]
    score: Callable[[Any, Any], ExampleRecord]
    few_shot: bool = False  # whether shots > 0 are supported

    def path(self, data_root: str | Path | None = None) -> Path:
        """The task's data file; a one-line LmforgeError naming it when it is missing."""
        root = Path(DATA_ROOT if data_root is None else data_root)
        p = root / self.data_file
        if not p.is_file():
            raise LmforgeError(f"task {self.name!r} needs its data file {self.data_file} under "
                               f"the data directory {root.resolve()} (missing: {p}); put it "
                               "there or pass another data root")
        return p


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise LmforgeError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} "
                           "(`lmforge eval --tasks list` describes them)")
    return TASKS[name]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank lines skipped); a bad line is a one-line error."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LmforgeError(f"{path}:{n} is not valid JSON ({e.msg})") from None
    return out


def describe_tasks(data_root: str | Path | None = None) -> str:
    """One line per registered task: name, data file (and whether it is there), metrics,
    default shots, description."""
    root = Path(DATA_ROOT if data_root is None else data_root)
    lines = [f"tasks (data directory {root.resolve()}):"]
    for t in sorted(TASKS.values(), key=lambda t: t.name):
        found = "" if (root / t.data_file).is_file() else "  [missing]"
        lines.append(f"  {t.name:<14} {t.data_file}{found}  metrics: {', '.join(t.metrics)}  "
                     f"shots: {t.default_shots}  {t.description}")
    return "\n".join(lines)
