"""Task evaluation: multiple choice by log-likelihood (HellaSwag, PIQA, ARC), LAMBADA, reading
comprehension, arithmetic, GSM8K, classification, CrowS-Pairs and repetition, a report with
bootstrap standard errors (`docs/eval_tasks.md`)."""

from lmforge.eval.tasks import (  # noqa: F401  (register their tasks)
    arithmetic,
    bias,
    classification,
    gsm8k,
    lambada,
    multiple_choice,
    reading,
    repetition,
)
from lmforge.eval.tasks.base import (
    DATA_ROOT,
    TASKS,
    ExampleRecord,
    Task,
    describe_tasks,
    get_task,
)
from lmforge.eval.tasks.report import markdown_table, write_report
from lmforge.eval.tasks.runner import evaluate_tasks

__all__ = ["DATA_ROOT", "TASKS", "ExampleRecord", "Task", "describe_tasks", "evaluate_tasks",
           "get_task", "markdown_table", "write_report"]
