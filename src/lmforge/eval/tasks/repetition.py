"""Repetition (`repetition`): how much a model repeats itself under each decoding setting,
and what curing it costs in likelihood (`lmforge.eval.repetition`).

Prompts: a fixed sample of WikiText-2 test paragraphs (`wikitext-2/test.txt`): the body
lines (not the `= heading =` lines), WikiText's split number marks joined back
("1 @,@ 000" → "1,000", "@-@" → "-", "@.@" → "."), whose first 32 words hold no `<unk>`;
200 of them drawn with `random.Random(0)` and kept in file order; a prompt is those 32
words. The sample does not depend on `--seed` or `--limit` (`--limit N` takes the first N).

Each prompt is continued by exactly 64 tokens (stops off: `repetition.fixed_length`) under
each setting, the batch's prompts decoded together, and per setting s the record holds

    s/rep-2, s/rep-3 = 1 − |unique n-grams| / |n-grams| of the continuation (Welleck et al.)
    s/nll            = −Σ_t log p(c_t | prompt, c_<t) / |c|   (nats per token, under the
                       model itself; exp of its mean is the continuations' perplexity)

The default settings: `greedy`; `top_p` (temperature 1, top-p 0.9; row seed = the prompt's
number, so a run is reproducible at any --limit); `rep_penalty` (greedy, CTRL repetition
penalty 1.3); `no_repeat_3gram` (greedy, no 3-gram twice). `register_repetition` makes a
task of other settings. Distinct-n is a property of the whole set of continuations, not a
per-example mean: the report gives `s/distinct-2`, `s/distinct-3` over the run's
continuations (the task's `aggregate`), without a standard error. Zero-shot only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmforge.eval import repetition
from lmforge.eval.tasks.base import ExampleRecord, Shots, Task, register
from lmforge.eval.tasks.indexed import Indexed
from lmforge.generate.config import GenerationConfig

PROMPTS = 200
PROMPT_WORDS = 32
PROMPT_SEED = 0
LENGTH = 64
NS = (2, 3)
SETTINGS = {
    "greedy": GenerationConfig(temperature=0.0),
    "top_p": GenerationConfig(temperature=1.0, top_p=0.9, seed=0),
    "rep_penalty": GenerationConfig(temperature=0.0, repetition_penalty=1.3),
    "no_repeat_3gram": GenerationConfig(temperature=0.0, no_repeat_ngram_size=3),
}
_NUMBER_MARK = re.compile(r" @([-,.])@ ")


@dataclass(frozen=True)
class Prompt:
    line: int  # its paragraph's line in the file (0-based)
    text: str


def wikitext_prompts(path: Path) -> list[Indexed[Prompt]]:
    """The fixed sample of prompts (module docstring) from a WikiText file."""
    candidates = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        words = _NUMBER_MARK.sub(r"\1", line).split()
        text = " ".join(words[:PROMPT_WORDS])
        if len(words) > PROMPT_WORDS and not line.lstrip().startswith("=") and \
                "<unk>" not in text:
            candidates.append(Prompt(n, text))
    picked = sorted(random.Random(PROMPT_SEED).sample(range(len(candidates)),
                                                      min(PROMPTS, len(candidates))))
    return [Indexed(i, candidates[j]) for i, j in enumerate(picked)]


def metric_names(settings: Mapping[str, GenerationConfig]) -> tuple[str, ...]:
    return tuple(f"{s}/{m}" for s in settings for m in (*(f"rep-{n}" for n in NS), "nll"))


def score_prompts(lm: Any, task: str, settings: Mapping[str, GenerationConfig], length: int,
                  batch: list[Indexed[Prompt]], shots: Shots) -> list[ExampleRecord]:
    # a sampled row r of the batch draws with seed + r: offset so row r's seed is its index
    first = batch[0].index
    seeded = {name: c if c.greedy else replace(c, seed=(c.seed or 0) + first)
              for name, c in settings.items()}
    reports = repetition.repetition_report(lm, [p.item.text for p in batch], seeded,
                                           length=length, ns=NS)
    out = []
    for i, p in enumerate(batch):
        metrics: dict[str, float] = {}
        for r in reports:
            cont = r.continuations[i]
            metrics |= {f"{r.name}/rep-{n}": repetition.rep_n(cont, n) for n in NS}
            metrics[f"{r.name}/nll"] = -r.logprobs[i] / len(cont)
        out.append(ExampleRecord(task, p.index, metrics,
                                 {"line": p.item.line, "prompt": p.item.text,
                                  "continuations": {r.name: r.texts[i] for r in reports},
                                  "ids": {r.name: r.continuations[i] for r in reports}}))
    return out


def distinct(settings: Mapping[str, GenerationConfig], records: list[ExampleRecord]
             ) -> dict[str, float]:
    """distinct-n of each setting over all the run's continuations (a property of the set,
    not a mean over examples)."""
    return {f"{s}/distinct-{n}": repetition.distinct_n([r.details["ids"][s] for r in records], n)
            for s in settings for n in NS}


def register_repetition(name: str, settings: Mapping[str, GenerationConfig],
                        length: int = LENGTH) -> Task:
    """Register a repetition task of the named decoding settings over the fixed prompts."""
    return register(Task(
        name, "wikitext-2/test.txt", metric_names(settings), 0,
        f"repetition: {length} tokens after {PROMPTS} WikiText-2 prompts under "
        f"{', '.join(settings)}: rep-2/3, nll and distinct-2/3 per setting",
        wikitext_prompts,
        lambda lm, batch, shots: score_prompts(lm, name, settings, length, batch, shots),
        few_shot=False, aggregate=lambda records: distinct(settings, records)))


register_repetition("repetition", SETTINGS)
