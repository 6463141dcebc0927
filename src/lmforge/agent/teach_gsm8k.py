"""The `gsm8k` training family: GSM8K train solutions with their calculator annotations as calls.

    problems = load_problems("../shared/data/gsm8k/train.jsonl")   # [Turns], bad ones skipped
    draw = sampler(problems, random.Random("agent-gsm8k:0"))        # a family for teach.MIX

A GSM8K solution marks each computation as `<<48/2=24>>` (Cobbe et al. 2021, "Training
Verifiers to Solve Math Word Problems", §3: the annotations that drive their calculator).
The solution is cut at every annotation, as Toolformer (Schick et al. 2023) inserts an API
call where the result is needed:

    Natalia sold 48/2 = <<48/2=24>>24 clips in May.          assistant: "Natalia sold 48/2 =" + call
    Natalia sold 48+24 = <<48+24=72>>72 clips altogether…     tool:      "24"
    #### 72                                                   assistant: "24 clips in May.\\nNatalia
                                                                          sold 48+24 =" + call
                                                                tool:      "72"
                                                                assistant: "72 clips altogether…
                                                                            \\nThe answer is 72."

so each assistant turn is the reasoning text up to the next computation followed by the
calculator call, and it begins by using the previous observation. The last turn ends with
"The answer is N." (N from the "#### N" line), whose last number is what the benchmark's GSM8K
grading extracts (`eval.generated.extract_flexible`).

Design choices:
- Observations are the calculator tool's own output. A problem is skipped when an annotation
  fails to parse, or its value is not exactly the annotated result (rounded results such as
  `<<100/3=33.33>>`, percent signs, units), so no observation contradicts the text after it;
  problems without annotations or without a "####" line are skipped too.
- GSM8K test is the benchmark: `load_problems` refuses a file named like a test split, and
  nothing here knows where the test file is.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.agent.calls import ToolCall
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.agent.teach import Turns

GSM8K_TRAIN = "../shared/data/gsm8k/train.jsonl"  # relative to the repository root
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")


def _value(text: str) -> Fraction | None:
    try:
        return Fraction(text.strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def calculator_observation(expression: str, result: str) -> str | None:
    """The calculator's output for `expression` when it equals the annotated `result`
    exactly, else None."""
    from lmforge.agent.teach import observe

    try:
        output = observe("calculator", {"expression": expression})
    except LmforgeError:
        return None
    want, got = _value(result), _value(output)
    return output if want is not None and got == want else None


def solution_turns(question: str, solution: str) -> Turns | None:
    """A GSM8K record as `teach.Turns` (module docstring), or None when it is skipped."""
    from lmforge.agent.teach import Turns  # teach imports this module

    body, sep, final = solution.rpartition("####")
    final = final.strip()
    if not sep or _value(final) is None:
        return None
    rounds, thoughts, start = [], [], 0
    for m in _ANNOTATION.finditer(body):
        expression = m.group(1).strip()
        observation = calculator_observation(expression, m.group(2))
        if observation is None:
            return None
        thoughts.append(body[start:m.start()].strip())
        rounds.append(([ToolCall("calculator", {"expression": expression})], [observation]))
        start = m.end()
    if not rounds or "<<" in body[start:]:
        return None  # no calls, or an annotation the pattern does not read
    rest = body[start:].strip()
    answer = (rest + "\n" if rest else "") + f"The answer is {final}."
    return Turns(question, rounds, answer, ("calculator",), thoughts)


def load_problems(path: str | Path = GSM8K_TRAIN) -> list[Turns]:
    """Every convertible record of a GSM8K train JSONL file as `teach.Turns`, in file order."""
    p = Path(path)
    if "test" in p.name:
        raise LmforgeError(f"{p} looks like GSM8K's test split, which is the benchmark; "
                           "train from train.jsonl")
    if not p.is_file():
        raise LmforgeError(f"GSM8K train file not found: {p}; pass --gsm8k-train PATH (the "
                           "train.jsonl of openai/grade-school-math) or drop the gsm8k family "
                           "with --mix")
    out = []
    with p.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                turns = solution_turns(row["question"], row["answer"])
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise LmforgeError(f"{p}:{number} is not a GSM8K record with 'question' and "
                                   f"'answer' ({err})") from err
            if turns is not None:
                out.append(turns)
    if not out:
        raise LmforgeError(f"{p} has no GSM8K solution with calculator annotations")
    return out


def sampler(problems: list[Turns], rng: random.Random) -> Callable[[random.Random], Turns]:
    """A family function that walks the problems in an order shuffled by `rng`, reshuffling
    after each pass, so a problem repeats only once all the others have been used."""
    order: list[int] = []

    def draw(_: random.Random) -> Turns:
        if not order:
            order.extend(rng.sample(range(len(problems)), len(problems)))
        return problems[order.pop()]
    return draw
