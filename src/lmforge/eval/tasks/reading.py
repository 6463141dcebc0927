"""Reading comprehension on generated answers: SQuAD v1.1 dev and CMRC 2018 dev.

The prompt is the harness's SQuAD format (`lmforge.eval.qa.qa_prompt`: "Title: …\\n\\n
Background: …\\n\\nQuestion: …\\n\\nAnswer:"), answered greedily until the first newline
(`qa.QA_STOP`), the whole batch decoded together (`generation.greedy_answers`). The answer
(white space stripped) is scored against every gold answer of the question:

    exact_match = max_g [norm(pred) == norm(g)]
    f1          = max_g F1(pred, g)

with SQuAD's official rules (`evaluate-v1.1.py`: bag of normalised words) for `squad` and
CMRC 2018's (`cmrc2018_evaluate.py`: characters, longest common substring) for `cmrc2018`.
The report's means are the official scripts' overall EM and F1 (they average per question).

Few-shot (`--shots K`): K solved questions of the same file (prompt + " " + its first gold
answer), the example itself excluded, before the question (base.py's `Shots`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmforge.eval import qa
from lmforge.eval.tasks.base import ExampleRecord, Shots, Task, register, with_shots
from lmforge.eval.tasks.generation import greedy_answers
from lmforge.eval.tasks.indexed import Indexed, indexed

METRICS = ("exact_match", "f1")
Metric = Callable[[str, Sequence[str]], float]


def demonstration(q: Indexed[qa.QARecord]) -> str:
    return f"{qa.qa_prompt(q.item)} {q.item.answers[0]}"


def prompt(q: Indexed[qa.QARecord], shots: Shots) -> str:
    return with_shots([demonstration(d) for d in shots(q.index)], qa.qa_prompt(q.item))


def score_questions(lm: Any, task: str, questions: list[Indexed[qa.QARecord]], shots: Shots,
                    exact_match: Metric, f1: Metric, max_tokens: int) -> list[ExampleRecord]:
    answers = greedy_answers(lm, [prompt(q, shots) for q in questions], [qa.QA_STOP],
                             max_tokens)
    out = []
    for q, answer in zip(questions, answers, strict=True):
        pred = answer.strip()
        out.append(ExampleRecord(task, q.index, {"exact_match": exact_match(pred, q.item.answers),
                                                 "f1": f1(pred, q.item.answers)},
                                 {"id": q.item.id, "prediction": pred,
                                  "gold": list(q.item.answers),
                                  "shots": [d.index for d in shots(q.index)]}))
    return out


def _task(name: str, data_file: str, load: Callable[[Path], list[qa.QARecord]],
          exact_match: Metric, f1: Metric, max_tokens: int, description: str) -> Task:
    return register(Task(
        name, data_file, METRICS, 0, description, lambda path: indexed(load(path.parent)),
        lambda lm, questions, shots: score_questions(lm, name, questions, shots, exact_match,
                                                     f1, max_tokens)))


# SQuAD answers are short spans (mean 3 words); CMRC's are Chinese spans of a few to a few
# dozen characters, about one token each
_task("squad", f"squad/{qa.SQUAD_FILE}", qa.load_squad, qa.exact_match, qa.f1, 32,
      "SQuAD v1.1 dev (10,570): greedy answer until a newline, official EM and F1")
_task("cmrc2018", f"cmrc2018/{qa.CMRC_FILE}", qa.load_cmrc2018, qa.cmrc_exact_match,
      qa.cmrc_f1, 48, "CMRC 2018 dev (3,219): greedy answer until a newline, the CMRC "
      "script's EM and character F1")
