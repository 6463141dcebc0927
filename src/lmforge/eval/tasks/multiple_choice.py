"""Multiple choice by log-likelihood: HellaSwag, PIQA, ARC-Easy, ARC-Challenge.

Each example is a context and n choices; the model's log-likelihood of each continuation
" " + choice given the context is Σ_t log p(c_t | context, c_<t) (`lmforge.score.
loglikelihood`: the context is read once, the choices as a trie after it, in one pass).

    acc      = [argmax_i  LL_i            == gold]
    acc_norm = [argmax_i  LL_i / bytes_i  == gold]   bytes_i = len(choice_i in UTF-8)

as lm-evaluation-harness's `multiple_choice` output type (`lm_eval/api/task.py`,
`process_results`; the harness divides by the choice's length in characters, equal to its
UTF-8 bytes on these ASCII-only sets; the issue asks for bytes). Ties go to the first
choice (numpy's argmax, as the harness).

Prompt formats, from the harness's task definitions (EleutherAI/lm-evaluation-harness):
- HellaSwag (`lm_eval/tasks/hellaswag/hellaswag.yaml`, `utils.py`): query =
  preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices =
  preprocess(ending).
- PIQA (`lm_eval/tasks/piqa/piqa.yaml`): "Question: {goal}\\nAnswer:", choices [sol1, sol2].
- ARC (`lm_eval/tasks/arc/arc_easy.yaml`; arc_challenge includes it):
  "Question: {question}\\nAnswer:", choices = the choices' texts, gold =
  labels.index(answerKey).
The continuation is the harness's target delimiter " " + choice.

Few-shot (`--shots K`): K solved examples (query + " " + gold choice) before the query,
joined by blank lines, as the harness's default sampler; ARC draws them from its training
split, HellaSwag and PIQA (no training split here) from the evaluated set without the
example itself (base.py's `Shots`).

Tokenisation follows the harness's `TemplateLM._encode_pair` (`lm_eval/api/model.py`):
trailing spaces of the context move to the continuation, the whole string is encoded and
the continuation's ids are what follows the context's own ids; no BOS is added (HFLM's
default for decoder models).

HellaSwag's data file here is not the original: it is llama.cpp's preprocessed text
(`../shared/data/hellaswag/README.md`): query = activity_label + ": " + ctx with the
WikiHow tags already removed by a function close to the harness's, and no ctx_a/ctx_b
split. We apply the harness's `preprocess` once more: on text that is already clean it is
the identity, and it removes the `[...]` tags the file still holds (18 lines), as the
harness does. The ctx_b capitalisation is recovered by `_capitalize_ctx_b` (an
approximation, see there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.eval.pairs import encode_choices
from lmforge.eval.tasks.base import ExampleRecord, Shots, Task, read_jsonl, register, with_shots
from lmforge.score import loglikelihood_requests

METRICS = ("acc", "acc_norm")
CHOICE_ROWS = 16  # examples per pass at most (each one row: its context, then its choices)
NO_SHOTS = Shots(0)


@dataclass
class Example:
    """One multiple-choice example: the context, the choices' texts and the gold index."""

    index: int
    context: str
    choices: list[str]
    gold: int


def preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleanup (`lm_eval/tasks/hellaswag/utils.py`):
    the `[...]` tags are artefacts of the WikiHow part of HellaSwag."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _capitalize_ctx_b(query: str) -> str:
    """The harness's ctx_a + " " + ctx_b.capitalize() from our file's ctx_a + " " + ctx_b.

    ctx_b is the start of the next sentence, unfinished, or empty. When the query does not
    end a sentence, its text after the last ". " is taken as ctx_b and capitalised as the
    harness does (str.capitalize: first letter upper, the rest lower). When ctx_b itself
    holds ". " this takes only its tail, the one place we can differ from the harness."""
    if query.endswith((".", "!", "?")):
        return query
    label, sep, ctx = query.partition(": ")
    head, dot, tail = ctx.rpartition(". ")
    if not dot:
        return query
    return f"{label}{sep}{head}{dot}{tail.capitalize()}"


def hellaswag_examples(path: Path) -> list[Example]:
    return [Example(i, preprocess(_capitalize_ctx_b(r["query"])),
                    [preprocess(e) for e in r["endings"]], int(r["label"]))
            for i, r in enumerate(read_jsonl(path))]


def piqa_examples(path: Path) -> list[Example]:
    """`piqa/valid.jsonl` with its labels, line by line, from `valid-labels.lst` beside it."""
    labels_path = path.with_name("valid-labels.lst")
    if not labels_path.is_file():
        raise LmforgeError(f"PIQA's labels {labels_path.name} belong beside {path} "
                           f"(missing: {labels_path})")
    labels = labels_path.read_text(encoding="utf-8").split()
    records = read_jsonl(path)
    if len(labels) != len(records):
        raise LmforgeError(f"{labels_path} has {len(labels)} labels for {len(records)} "
                           f"examples in {path}; they must align line by line")
    return [Example(i, f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(y))
            for i, (r, y) in enumerate(zip(records, labels, strict=True))]


def arc_examples(path: Path) -> list[Example]:
    out = []
    for i, r in enumerate(read_jsonl(path)):
        q = r["question"]
        labels = [c["label"] for c in q["choices"]]
        out.append(Example(i, f"Question: {q['stem']}\nAnswer:",
                           [c["text"] for c in q["choices"]], labels.index(r["answerKey"])))
    return out


def demonstration(ex: Example) -> str:
    """A solved example as a few-shot demonstration: the harness's doc_to_text +
    target_delimiter + the gold choice."""
    return f"{ex.context} {ex.choices[ex.gold]}"


def prompt(ex: Example, shots: Shots) -> str:
    """The context the choices continue: the demonstrations, then the example's own."""
    return with_shots([demonstration(d) for d in shots(ex.index)], ex.context)


def choice_loglikelihoods(lm: Any, examples: list[Example], shots: Shots = NO_SHOTS
                          ) -> list[list[float]]:
    """LL_i = Σ log p(" " + choice_i | context) of each choice of each example: each
    example one row, its context read once and its choices as a trie after it (tree
    attention, `lmforge.continuation_tree`), the examples together."""
    requests = []
    for ex in examples:
        requests.append(encode_choices(lm.tokenizer, prompt(ex, shots),
                                       [" " + c for c in ex.choices]))
    return [[r.logprob for r in results] for results in
            loglikelihood_requests(lm.model, requests, batch=CHOICE_ROWS, truncate=True)]


def choose(lls: list[float], choices: list[str], gold: int) -> tuple[dict[str, float], int, int]:
    """({"acc", "acc_norm"}, argmax LL_i, argmax LL_i / bytes_i) of one example."""
    n_bytes = np.array([len(c.encode("utf-8")) for c in choices], dtype=np.float64)
    pred = int(np.argmax(lls))
    pred_norm = int(np.argmax(np.asarray(lls) / np.maximum(n_bytes, 1)))
    return {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}, pred, pred_norm


def score_examples(lm: Any, task: str, examples: list[Example], shots: Shots
                   ) -> list[ExampleRecord]:
    out = []
    for ex, lls in zip(examples, choice_loglikelihoods(lm, examples, shots), strict=True):
        metrics, pred, pred_norm = choose(lls, ex.choices, ex.gold)
        out.append(ExampleRecord(task, ex.index, metrics,
                                 {"gold": ex.gold, "pred": pred, "pred_norm": pred_norm,
                                  "loglikelihoods": lls, "context": ex.context,
                                  "shots": [d.index for d in shots(ex.index)]}))
    return out


def _task(name: str, data_file: str, load: Any, description: str,
          fewshot_file: str | None = None) -> Task:
    return register(Task(name, data_file, METRICS, 0, description, load,
                         lambda lm, examples, shots: score_examples(lm, name, examples, shots),
                         fewshot_file=fewshot_file))


_task("hellaswag", "hellaswag/hellaswag_val.jsonl", hellaswag_examples,
      "HellaSwag validation (10,042), 4 endings")
_task("piqa", "piqa/valid.jsonl", piqa_examples,
      "PIQA validation (1,838) with valid-labels.lst, 2 solutions")
_task("arc_easy", "arc/ARC-Easy-Test.jsonl", arc_examples, "ARC-Easy test (2,376)",
      "arc/ARC-Easy-Train.jsonl")
_task("arc_challenge", "arc/ARC-Challenge-Test.jsonl", arc_examples,
      "ARC-Challenge test (1,172)", "arc/ARC-Challenge-Train.jsonl")
