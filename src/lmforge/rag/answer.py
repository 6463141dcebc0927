"""Grounded answers: retrieved passages, numbered, in the prompt; an answer citing them as [n];
a check of whether each cited passage supports the answer.

    >>> passages = relevant_passages(retriever, "Who designed the tower?", k=5)
    >>> ids, kept = build_prompt(lm.tokenizer, "Who designed the tower?", passages, 1024)
    >>> text = "".join(stream_answer(lm, ids, max_tokens=128))
    >>> checks = check_support(lm, "Who designed the tower?", text, kept)

Relevance gate: every passage gets the cosine of its vector with the query's (whatever mode
retrieved it, so one threshold means one thing); passages under `min_relevance` are dropped,
and with none left the answer is "I don't know" without calling the model, the honest answer
when retrieval found nothing. Context budget: passages enter the prompt best first until the
next would overflow `budget` tokens; the least relevant are the ones left out.

Supported-answer check (the hallucinated-citation count): for each passage the answer cites,
(1) the share of the answer's content terms (lowercased words, English stop words dropped, Han
characters one by one) found in the passage, and (2) the likelihood lift, the model's own mean
per-token log-probability of the answer given that passage and the question minus given the
question alone (`lmforge.score.loglikelihood`): positive when the passage makes the answer
more likely. A citation is supported when both hold (share ≥ `MIN_OVERLAP`, lift > 0). An
answer that cites nothing counts as one unsupported citation, so a rate over many questions
counts uncited claims too. The lift measures what the passage adds: a fact the model already
knows (the Eiffel Tower's year) gains little or nothing from it, so a right answer from memory
may count as unsupported; that is the grounding question asked, not an error of the check.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig
from lmforge.rag.bm25 import make_tokenizer
from lmforge.rag.retrieve import Retriever
from lmforge.rag.store import Hit

if TYPE_CHECKING:
    from lmforge.api import LoadedModel

DONT_KNOW = "I don't know: no indexed passage is relevant enough to answer this."
SYSTEM = ("You answer questions using only the numbered passages given. Cite each passage "
          "you use with its number in brackets, like [1]. If the passages do not contain the "
          "answer, reply: I don't know.")
MIN_RELEVANCE = 0.3  # cosine; all-MiniLM-L6-v2 gives unrelated text ≈ 0.0-0.2
MIN_OVERLAP = 0.5
CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class Passage:
    number: int  # as cited: [number]
    hit: Hit
    relevance: float  # cosine of the passage's vector with the query's


@dataclass
class Support:
    number: int
    overlap: float  # share of the answer's content terms found in the passage
    lift: float  # mean log p(answer | passage, question) − mean log p(answer | question)
    supported: bool


def relevant_passages(retriever: Retriever, question: str, k: int = 5, mode: str = "hybrid",
                      filter: str = "", min_relevance: float = MIN_RELEVANCE) -> list[Passage]:
    """The retrieved chunks whose cosine with the query reaches `min_relevance`, best first."""
    hits = retriever.search(question, k, mode, filter)
    if not hits:
        return []
    rows = retriever.store.get(retriever.collection, [h.id for h in hits], ["id", "vector"])
    vectors = np.array([rows[h.id]["vector"] for h in hits], dtype=np.float32)
    cosine = vectors @ retriever.embedder.embed_query(question)
    kept = sorted(((float(c), h) for c, h in zip(cosine, hits, strict=True)
                   if c >= min_relevance), key=lambda ch: -ch[0])
    return [Passage(n, h, c) for n, (c, h) in enumerate(kept, 1)]


def _messages(question: str, passages: list[Passage]) -> list[dict[str, str]]:
    if passages:
        body = "\n\n".join(f"[{p.number}] ({p.hit.source}) {' '.join(p.hit.text.split())}"
                           for p in passages)
        user = f"Passages:\n{body}\n\nQuestion: {question}\nAnswer briefly, citing passages."
    else:
        user = f"Question: {question}\nAnswer briefly."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def build_prompt(tokenizer, question: str, passages: list[Passage], budget: int
                 ) -> tuple[list[int], list[Passage]]:
    """Chat-template ids with as many passages (best first) as fit in `budget` tokens,
    renumbered 1..n in that order, and the passages kept."""
    kept: list[Passage] = []
    ids = tokenizer.apply_chat_template(_messages(question, kept))
    if len(ids) > budget:
        raise LmforgeError(f"the question alone takes {len(ids)} tokens, over the context "
                           f"budget of {budget}; shorten it or raise --context-tokens")
    for p in passages:
        trial = [*kept, Passage(len(kept) + 1, p.hit, p.relevance)]
        trial_ids = tokenizer.apply_chat_template(_messages(question, trial))
        if len(trial_ids) > budget:
            break
        kept, ids = trial, trial_ids
    return ids, kept


def stream_answer(lm: LoadedModel, ids: list[int], max_tokens: int = 256,
                  temperature: float = 0.0) -> Iterator[str]:
    config = GenerationConfig(max_tokens=max_tokens, temperature=temperature)
    for d in lm.engine.stream([ids], config):
        yield d.text


def cited(answer: str, n_passages: int) -> list[int]:
    """The passage numbers cited in `answer` ([n] within 1..n_passages), in first-cited order."""
    numbers = (int(m) for m in CITATION.findall(answer))
    return list(dict.fromkeys(x for x in numbers if 1 <= x <= n_passages))


def _mean_logprob(lm: LoadedModel, context: list[int], answer: list[int]) -> float:
    from lmforge.score import loglikelihood

    return loglikelihood(lm.model, context, [answer])[0].logprob / len(answer)


def check_support(lm: LoadedModel, question: str, answer: str, passages: list[Passage]
                  ) -> list[Support]:
    """One Support per cited passage; an answer citing nothing gets one unsupported entry
    (number 0)."""
    claim = CITATION.sub("", answer).strip()
    numbers = cited(answer, len(passages))
    if not numbers or not claim:
        return [Support(0, 0.0, 0.0, False)]
    terms, _ = make_tokenizer()
    claim_terms = set(terms(claim))
    answer_ids = lm.tokenizer.encode(claim, parse_special=False)
    tok = lm.tokenizer
    without = _mean_logprob(lm, tok.apply_chat_template(_messages(question, [])), answer_ids)
    out = []
    for n in numbers:
        p = passages[n - 1]
        found = claim_terms & set(terms(p.hit.text))
        overlap = len(found) / len(claim_terms) if claim_terms else 0.0
        alone = Passage(1, p.hit, p.relevance)
        lift = _mean_logprob(lm, tok.apply_chat_template(_messages(question, [alone])),
                             answer_ids) - without
        out.append(Support(n, overlap, lift, overlap >= MIN_OVERLAP and lift > 0))
    return out


def supported_rate(checks: list[Support]) -> float:
    return sum(c.supported for c in checks) / len(checks)
