"""Beam search with a length penalty.

Keep the `num_beams` highest-scoring partial answers; at each step extend every beam by
every token and keep the best `num_beams` of the 2·num_beams best extensions that do not end
the answer. An answer that ends (a stop token) is scored

    score(y) = log p(y | x) / |y|^length_penalty

(Wu et al., 2016, in the simplified form of Hugging Face transformers), and the search stops
once no running beam can beat the worst of the `num_beams` finished ones, or at max_tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import Batch, Timing, cache_for, decode_step, prompt_ids
from lmforge.generate.processors import DecodeState, build_processors, process
from lmforge.generate.row import mask_from
from lmforge.generate.text import TextStream
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.base import Tokenizer


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float
    ended: bool  # True: closed by a stop token; False: cut at max_tokens


def _score(logprob: float, length: int, penalty: float) -> float:
    return logprob / (max(length, 1) ** penalty)


@torch.inference_mode()
def beam_search(model: Transformer, prompt: list[int], config: GenerationConfig,
                stop_ids: list[int], timing: Timing, decodable: int | None = None
                ) -> list[Hypothesis]:
    """The config.n best answers to one prompt, best first; `decodable`: ids from this one
    on are never chosen (the tokenizer cannot decode them)."""
    nb = config.num_beams
    t0 = time.perf_counter()
    timing.prompt_tokens += len(prompt)
    ids, source = prompt_ids(model, prompt)  # encoder-decoder: the prompt is the source
    cache = cache_for(model, nb, len(ids), config.max_tokens,
                      len(source) if source else None)
    slots = [cache.allocate() for _ in range(nb)]
    logits = Batch(model, cache).prefill(slots[0], prompt)[None].expand(nb, -1)
    for s in slots[1:]:
        cache.copy(slots[0], s)
    prompt = ids
    timing.prefill_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    chain = build_processors(config, logits.shape[-1], stop_ids)
    if decodable is not None and decodable < logits.shape[-1]:
        chain.append(mask_from(decodable))
    state = DecodeState.start([prompt] * nb, logits.shape[-1])
    # only the first beam is live at the start: the others are copies of it
    scores = torch.tensor([0.0] + [float("-inf")] * (nb - 1))
    finished: list[Hypothesis] = []
    stops = set(stop_ids)
    for step in range(config.max_tokens):
        logprobs = process(logits.clone(), chain, state).log_softmax(dim=-1)
        flat = (scores[:, None] + logprobs).flatten()
        top = torch.topk(flat, 2 * nb)
        vocab = logprobs.shape[-1]
        sources, tokens, new_scores = [], [], []
        for value, index in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            beam, tok = divmod(index, vocab)
            generated = state.sequences[beam][state.n_prompt[beam]:] + [tok]
            if tok in stops:
                finished.append(Hypothesis(generated, _score(value, len(generated),
                                                             config.length_penalty), True))
            else:
                sources.append(beam)
                tokens.append(tok)
                new_scores.append(value)
            if len(sources) == nb:
                break
        finished = sorted(finished, key=lambda h: -h.score)[:nb]
        best_running = _score(max(new_scores), step + 1, config.length_penalty)
        if len(finished) == nb and finished[-1].score >= best_running:
            break
        if step == config.max_tokens - 1 or cache.lengths[slots[0]] >= cache.max_len:
            for beam, tok, value in zip(sources, tokens, new_scores, strict=True):
                generated = state.sequences[beam][state.n_prompt[beam]:] + [tok]
                finished.append(Hypothesis(generated, _score(value, len(generated),
                                                             config.length_penalty), False))
            break
        cache.reorder(slots, sources)
        state = state.select(sources)
        state.append(tokens)
        scores = torch.tensor(new_scores)
        logits = decode_step(model, cache, slots, tokens)
        timing.generated_tokens += nb
    timing.decode_s += time.perf_counter() - t0
    return sorted(finished, key=lambda h: -h.score)[: config.n]


def beam_answers(model: Transformer, tokenizer: Tokenizer, prompt: list[int],
                 config: GenerationConfig, timing: Timing
                 ) -> list[tuple[str, Hypothesis, str]]:
    """(text, hypothesis, finish reason) of the config.n best answers: the text ends at the
    first stop string (reason "stop", as a stop token), else at max_tokens ("length")."""
    stop_ids = tokenizer.stop_token_ids
    out = []
    for hyp in beam_search(model, prompt, config, stop_ids, timing, tokenizer.vocab_size):
        stream, text, stopped = TextStream(tokenizer, config.stop), "", False
        for t in (t for t in hyp.tokens if t not in stop_ids):
            delta, stopped = stream.push(t)
            text += delta
            if stopped:
                break
        text += "" if stopped else stream.close()
        out.append((text, hyp, "stop" if stopped or hyp.ended else "length"))
    return out
