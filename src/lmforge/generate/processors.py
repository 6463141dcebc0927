"""Logits processors: small functions `(logits (B, V), state) -> logits`, composed in one list.

`build_processors(config)` gives the list the CLI, the API and the web UI all use; the order
is penalties and biases first, then the temperature, then the truncations (top-k, top-p,
min-p), as in Hugging Face transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmforge.generate.config import GenerationConfig

NEG_INF = float("-inf")


@dataclass
class DecodeState:
    """What the processors may look at, one row per sequence being generated."""

    sequences: list[list[int]]  # prompt + generated ids
    n_prompt: list[int]
    counts: torch.Tensor  # (B, V) how often each token was generated
    seen: torch.Tensor  # (B, V) bool: token occurs in prompt or answer

    @classmethod
    def start(cls, prompts: list[list[int]], vocab_size: int) -> DecodeState:
        seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool)
        for row, ids in enumerate(prompts):
            seen[row, torch.tensor(ids, dtype=torch.long)] = True
        return cls([list(p) for p in prompts], [len(p) for p in prompts],
                   torch.zeros(len(prompts), vocab_size), seen)

    def n_generated(self, row: int) -> int:
        return len(self.sequences[row]) - self.n_prompt[row]

    def append(self, tokens: list[int]) -> None:
        rows = torch.arange(len(tokens))
        ids = torch.tensor(tokens)
        self.counts[rows, ids] += 1
        self.seen[rows, ids] = True
        for seq, t in zip(self.sequences, tokens, strict=True):
            seq.append(t)

    def select(self, rows: list[int]) -> DecodeState:
        """The state of a subset of rows, in the given order (rows may repeat: beams)."""
        idx = torch.tensor(rows, dtype=torch.long)
        return DecodeState([list(self.sequences[r]) for r in rows],
                           [self.n_prompt[r] for r in rows],
                           self.counts[idx].clone(), self.seen[idx].clone())


Processor = Callable[[torch.Tensor, DecodeState], torch.Tensor]


def repetition_penalty(p: float) -> Processor:
    """CTRL (Keskar et al., 2019): a seen token's logit l becomes l/p if l > 0, else l·p."""
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        penalised = torch.where(logits > 0, logits / p, logits * p)
        return torch.where(state.seen, penalised, logits)
    return apply


def presence_frequency_penalty(presence: float, frequency: float) -> Processor:
    """OpenAI's rule: l[j] −= c[j]·frequency + 1[c[j] > 0]·presence, c = counts in the answer."""
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        c = state.counts
        return logits - c * frequency - (c > 0).float() * presence
    return apply


def logit_bias(bias: dict[int, float], vocab_size: int) -> Processor:
    vector = torch.zeros(vocab_size)
    for token, b in bias.items():
        if 0 <= token < vocab_size:
            vector[token] = b

    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        return logits + vector
    return apply


def no_repeat_ngram(n: int) -> Processor:
    """Ban every token that would complete an n-gram already present in the sequence."""
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        for row, seq in enumerate(state.sequences):
            if len(seq) < n:
                continue
            prefix = tuple(seq[len(seq) - n + 1:])
            banned = [seq[i + n - 1] for i in range(len(seq) - n + 1)
                      if tuple(seq[i: i + n - 1]) == prefix]
            logits[row, banned] = NEG_INF
        return logits
    return apply


def min_tokens(count: int, stop_ids: list[int]) -> Processor:
    """Forbid the stop tokens until `count` tokens have been generated."""
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        for row in range(logits.shape[0]):
            if state.n_generated(row) < count:
                logits[row, stop_ids] = NEG_INF
        return logits
    return apply


def temperature(t: float) -> Processor:
    """p ∝ exp(l / t)."""
    return lambda logits, state: logits / t


def top_k(k: int) -> Processor:
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, NEG_INF)
    return apply


def top_p(p: float) -> Processor:
    """Nucleus sampling (Holtzman et al., 2020): keep the most likely tokens until their
    probability mass reaches p; the top token is always kept."""
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = (mass_before >= p).scatter(-1, order, mass_before >= p)
        return logits.masked_fill(drop, NEG_INF)
    return apply


def min_p(p: float) -> Processor:
    """Min-p (Nguyen et al., 2024): drop tokens with probability < p · max probability."""
    def apply(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        threshold = p * probs.max(dim=-1, keepdim=True).values
        return logits.masked_fill(probs < threshold, NEG_INF)
    return apply


def build_processors(config: GenerationConfig, vocab_size: int, stop_ids: list[int]
                     ) -> list[Processor]:
    """The processors the config asks for, in the order they apply."""
    chain: list[Processor] = []
    if config.repetition_penalty != 1.0:
        chain.append(repetition_penalty(config.repetition_penalty))
    if config.presence_penalty or config.frequency_penalty:
        chain.append(presence_frequency_penalty(config.presence_penalty, config.frequency_penalty))
    if config.logit_bias:
        chain.append(logit_bias(config.logit_bias, vocab_size))
    if config.no_repeat_ngram_size:
        chain.append(no_repeat_ngram(config.no_repeat_ngram_size))
    if config.min_tokens and stop_ids:
        chain.append(min_tokens(config.min_tokens, stop_ids))
    if config.greedy or config.num_beams > 1:
        return chain
    if config.temperature != 1.0:
        chain.append(temperature(config.temperature))
    if config.top_k:
        chain.append(top_k(config.top_k))
    if config.top_p < 1.0:
        chain.append(top_p(config.top_p))
    if config.min_p:
        chain.append(min_p(config.min_p))
    return chain


def process(logits: torch.Tensor, chain: list[Processor], state: DecodeState) -> torch.Tensor:
    for proc in chain:
        logits = proc(logits, state)
    return logits


def sample(logits: torch.Tensor, generators: list[torch.Generator] | None) -> list[int]:
    """Argmax when `generators` is None (greedy), else one draw per row from softmax(logits),
    each row with its own generator so that a seeded row does not depend on its batch."""
    if generators is None:
        return logits.argmax(dim=-1).tolist()
    probs = logits.softmax(dim=-1)
    return [int(torch.multinomial(probs[row], 1, generator=g)) for row, g in enumerate(generators)]
