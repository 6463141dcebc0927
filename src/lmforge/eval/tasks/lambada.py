"""LAMBADA (Paperno et al., 2016): predict the last word of a passage from the rest.

OpenAI's version (`lambada/lambada_test.jsonl`, 5,153 passages) as lm-evaluation-harness's
`lambada_openai` (lm_eval/tasks/lambada/lambada_openai.yaml): the context is the text up to
its last space, the target is " " + the last word (split on single spaces, as its
`doc_to_text` / `doc_to_target`), scored by `loglikelihood`:

    acc  = 1 when every target token is the argmax given what precedes it (greedy)
    nll  = −log p(target | context), nats

The harness's `perplexity` of the target word over the set is exp(mean nll): the report's
`nll` value, exponentiated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.eval.pairs import encode_pair
from lmforge.eval.tasks.base import ExampleRecord, Shots, Task, read_jsonl, register, with_shots
from lmforge.score import loglikelihood_requests


@dataclass
class Passage:
    index: int
    context: str
    target: str  # with its leading space


def lambada_passages(path: Path) -> list[Passage]:
    out = []
    for i, r in enumerate(read_jsonl(path)):
        words = r["text"].split(" ")
        out.append(Passage(i, " ".join(words[:-1]), " " + words[-1]))
    return out


def score_passages(lm: Any, passages: list[Passage], shots: Shots) -> list[ExampleRecord]:
    pairs = [encode_pair(lm.tokenizer, with_shots([d.context + d.target for d in shots(p.index)],
                                                   p.context), p.target) for p in passages]
    results = loglikelihood_requests(lm.model, [(ctx, [target]) for ctx, target in pairs],
                                     truncate=True)
    return [ExampleRecord("lambada_openai", p.index,
                          {"acc": float(ll.is_greedy), "nll": -ll.logprob},
                          {"target": p.target, "target_tokens": len(target)})
            for p, (_, target), (ll,) in zip(passages, pairs, results, strict=True)]


register(Task("lambada_openai", "lambada/lambada_test.jsonl", ("acc", "nll"), 0,
              "LAMBADA, OpenAI's test version (5,153): last-word accuracy and nll "
              "(perplexity = exp of the mean nll)", lambada_passages, score_passages))
