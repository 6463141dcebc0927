"""The generation core's seams on tiny random models: soft prompts go through `prefill`, a
P-Tuning v2 prefix through `Engine` (every family that generates) and through the server's
scheduler, whose prefix reuse keys its slots on the prefix in use as well as the tokens."""

from __future__ import annotations

import threading

import pytest
import torch

from lmforge.generate.cache import KVCache
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import prefill
from lmforge.generate.engine import Engine
from lmforge.model.config import ModelConfig
from lmforge.model.prefix import PrefixKV
from lmforge.model.transformer import Transformer
from lmforge.serve.metrics import Metrics
from lmforge.serve.scheduler import Scheduler, Sequence
from lmforge.tokenizers.char import CharTokenizer

TOK = CharTokenizer.from_text("abcdefgh .", eos="<eos>")
FAMILIES = {
    "decoder": {},
    "prefix": {"family": "prefix"},
    "encoder_decoder": {"family": "encoder_decoder", "position": "relative",
                        "n_encoder_layer": 2},
}


def tiny(family: str) -> Transformer:
    config = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, n_layer=2, n_head=4,
                         n_kv_head=2, d_ff=64, max_seq_len=64, **FAMILIES[family])
    model = Transformer(config)
    model.init_weights(std=0.3, seed=0)
    return model.eval()


@torch.inference_mode()
def test_a_soft_prompt_prefills_like_its_ids():
    model = tiny("decoder")
    ids = TOK.encode("abc de")
    cache = KVCache(model.config, 2, 16)
    a, b = cache.allocate(), cache.allocate()
    by_ids = prefill(model, cache, a, ids, all_logits=True)
    by_embeds = prefill(model, cache, b, [], embeds=model.embed(torch.tensor(ids)),
                        all_logits=True)
    torch.testing.assert_close(by_embeds, by_ids, atol=1e-6, rtol=0)
    assert cache.lengths[a] == cache.lengths[b] == len(ids)


@torch.inference_mode()
def greedy_with_prefix(model: Transformer, prefix: PrefixKV, prompt: list[int], n: int
                       ) -> list[int]:
    """The reference: every token from one pass without a cache through the prefix store,
    stop tokens banned (the runs below set min_tokens to their length)."""
    out: list[int] = []
    source = None
    if model.config.family == "encoder_decoder":
        source, prompt = prompt, [model.config.decoder_start_id]
    memory = None if source is None else model.cross_memory(model.encode(
        torch.tensor([source])))
    for _ in range(n):
        x = torch.tensor([prompt + out])
        kw = {"prefix": torch.tensor([len(prompt)])} if model.config.family == "prefix" else {}
        logits = model(x, cache=prefix.store_for(x, **kw), memory=memory)
        logits[0, -1, TOK.stop_token_ids] = float("-inf")
        out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_generates_after_a_prefix(family):
    model = tiny(family)
    prefix = PrefixKV(model.config, 3, seed=1)
    prompts = [TOK.encode("abc"), TOK.encode("hg fed")]
    config = GenerationConfig(max_tokens=6, min_tokens=6, temperature=0)
    engine = Engine(model, TOK)
    with_prefix: list[list[int]] = [[] for _ in prompts]
    for d in engine.stream(prompts, config, prefix=prefix):
        with_prefix[d.index] += d.token_ids
    assert with_prefix == [greedy_with_prefix(model, prefix, p, 6) for p in prompts]
    plain = [c.token_ids for c in engine.generate(prompts, config)]
    assert with_prefix != plain  # the prefix changes what the model says


def run_scheduler(model: Transformer, seqs: list[Sequence]) -> Scheduler:
    scheduler = Scheduler("tiny", model, TOK, 64, 4, 4, 16, Metrics())
    done = threading.Semaphore(0)
    for s in seqs:
        emit = s.emit
        s.emit = lambda ev, emit=emit: (emit(ev), ev.finish_reason and done.release())
    scheduler.start()
    try:
        for s in seqs:  # one after another: each may reuse what the one before cached
            scheduler.submit([s])
            assert done.acquire(timeout=60)
    finally:
        scheduler.stop()
    return scheduler


def test_scheduler_reuses_slots_only_under_the_same_prefix():
    model = tiny("decoder")
    prefix = PrefixKV(model.config, 3, seed=2)
    prompt = TOK.encode("abc defgh")
    config = GenerationConfig(max_tokens=5, min_tokens=5, temperature=0)
    answers: dict[int, list[int]] = {0: [], 1: [], 2: [], 3: []}

    def seq(i: int, p: PrefixKV | None) -> Sequence:
        return Sequence(i, prompt, config, lambda ev: answers[ev.index].extend(ev.tokens),
                        prefix=p)

    scheduler = run_scheduler(model, [seq(0, prefix), seq(1, None), seq(2, prefix),
                                      seq(3, None)])
    want = greedy_with_prefix(model, prefix, prompt, 5)
    assert answers[0] == answers[2] == want
    plain = [c.token_ids for c in Engine(model, TOK).generate([prompt], config)][0]
    assert answers[1] == answers[3] == plain != want
    reused = scheduler.metrics.get("lmforge_prefix_reused_tokens_total", model="tiny")
    assert reused == 2 * (len(prompt) - 1)  # seqs 2 and 3 reuse their own kind only
