"""Tasks scored on a greedy generation's number: GPT-3's arithmetic problems and GSM8K.

Design choices:
- Arithmetic follows Brown et al. 2020 ("Language Models are Few-Shot Learners", §3.9.1):
  two operands drawn uniformly from [0, 10^d) for d = 2…5 digits, asked as
  "Q: What is 48 plus 76? A: 124" (operations plus, minus, times; a minus may be negative).
  The paper's tasks are 2D+ … 5D+, 2D- … 5D- and 2Dx; any digit count 2…5 works for each
  operation here. Problems come from `random.Random` seeded with a string naming the split,
  seed, operation and digits: reproducible across runs and Python versions, and the
  few-shot examples ("fewshot" split) are drawn independently of the test problems.
- A greedy answer is right when its first integer (optional minus sign, thousands commas
  allowed) equals the result; GPT-3 scored the exact answer string, and the first number
  is that string for a model that answers and then goes on generating.
- GSM8K follows lm-evaluation-harness `lm_eval/tasks/gsm8k/gsm8k.yaml` (version 3): prompt
  "Question: {question}\\nAnswer:", few-shot examples "Question: …\\nAnswer: {full solution}"
  from the train split joined by "\\n\\n", generation until "Question:", "</s>" or
  "<|im_end|>". The gold is the number after "#### " in the solution. A generation's answer
  is taken by the "strict-match" filter (first match of `#### (\\-?[0-9\\.\\,]+)`) or the
  "flexible-extract" filter (last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`), each "[invalid]"
  when nothing matches (lm_eval/filters/extraction.py `RegexFilter`). Both sides are then
  normalised by the task's `exact_match` settings: the regexes ",", "\\$", "(?s).*#### ",
  "\\.$" removed, lower case.
"""

from __future__ import annotations

import json
import operator
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError

# ---------------------------------------------------------------- arithmetic (GPT-3 §3.9.1)

OPERATIONS = {"plus": operator.add, "minus": operator.sub, "times": operator.mul}
# The paper's ten tasks less 1DC (one-digit composite): name → (operation, digits).
GPT3_ARITHMETIC = {f"{d}D{sign}": (op, d) for op, sign in (("plus", "+"), ("minus", "-"))
                   for d in (2, 3, 4, 5)} | {"2Dx": ("times", 2)}
ARITHMETIC_STOP = "\n"


@dataclass(frozen=True)
class ArithmeticProblem:
    a: int
    b: int
    operation: str  # "plus", "minus" or "times"

    @property
    def answer(self) -> int:
        return OPERATIONS[self.operation](self.a, self.b)

    @property
    def question(self) -> str:
        return f"Q: What is {self.a} {self.operation} {self.b}? A:"


def arithmetic_problems(operation: str, digits: int, count: int, seed: int = 0,
                        split: str = "test") -> list[ArithmeticProblem]:
    """`count` problems with operands uniform in [0, 10^digits); the same arguments give
    the same problems, and another `split` name gives an independent stream."""
    if operation not in OPERATIONS:
        raise LmforgeError(f"unknown arithmetic operation {operation!r}; "
                           f"use one of {', '.join(OPERATIONS)}")
    if not 1 <= digits <= 9:
        raise LmforgeError(f"arithmetic digits must be between 1 and 9, got {digits}")
    rng = random.Random(f"{split}:{seed}:{operation}:{digits}")
    high = 10 ** digits - 1
    return [ArithmeticProblem(rng.randint(0, high), rng.randint(0, high), operation)
            for _ in range(count)]


def arithmetic_prompt(problem: ArithmeticProblem, shots: Sequence[ArithmeticProblem]) -> str:
    """Few-shot prompt: each example "Q: What is a op b? A: c" on its own line, then the
    question ending in "A:" (the model continues with " c")."""
    lines = [f"{shot.question} {shot.answer}" for shot in shots]
    return "\n".join([*lines, problem.question])


_INTEGER = re.compile(r"-?\d+(?:,\d{3})*")


def first_integer(text: str) -> int | None:
    """The first integer in `text` (sign and thousands commas kept), or None.

    >>> first_integer(" -1,234 and then 5")
    -1234
    """
    match = _INTEGER.search(text)
    return None if match is None else int(match.group().replace(",", ""))


def arithmetic_correct(generation: str, problem: ArithmeticProblem) -> bool:
    """Exact match of the generation's first integer with the problem's result."""
    return first_integer(generation) == problem.answer


# ---------------------------------------------------------------- GSM8K (lm-evaluation-harness)

GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")
GSM8K_SHOTS = 5
GSM8K_FEWSHOT_SEED = 1234  # the harness's default fewshot_random_seed
INVALID = "[invalid]"
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = [re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$")]


@dataclass(frozen=True)
class GSM8KRecord:
    question: str
    answer: str  # the worked solution, ending in "#### <number>"

    @property
    def target(self) -> str:
        """The gold number as the harness compares it."""
        return normalize_number(self.answer)


def load_gsm8k(directory: str | Path, split: str = "test",
               limit: int | None = None) -> list[GSM8KRecord]:
    """Records of `directory`/{split}.jsonl (test: 1,319, train: 7,473), in file order."""
    path = Path(directory) / f"{split}.jsonl"
    if not path.is_file():
        raise LmforgeError(f"GSM8K data file not found: {path}; put {path.name} (from "
                           f"openai/grade-school-math) in {path.parent}, as its README describes")
    records: list[GSM8KRecord] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and len(records) >= limit:
                break
            try:
                row = json.loads(line)
                records.append(GSM8KRecord(row["question"], row["answer"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise LmforgeError(f"{path}:{number} is not a GSM8K record with 'question' and "
                                   f"'answer' ({err}); replace the file with the original") from err
    return records


def gsm8k_prompt(record: GSM8KRecord, shots: Sequence[GSM8KRecord]) -> str:
    """The harness's few-shot context: examples with their full solutions, each followed by
    "\\n\\n", then the question."""
    examples = "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots)
    return f"{examples}Question: {record.question}\nAnswer:"


def gsm8k_fewshot(pool: Sequence[GSM8KRecord], k: int, rng: random.Random) -> list[GSM8KRecord]:
    """`k` examples drawn without replacement, as the harness's `ContextSampler.sample`
    (`rng.sample(docs, k)`); one `random.Random(GSM8K_FEWSHOT_SEED)` advanced over the test
    questions in order gives each question its own examples, as the harness does."""
    return rng.sample(list(pool), k)


def _regex_filter(pattern: re.Pattern[str], text: str, select: int) -> str:
    """The harness's `RegexFilter`: the selected match, its first non-empty group, stripped."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[select]
    if isinstance(match, tuple):
        match = next(group for group in match if group)
    return match.strip()


def extract_strict(generation: str) -> str:
    """The "strict-match" answer: the number after the first "#### "."""
    return _regex_filter(_STRICT, generation, 0)


def extract_flexible(generation: str) -> str:
    """The "flexible-extract" answer: the last number-like string."""
    return _regex_filter(_FLEXIBLE, generation, -1)


def normalize_number(text: str) -> str:
    """The task's exact-match normalisation: drop commas, dollar signs, everything up to
    "#### " and one final period, then lower-case.

    >>> normalize_number("so $1,200. #### 1,200")
    '1200'
    """
    for pattern in _IGNORE:
        text = pattern.sub("", text)
    return text.lower()


def gsm8k_exact_match(extracted: str, record: GSM8KRecord) -> float:
    """1.0 when an extracted answer equals the gold number after normalisation."""
    return float(normalize_number(extracted) == record.target)
