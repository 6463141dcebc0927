"""`evaluate_tasks`: run named tasks on a loaded model and build the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import PROMPT_FORMAT, ExampleRecord, Task, get_task
from lmforge.eval.tasks.report import model_settings, summarize


def task_shots(task: Task, shots: int | None) -> int:
    """The shots a task runs with: `shots`, or the task's default when None."""
    return task.default_shots if shots is None else shots


def resolve_tasks(task_names: list[str], shots: int | None = None,
                  data_root: str | Path | None = None) -> list[tuple[Task, Path | None]]:
    """(task, data file) of each name, once each: every name, shot count and data file is
    checked here, before any model work, so a mistake fails at once. `shots` None: each
    task's default."""
    if shots is not None and shots < 0:
        raise LmforgeError(f"--shots must be 0 or more, got {shots}")
    tasks = [get_task(n) for n in dict.fromkeys(task_names)]
    for t in tasks:
        k = task_shots(t, shots)
        if k and not t.few_shot:
            raise LmforgeError(f"task {t.name!r} runs zero-shot only: use --shots 0 (or run "
                               "it in a separate command)")
        if k and t.fewshot_file:
            t.path(data_root, t.fewshot_file)
    return [(t, t.path(data_root)) for t in tasks]


def run_task(lm: Any, task: Task, path: Path | None, limit: int | None, shots: int, seed: int,
             progress: bool = True, data_root: str | Path | None = None
             ) -> list[ExampleRecord]:
    """One record per example of `task` (the first `limit`), `task.batch` examples per
    scoring call, under a progress bar with examples/s and ETA."""
    examples = task.load(path)
    demos = task.shots(shots, examples, seed, data_root)
    examples = examples[:limit]
    done: list[ExampleRecord] = []
    with tqdm(total=len(examples), desc=task.name, unit=" ex", disable=not progress) as bar:
        for i in range(0, len(examples), task.batch):
            batch = examples[i: i + task.batch]
            done += task.score(lm, batch, demos)
            bar.update(len(batch))
    return done


def evaluate_tasks(lm: Any, task_names: list[str], limit: int | None = None, seed: int = 1234,
                   shots: int | None = None, progress: bool = True,
                   data_root: str | Path | None = None, adapter: str | Path | None = None
                   ) -> tuple[dict[str, Any], list[ExampleRecord]]:
    """(report, per-example records) of `lm` (`lmforge.load`) on each task, the first
    `limit` examples of each (all when None), with `shots` demonstrations (None: each
    task's default); `seed` drives the few-shot draws and the
    bootstrap; `adapter`: the adapter directory applied to `lm`, recorded with its hash."""
    if limit is not None and limit < 1:
        raise LmforgeError(f"--limit must be at least 1, got {limit}")
    results: dict[str, Any] = {}
    records: list[ExampleRecord] = []
    for task, path in resolve_tasks(task_names, shots, data_root):
        start = time.perf_counter()
        k = task_shots(task, shots)
        done = run_task(lm, task, path, limit, k, seed, progress, data_root)
        results[task.name] = {"shots": k, **summarize(
            done, task.metrics, seed, time.perf_counter() - start,
            task.aggregate(done) if task.aggregate else None)}
        records += done
    settings = {**model_settings(lm, adapter), "shots": shots, "seed": seed, "limit": limit,
                "prompt_format": PROMPT_FORMAT}
    return {"settings": settings, "tasks": results}, records
