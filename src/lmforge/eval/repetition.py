"""Repetition of generated text (the "repeater" problem of small models), per decoding setting.

Metrics on token ids (n-grams are tuples of n consecutive ids):

- rep-n of one continuation x (Welleck et al., 2019, "Neural Text Generation with
  Unlikelihood Training", seq-rep-n):  1 − |unique n-grams(x)| / |n-grams(x)|,
  0 when no n-gram repeats, → 1 for a loop; reported as the mean over continuations.
- distinct-n of a set of continuations (Li et al., 2016, "A Diversity-Promoting Objective
  Function for Neural Conversation Models"): |unique n-grams over the set| / |n-grams over
  the set|. Li et al. divide by the number of generated tokens; for n = 1 the two agree,
  and dividing by the n-gram count keeps distinct-n in [0, 1] for every n.
- perplexity of the continuations under the model itself: exp(−Σ log p(c_t | prompt, c_<t)
  / Σ |c|), from `lmforge.score.loglikelihood_requests` (prompt as context). A setting that
  cures repetition by forcing unlikely tokens pays for it here.

`repetition_report` generates continuations of one fixed length (stop tokens and stop
strings are off: `min_tokens = max_tokens`) for every prompt under every named setting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig
from lmforge.score import loglikelihood_requests

NS = (1, 2, 3, 4)
PROMPTS_PER_PASS = 16


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The n-grams of `ids` in order: len(ids) − n + 1 of them (none when shorter)."""
    if n < 1:
        raise LmforgeError(f"n-gram order must be at least 1, got {n}")
    return [tuple(ids[i: i + n]) for i in range(len(ids) - n + 1)]


def rep_n(ids: Sequence[int], n: int) -> float:
    """1 − |unique n-grams| / |n-grams| of one sequence (Welleck et al., 2019).

    >>> rep_n([1, 2, 1, 2, 1], 2)  # bigrams 12 21 12 21: two unique of four
    0.5
    """
    grams = ngrams(ids, n)
    if not grams:
        raise LmforgeError(f"rep-{n} needs at least {n} tokens, got {len(ids)}: generate "
                           "longer continuations")
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """|unique n-grams| / |n-grams| over all `sequences` together (Li et al., 2016).

    >>> distinct_n([[1, 2, 3], [1, 2, 4]], 2)  # 12 23 12 24: three unique of four
    0.75
    """
    grams = [g for s in sequences for g in ngrams(s, n)]
    if not grams:
        raise LmforgeError(f"distinct-{n} needs a sequence of at least {n} tokens")
    return len(set(grams)) / len(grams)


@dataclass
class SettingReport:
    name: str
    config: GenerationConfig  # as run: fixed length, stops off
    rep: dict[int, float]  # n → mean rep-n over the continuations
    distinct: dict[int, float]  # n → distinct-n over all continuations
    perplexity: float  # of the continuations under the model
    continuations: list[list[int]]  # prompt-major: n per prompt
    texts: list[str]
    logprobs: list[float]  # Σ log p of each continuation under the model


def fixed_length(config: GenerationConfig, length: int) -> GenerationConfig:
    """`config` generating exactly `length` tokens: no stop token before them, no stop strings."""
    return replace(config, max_tokens=length, min_tokens=length, stop=[])


def continuation_logprobs(model, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]]) -> list[float]:
    """Σ_t log p(c_t | prompt, c_<t) of each continuation; `continuations[i]` follows
    `prompts[i // n]` (n continuations per prompt, prompt-major). The prompts are prefilled
    together and each one's cache shared by its continuations
    (`score.loglikelihood_requests`), PROMPTS_PER_PASS prompts at a time."""
    n = len(continuations) // len(prompts)
    out: list[float] = []
    for i in range(0, len(prompts), PROMPTS_PER_PASS):
        requests = [(list(p), [list(c) for c in continuations[j * n: (j + 1) * n]])
                    for j, p in enumerate(prompts[i: i + PROMPTS_PER_PASS], i)]
        out += [ll.logprob for lls in loglikelihood_requests(model, requests, truncate=True)
                for ll in lls]
    return out


def repetition_report(lm, prompts: Sequence[str], settings: Mapping[str, GenerationConfig], *,
                      length: int = 64, ns: Sequence[int] = NS) -> list[SettingReport]:
    """For each named setting: continuations of `length` tokens of every prompt with
    `lm.engine.generate` (`lm` a `lmforge.api.LoadedModel`), their rep-n, distinct-n and
    perplexity under the model (module docstring)."""
    if not prompts:
        raise LmforgeError("no prompts to continue: give at least one")
    if not settings:
        raise LmforgeError("no decoding settings: name at least one (e.g. greedy)")
    if length < max(ns):
        raise LmforgeError(f"length={length} is shorter than the largest n-gram order "
                           f"{max(ns)}: generate longer continuations")
    ids = [lm.tokenizer.encode(p) for p in prompts]
    reports = []
    for name, config in settings.items():
        config = fixed_length(config, length)
        done = lm.engine.generate(ids, config)
        conts = [c.token_ids for c in done]
        logprobs = continuation_logprobs(lm.model, ids, conts)
        reports.append(SettingReport(
            name, config,
            {n: sum(rep_n(c, n) for c in conts) / len(conts) for n in ns},
            {n: distinct_n(conts, n) for n in ns},
            math.exp(-sum(logprobs) / sum(map(len, conts))), conts,
            [c.text for c in done], logprobs))
    return reports


def format_table(reports: Sequence[SettingReport]) -> str:
    """A Markdown table: one row per setting, rep-n and distinct-n columns, perplexity."""
    ns = list(reports[0].rep)
    head = ["setting", *(f"rep-{n}" for n in ns), *(f"distinct-{n}" for n in ns), "ppl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        cells = [r.name, *(f"{r.rep[n]:.3f}" for n in ns),
                 *(f"{r.distinct[n]:.3f}" for n in ns), f"{r.perplexity:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
