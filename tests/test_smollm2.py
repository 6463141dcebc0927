"""The real SmolLM2-135M GGUF in lmforge agrees with Hugging Face transformers: logits,
greedy tokens, ragged batches, the KV cache, and perplexity in fp32 and bf16."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.eval.perplexity import evaluate
from lmforge.generate.cache import KVCache
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import decode_step, prefill

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "在一个阳光明媚的早晨，小明",
    "Once upon a time, in a land far away, there lived a",
]
NEAR_TIE = 1e-3


def top2_gap(logits: torch.Tensor) -> float:
    top = torch.topk(logits.float(), 2).values
    return (top[0] - top[1]).item()


@torch.inference_mode()
def test_last_position_logits_match_transformers(smollm2, hf_smollm2):
    for text in PROMPTS:
        ids = smollm2.tokenizer.encode(text)
        ours = smollm2.model(torch.tensor([ids]))[0, -1]
        ref = hf_smollm2(torch.tensor([ids])).logits[0, -1]
        assert (ours - ref).abs().max().item() <= 1e-4, text


def first_divergence(ours: list[int], ref: list[int]) -> int | None:
    return next((i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b), None)


@torch.inference_mode()
def test_greedy_tokens_match_transformers_for_32_steps(smollm2, hf_smollm2):
    config = GenerationConfig(max_tokens=32, min_tokens=32, temperature=0)
    for text in PROMPTS[:3]:
        ids = smollm2.tokenizer.encode(text)
        ours = smollm2.engine.generate([ids], config)[0].token_ids
        ref = hf_smollm2.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32,
                                  do_sample=False, pad_token_id=2)[0, len(ids):].tolist()
        at = first_divergence(ours, ref)
        if at is not None:  # allowed only where the reference itself is at a near-tie
            logits = hf_smollm2(torch.tensor([ids + ref[:at]])).logits[0, -1]
            assert top2_gap(logits) < NEAR_TIE, (text, at)
        assert len(ours) == 32


@torch.inference_mode()
def test_cached_equals_uncached(smollm2):
    ids = smollm2.tokenizer.encode(PROMPTS[3])
    model = smollm2.model
    full = model(torch.tensor([ids]))[0]
    cache = KVCache(model.config, 1, 64)
    slot = cache.allocate()
    prefill(model, cache, slot, ids[:5])
    steps = [decode_step(model, cache, [slot], [t])[0] for t in ids[5:]]
    assert (torch.stack(steps) - full[5:]).abs().max().item() <= 1e-4


def decode_rows(model, prompts: list[list[int]], forced: list[list[int]] | None, batched: bool,
                steps: int) -> tuple[torch.Tensor, list[list[int]]]:
    """Logits (steps, rows, vocab) of greedy decoding, all rows in one ragged batch or each
    alone; `forced` replays given tokens instead of the argmax."""
    cache = KVCache(model.config, len(prompts), 128)
    slots = [cache.allocate() for _ in prompts]
    logits = torch.stack([prefill(model, cache, s, p) for s, p in zip(slots, prompts,
                                                                       strict=True)])
    out, chosen = [], [[] for _ in prompts]
    for step in range(steps):
        tokens = [f[step] for f in forced] if forced else logits.argmax(-1).tolist()
        for row, t in enumerate(tokens):
            chosen[row].append(t)
        if batched:
            logits = decode_step(model, cache, slots, tokens)
        else:
            logits = torch.cat([decode_step(model, cache, [s], [t]) for s, t in zip(
                slots, tokens, strict=True)])
        out.append(logits)
    return torch.stack(out), chosen


@torch.inference_mode()
def test_ragged_batch_rows_equal_rows_alone(smollm2):
    """Rows of different lengths decode together; each row's logits equal the row decoded
    alone within 1e-4, and greedy tokens agree up to the first near-tie."""
    model, tok = smollm2.model, smollm2.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    batched, chosen = decode_rows(model, prompts, None, batched=True, steps=12)
    alone, _ = decode_rows(model, prompts, chosen, batched=False, steps=12)
    assert (batched - alone).abs().max().item() <= 1e-4
    for row in range(len(prompts)):
        for step in range(11):
            if alone[step, row].argmax().item() != chosen[row][step + 1]:
                assert top2_gap(alone[step, row]) < NEAR_TIE
                break


@torch.inference_mode()
def test_engine_batch_equals_single_greedy(smollm2):
    tok = smollm2.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    config = GenerationConfig(max_tokens=16, temperature=0)
    batched = smollm2.engine.generate(prompts, config)
    for ids, b in zip(prompts, batched, strict=True):
        single = smollm2.engine.generate([ids], config)[0]
        at = first_divergence(b.token_ids, single.token_ids)
        if at is not None:
            logits = smollm2.model(torch.tensor([ids + single.token_ids[:at]]))[0, -1]
            assert top2_gap(logits) < NEAR_TIE


@torch.inference_mode()
def reference_nll(hf, ids: list[int], ctx: int) -> tuple[float, int]:
    """transformers computing the same windows: every token but each window's first."""
    nll, n = 0.0, 0
    for start in range(0, len(ids), ctx):
        window = torch.tensor([ids[start: start + ctx]])
        if window.shape[1] < 2:
            continue
        logits = hf(window).logits[0].float()
        nll += F.cross_entropy(logits[:-1], window[0, 1:], reduction="sum").item()
        n += window.shape[1] - 1
    return nll, n


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_perplexity_matches_transformers(smollm2, hf_smollm2, wikitext_head, dtype, tolerance):
    ids = smollm2.tokenizer.encode(wikitext_head, parse_special=False)
    n_bytes = len(wikitext_head.encode("utf-8"))
    # copies: casting the shared fp32 models down and back would change their weights
    model, hf = (copy.deepcopy(m).to(dtype) for m in (smollm2.model, hf_smollm2))
    ours = evaluate(model, ids, n_bytes, ctx=1024)
    nll, n = reference_nll(hf, ids, 1024)
    ref_ppl = math.exp(nll / n)
    assert ours.scored == n == len(ids) - math.ceil(len(ids) / 1024)
    assert abs(ours.perplexity / ref_ppl - 1) <= tolerance, (ours.perplexity, ref_ppl)
    if dtype == torch.float32:
        assert len(ids) == 4871 and abs(ours.perplexity - 23.23) < 0.05
