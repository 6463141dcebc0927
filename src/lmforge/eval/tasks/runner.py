"""`evaluate_tasks`: run named tasks on a loaded model and build the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import PROMPT_FORMAT, ExampleRecord, Task, get_task
from lmforge.eval.tasks.report import summarize


def resolve_tasks(task_names: list[str], shots: int = 0, data_root: str | Path | None = None
                  ) -> list[tuple[Task, Path]]:
    """(task, data file) of each name, once each: every name, shot count and data file is
    checked here, before any model work, so a mistake fails at once."""
    if shots < 0:
        raise LmforgeError(f"--shots must be 0 or more, got {shots}")
    tasks = [get_task(n) for n in dict.fromkeys(task_names)]
    for t in tasks:
        if shots and not t.few_shot:
            raise LmforgeError(f"task {t.name!r} runs zero-shot only for now: use --shots 0")
    return [(t, t.path(data_root)) for t in tasks]


def evaluate_tasks(lm: Any, task_names: list[str], limit: int | None = None, seed: int = 1234,
                   shots: int = 0, progress: bool = True,
                   data_root: str | Path | None = None
                   ) -> tuple[dict[str, Any], list[ExampleRecord]]:
    """(report, per-example records) of `lm` (`lmforge.load`) on each task, the first
    `limit` examples of each (all when None); `seed` drives the bootstrap."""
    if limit is not None and limit < 1:
        raise LmforgeError(f"--limit must be at least 1, got {limit}")
    results: dict[str, Any] = {}
    records: list[ExampleRecord] = []
    for task, path in resolve_tasks(task_names, shots, data_root):
        examples = task.load(path)[:limit]
        done = [task.score(lm, ex) for ex in tqdm(examples, desc=task.name, unit=" ex",
                                                  disable=not progress)]
        results[task.name] = summarize(done, task.metrics, seed)
        records += done
    settings = {"model": lm.name, "source": lm.source, "dtype": str(lm.model.dtype)
                .removeprefix("torch."), "shots": shots, "seed": seed, "limit": limit,
                "prompt_format": PROMPT_FORMAT}
    return {"settings": settings, "tasks": results}, records
