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
- A task scores a batch of examples at once (`score(lm, examples, shots)`), so tasks whose
  scorer can share a forward pass between examples do; the runner feeds `Task.batch`
  examples per call and moves the progress bar by as many.
- Few-shot: `Shots` draws k demonstrations per example, seeded by (seed, example index) so a
  run is reproducible and an example's shots do not depend on `--limit`. They come from the
  task's `fewshot_file` (a training split) when it has one, otherwise from the evaluated set
  itself with the example excluded (lm-evaluation-harness's rule when a task has no
  few-shot split). Demonstrations are joined with FEWSHOT_DELIMITER ("\n\n", the harness's
  default `fewshot_delimiter`).
- `PROMPT_FORMAT` versions the prompt formats: a report records it, and two reports with
  different versions are not comparable example by example.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

# the repository root's sibling `shared/data` (tests/conftest.py's SHARED_DATA)
DATA_ROOT = Path(__file__).resolve().parents[4] / ".." / "shared" / "data"
PROMPT_FORMAT = "lm-eval-harness/2"
FEWSHOT_DELIMITER = "\n\n"


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


class Shots:
    """k few-shot demonstrations per example, drawn without replacement from `pool`.

    `pool` is the task's few-shot split, or the evaluated set itself (`same_split`), where
    the example being evaluated is never its own demonstration (matched by `index`)."""

    def __init__(self, k: int, pool: Sequence[Any] = (), seed: int = 1234,
                 same_split: bool = False):
        if k < 0:
            raise LmforgeError(f"--shots must be 0 or more, got {k}")
        if k and len(pool) < k + same_split:
            raise LmforgeError(f"{k} shots need at least {k + same_split} examples to draw "
                               f"from; the few-shot pool has {len(pool)}")
        self.k, self.pool, self.seed, self.same_split = k, pool, seed, same_split

    def __call__(self, index: int) -> list[Any]:
        """The demonstrations of the example at `index` (the same in every run)."""
        if not self.k:
            return []
        rng = random.Random(self.seed * 1_000_003 + index)
        picked = rng.sample(range(len(self.pool)), self.k + self.same_split)
        if self.same_split:
            picked = [i for i in picked if self.pool[i].index != index][: self.k]
        return [self.pool[i] for i in picked]


def with_shots(demonstrations: Sequence[str], query: str) -> str:
    """The prompt: each demonstration (its query and answer) then the query, joined by
    FEWSHOT_DELIMITER."""
    return FEWSHOT_DELIMITER.join([*demonstrations, query])


@dataclass(frozen=True)
class Task:
    """One evaluation task: `load(path)` reads its examples from the data file, and
    `score(lm, examples, shots)` scores a batch of them with a loaded model (`lmforge.load`),
    one ExampleRecord each, in order."""

    name: str
    data_file: str | None  # relative to the data root; None: generated, no file
    metrics: tuple[str, ...]
    default_shots: int
    description: str
    load: Callable[[Path | None], list[Any]]
    score: Callable[[Any, list[Any], Shots], list[ExampleRecord]]
    few_shot: bool = True  # whether shots > 0 are supported
    fewshot_file: str | None = None  # a training split for demonstrations (same root)
    batch: int = 8  # examples per `score` call
    # metrics of the whole set that are not means over examples (distinct-n): name → value
    aggregate: Callable[[list[ExampleRecord]], dict[str, float]] | None = None

    def path(self, data_root: str | Path | None = None, file: str | None = None
             ) -> Path | None:
        """The task's data file (or `file`), None for a generated task; a one-line
        LmforgeError naming it when it is missing."""
        root = Path(DATA_ROOT if data_root is None else data_root)
        name = file or self.data_file
        if name is None:
            return None
        p = root / name
        if not p.is_file():
            raise LmforgeError(f"task {self.name!r} needs its data file {name} under "
                               f"the data directory {root.resolve()} (missing: {p}); put it "
                               "there or pass another data root")
        return p

    def shots(self, k: int, examples: list[Any], seed: int,
              data_root: str | Path | None = None) -> Shots:
        """The demonstrations' source for a run of `k` shots over `examples` (all of them,
        before --limit, so shots do not depend on the limit)."""
        if not k:
            return Shots(0)
        if self.fewshot_file:
            return Shots(k, self.load(self.path(data_root, self.fewshot_file)), seed)
        return Shots(k, examples, seed, same_split=True)


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
        if t.data_file is None:
            data = "(generated)"
        else:
            data = t.data_file + ("" if (root / t.data_file).is_file() else "  [missing]")
        # a breakdown of a listed metric (pct_stereotype/age) is implied by the metric
        metrics = [m for m in t.metrics if m.split("/")[0] == m or m.split("/")[0] not in t.metrics]
        lines.append(f"  {t.name:<16} {data}  metrics: {', '.join(metrics)}  "
                     f"shots: {t.default_shots}  {t.description}")
    return "\n".join(lines)
