"""GSM8K (Cobbe et al. 2021) test, as lm-evaluation-harness's `gsm8k` task
(`lm_eval/tasks/gsm8k/gsm8k.yaml`): few-shot chain of thought, greedy.

Prompt: K solved training problems "Question: …\\nAnswer: {worked solution ending in
#### n}" each followed by a blank line, then "Question: {question}\\nAnswer:"
(`lmforge.eval.generated.gsm8k_prompt`); demonstrations drawn per example from
`gsm8k/train.jsonl` by base.py's `Shots`. Generation stops at "\\n\\n" or "Question:"
(the harness's `until` in gsm8k.yaml v1; v3 keeps "Question:" and adds the chat end
tokens "</s>" and "<|im_end|>", kept here too) or after 256 new tokens (the harness's
default `max_gen_toks`). Two metrics, as the harness's two filters:

    strict_match     = [norm(first "#### n" of the answer) == norm(gold)]
    flexible_extract = [norm(last number-like string of the answer) == norm(gold)]

(`generated.extract_strict`, `extract_flexible`, `gsm8k_exact_match`).

The harness runs 5 shots (`num_fewshot: 5`, `default_shots` here); the runner applies
`--shots` (default 0), so pass `--shots 5` for the harness's setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.eval import generated
from lmforge.eval.tasks.base import ExampleRecord, Shots, Task, register
from lmforge.eval.tasks.generation import greedy_answers
from lmforge.eval.tasks.indexed import Indexed, indexed

STOPS = ("\n\n", *generated.GSM8K_STOPS)
MAX_TOKENS = 256


def load(path: Path) -> list[Indexed[generated.GSM8KRecord]]:
    """The records of `gsm8k/{split}.jsonl` (the split is the file's stem)."""
    return indexed(generated.load_gsm8k(path.parent, path.stem))


def prompt(problem: Indexed[generated.GSM8KRecord], shots: Shots) -> str:
    return generated.gsm8k_prompt(problem.item, [d.item for d in shots(problem.index)])


def score_problems(lm: Any, batch: list[Indexed[generated.GSM8KRecord]], shots: Shots
                   ) -> list[ExampleRecord]:
    prompts = [prompt(p, shots) for p in batch]
    out = []
    for p, answer in zip(batch, greedy_answers(lm, prompts, STOPS, MAX_TOKENS), strict=True):
        strict, flexible = generated.extract_strict(answer), generated.extract_flexible(answer)
        out.append(ExampleRecord(
            "gsm8k", p.index,
            {"strict_match": generated.gsm8k_exact_match(strict, p.item),
             "flexible_extract": generated.gsm8k_exact_match(flexible, p.item)},
            {"prediction": answer, "strict": strict, "flexible": flexible,
             "gold": p.item.target, "shots": [d.index for d in shots(p.index)]}))
    return out


register(Task("gsm8k", "gsm8k/test.jsonl", ("strict_match", "flexible_extract"),
              generated.GSM8K_SHOTS, "GSM8K test (1,319): chain of thought, greedy, exact "
              "match of the final number (strict #### / flexible last number)",
              load, score_problems, fewshot_file="gsm8k/train.jsonl"))
