"""GPT-3's arithmetic tasks (Brown et al. 2020, §3.9.1), one registered task each:
`arithmetic_2da` … `arithmetic_5da` (2–5-digit addition), `arithmetic_2ds` …
`arithmetic_5ds` (subtraction), `arithmetic_2dm` (2-digit multiplication); the names are
lm-evaluation-harness's.

Each task is 2,000 problems (the paper's size) generated from a fixed seed
(`lmforge.eval.generated.arithmetic_problems`, split "test", seed 0), so no data file is
read (`data_file` None). The prompt
is GPT-3's, demonstrations one per line:

    Q: What is 17 plus 65? A: 82
    Q: What is 48 plus 76? A:

answered greedily until a newline (at most 12 new tokens: a 6-digit answer and its sign
need fewer). `acc` = [the answer's first integer == the result]
(`generated.arithmetic_correct`).

Demonstrations come from an independent generated stream (split "fewshot", 100 problems
per task), drawn per example by base.py's `Shots`. GPT-3 reports these tasks few-shot;
`default_shots` (4) is what a run uses unless `--shots` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.eval import generated
from lmforge.eval.tasks.base import ExampleRecord, Shots, Task, register
from lmforge.eval.tasks.generation import greedy_answers
from lmforge.eval.tasks.indexed import Indexed, indexed

PROBLEMS = 2000
FEWSHOT_POOL = 100
PROBLEM_SEED = 0  # fixes the problems; --seed only draws the demonstrations
MAX_TOKENS = 12
DEFAULT_SHOTS = 4
# harness name suffix → (operation, digits)
TASKS = {f"{d}d{op[0]}": (op, d) for op in ("add", "sub") for d in (2, 3, 4, 5)} | \
    {"2dm": ("mul", 2)}
OPERATION = {"add": "plus", "sub": "minus", "mul": "times"}


@dataclass(frozen=True)
class GeneratedTask(Task):
    """A task whose examples come from a seeded generator instead of a data file, its
    few-shot pool generated too (`fewshot_pool`)."""

    fewshot_pool: tuple[Any, ...] = ()

    def shots(self, k: int, examples: list[Any], seed: int,
              data_root: str | Path | None = None) -> Shots:
        return Shots(k, self.fewshot_pool, seed) if k else Shots(0)


def problems(operation: str, digits: int, split: str, count: int
             ) -> list[Indexed[generated.ArithmeticProblem]]:
    return indexed(generated.arithmetic_problems(operation, digits, count, PROBLEM_SEED, split))


def score_problems(lm: Any, task: str, batch: list[Indexed[generated.ArithmeticProblem]],
                   shots: Shots) -> list[ExampleRecord]:
    prompts = [generated.arithmetic_prompt(p.item, [d.item for d in shots(p.index)])
               for p in batch]
    answers = greedy_answers(lm, prompts, [generated.ARITHMETIC_STOP], MAX_TOKENS)
    return [ExampleRecord(task, p.index,
                          {"acc": float(generated.arithmetic_correct(answer, p.item))},
                          {"question": p.item.question, "prediction": answer.strip(),
                           "gold": p.item.answer, "shots": [d.index for d in shots(p.index)]})
            for p, answer in zip(batch, answers, strict=True)]


def _task(suffix: str, op: str, digits: int) -> Task:
    name, operation = f"arithmetic_{suffix}", OPERATION[op]
    return register(GeneratedTask(
        name, None, ("acc",), DEFAULT_SHOTS,
        f"GPT-3 arithmetic: {digits}-digit {operation}, {PROBLEMS} problems generated "
        f"from seed {PROBLEM_SEED}, greedy answer",
        lambda _path: problems(operation, digits, "test", PROBLEMS),
        lambda lm, batch, shots: score_problems(lm, name, batch, shots), batch=16,
        fewshot_pool=tuple(problems(operation, digits, "fewshot", FEWSHOT_POOL))))


for _suffix, (_op, _digits) in TASKS.items():
    _task(_suffix, _op, _digits)
