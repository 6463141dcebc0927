"""Long inputs: sliding-window perplexity, RoPE scaling against transformers, and
generation past the context window (docs/long_context.md)."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from lmforge.cli import build_parser
from lmforge.errors import LmforgeError
from lmforge.eval.perplexity import evaluate, sliding_windows
from lmforge.generate.cache import KVCache
from lmforge.generate.commands import generation_config
from lmforge.generate.config import GenerationConfig
from lmforge.generate.context import fit_context
from lmforge.generate.core import Batch, prefill
from lmforge.generate.engine import Rows, generate_ids
from lmforge.generate.row import RowDecoder
from lmforge.generate.shift import shifted
from lmforge.interop import load_weights
from lmforge.interop.gguf_write import architecture
from lmforge.interop.hf import config_from_hf, hf_config
from lmforge.model.config import ModelConfig
from lmforge.model.rope_scaling import parse_rope_scaling, rope_frequencies, with_rope_scaling
from lmforge.model.transformer import Transformer
from lmforge.score import token_logprobs

# -- sliding-window perplexity ----------------------------------------------------------------


@pytest.mark.parametrize("n,ctx,stride,start", [(10, 4, 4, 1), (10, 4, 2, 1), (101, 16, 5, 1),
                                                (101, 16, 16, 1), (57, 8, 3, 30), (9, 9, 1, 1),
                                                (50, 16, 7, 15)])
def test_every_token_is_scored_exactly_once(n: int, ctx: int, stride: int, start: int) -> None:
    counts = [0] * n
    for begin, first, end in sliding_windows(n, ctx, stride, start):
        assert 0 <= begin < first < end <= begin + ctx <= n + ctx
        if first > max(begin + 1, start):  # after the first window: at least ctx − stride
            assert first - begin >= ctx - stride
        for t in range(first, end):
            counts[t] += 1
    if stride == ctx:  # non-overlapping: each window's first token has no context
        assert counts == [0 if t % ctx == 0 else 1 for t in range(n)]
    else:
        assert counts == [int(t >= start) for t in range(n)]


def tiny_decoder(max_seq_len: int = 64, **kw) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, d_ff=64,
                         max_seq_len=max_seq_len, **kw)
    return Transformer(config).eval()


def test_stride_equal_to_ctx_is_the_non_overlapping_figure() -> None:
    model = tiny_decoder()
    ids = torch.randint(0, 50, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    nll = sum(-token_logprobs(model, ids[s: s + 32]).total() for s in range(0, 150, 32))
    result = evaluate(model, ids, 300, ctx=32)
    assert result.stride == 32 and result.scored == 150 - 5
    assert result.nll == pytest.approx(nll, rel=1e-6)
    assert evaluate(model, ids, 300, ctx=32, stride=32) == result
    overlapped = evaluate(model, ids, 300, ctx=32, stride=8)
    assert overlapped.scored == 149 and overlapped.tokens == 150


def test_a_smaller_stride_lowers_perplexity_on_real_text(smollm2, wikitext_head) -> None:
    text = wikitext_head[:1500]
    ids = smollm2.tokenizer.encode(text)
    apart = evaluate(smollm2.model, ids, len(text.encode()), ctx=64)
    sliding = evaluate(smollm2.model, ids, len(text.encode()), ctx=64, stride=32)
    assert sliding.scored == len(ids) - 1 > apart.scored
    assert sliding.perplexity < apart.perplexity


@pytest.mark.parametrize("ctx,stride,message", [(1, None, "at least 2"), (65, None, "exceeds"),
                                                (32, 0, "between 1"), (32, 33, "between 1")])
def test_bad_windows_are_refused(ctx: int, stride: int | None, message: str) -> None:
    with pytest.raises(LmforgeError, match=message):
        evaluate(tiny_decoder(), list(range(40)), 40, ctx=ctx, stride=stride)


# -- RoPE scaling -----------------------------------------------------------------------------


def transformers_rope(kind: str, factor: float, theta: float, head_dim: int, trained: int
                      ) -> tuple[torch.Tensor, float]:
    """transformers' θ_i and attention factor; NTK-aware is its dynamic rule at s·L, factor 1."""
    size = dict(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim)
    if kind == "ntk":
        config = LlamaConfig(**size, max_position_embeddings=trained, rope_parameters={
            "rope_type": "dynamic", "factor": 1.0, "rope_theta": theta})
        return ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=int(trained * factor))
    params = {"rope_type": kind, "factor": factor, "rope_theta": theta}
    if kind == "yarn":
        params["original_max_position_embeddings"] = trained
    config = LlamaConfig(**size, max_position_embeddings=int(trained * factor),
                         rope_parameters=params)
    return ROPE_INIT_FUNCTIONS[kind](config, "cpu")


@pytest.mark.parametrize("kind", ["linear", "ntk", "yarn"])
@pytest.mark.parametrize("factor", [2.0, 3.5, 8.0])
@pytest.mark.parametrize("theta,head_dim,trained", [(1e4, 64, 64), (1e5, 64, 8192),
                                                    (5e5, 128, 2048)])
def test_rope_scaling_matches_transformers(kind: str, factor: float, theta: float,
                                           head_dim: int, trained: int) -> None:
    base = ModelConfig(vocab_size=8, d_model=2 * head_dim, n_layer=1, n_head=2,
                       head_dim=head_dim, max_seq_len=trained, rope_theta=theta)
    config = with_rope_scaling(base, f"{kind}:{factor:g}")
    assert config.max_seq_len == int(trained * factor)
    inv_freq, attention = rope_frequencies(config)
    ref, ref_attention = transformers_rope(kind, factor, theta, head_dim, trained)
    assert torch.equal(inv_freq, ref)
    assert attention == ref_attention
    if kind == "yarn":
        assert attention == pytest.approx(0.1 * math.log(factor) + 1)


def test_yarn_model_matches_transformers_past_the_trained_window(tmp_path) -> None:
    """A tiny random Llama trained for 32 positions, run on 100 with YaRN ×4: our converted
    model against transformers' LlamaForCausalLM with the same rope_parameters."""
    torch.manual_seed(0)
    size = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6)
    plain = LlamaForCausalLM(LlamaConfig(**size, max_position_embeddings=32)).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    plain.save_pretrained(tmp_path)
    yarn = LlamaForCausalLM(LlamaConfig(**size, max_position_embeddings=128, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
        "rope_theta": 10000.0})).eval()
    yarn.load_state_dict(plain.state_dict())
    yarn.save_pretrained(tmp_path / "yarn")
    config, sd, _, _ = load_weights(tmp_path)
    ids = torch.randint(0, 96, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = yarn(ids).logits[0]
    # scaled at load time, and read from the scaled model's own config.json
    for model_config, state in ((with_rope_scaling(config, "yarn:4"), sd),
                                load_weights(tmp_path / "yarn")[:2]):
        model = Transformer(model_config).eval()
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert (model(ids)[0] - theirs).abs().max() < 1e-4


def test_rope_scaling_round_trips_and_restores() -> None:
    config = with_rope_scaling(tiny_decoder(64).config, "ntk:4")
    assert (config.rope_scaling, config.rope_factor, config.max_seq_len,
            config.rope_original_max_seq_len) == ("ntk", 4.0, 256, 64)
    assert ModelConfig.from_dict(config.to_dict()) == config
    again = with_rope_scaling(config, "yarn:2")  # from the trained window, not from 256
    assert (again.max_seq_len, again.rope_original_max_seq_len) == (128, 64)
    assert with_rope_scaling(config, "none") == tiny_decoder(64).config


def test_none_with_a_factor_extrapolates_plain_rope() -> None:
    trained = tiny_decoder(64).config
    config = with_rope_scaling(trained, "none:4")
    assert (config.max_seq_len, config.rope_original_max_seq_len) == (256, 64)
    inv_freq, attention = rope_frequencies(config)
    assert torch.equal(inv_freq, rope_frequencies(trained)[0]) and attention == 1.0


@pytest.mark.parametrize("spec", ["ntk:4", "none:2"])
def test_hf_export_refuses_a_rope_transformers_cannot_read(spec: str) -> None:
    config = with_rope_scaling(tiny_decoder(64).config, spec)
    with pytest.raises(LmforgeError, match="rope_scaling"):
        hf_config(config, None, torch.float32)


@pytest.mark.parametrize("spec", ["yarn:4", "linear:2", "none:2"])
def test_gguf_export_refuses_a_scaled_rope_rather_than_drop_it(spec: str) -> None:
    with pytest.raises(LmforgeError, match="rope_factor"):
        architecture(with_rope_scaling(tiny_decoder(64).config, spec))


@pytest.mark.parametrize("spec", ["yarn:4", "linear:2.5"])
def test_hf_rope_scaling_round_trips(spec: str) -> None:
    config = with_rope_scaling(tiny_decoder(64).config, spec)
    again = config_from_hf(hf_config(config, None, torch.float32))
    fields = ("rope_scaling", "rope_factor", "rope_original_max_seq_len", "rope_theta",
              "max_seq_len")
    assert [getattr(again, f) for f in fields] == [getattr(config, f) for f in fields]


@pytest.mark.parametrize("params,match", [
    ({"rope_type": "dynamic", "factor": 2.0}, "ntk:S"),
    ({"rope_type": "llama3", "factor": 8.0}, "linear, yarn"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
      "mscale": 0.7, "mscale_all_dim": 0.7}, "mscale"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 16}, "beta_fast"),
])
def test_hf_rope_scalings_we_do_not_compute_are_refused(params: dict, match: str) -> None:
    hf = hf_config(tiny_decoder(64).config, None, torch.float32) | {"rope_scaling": params}
    with pytest.raises(LmforgeError, match=match):
        config_from_hf(hf)


@pytest.mark.parametrize("spec", ["yarn", "yarn:0.5", "rope:2", "linear:x", "none:0.5", ""])
def test_bad_rope_scaling_is_refused(spec: str) -> None:
    with pytest.raises(LmforgeError, match="METHOD:FACTOR"):
        parse_rope_scaling(spec)


def test_rope_scaling_needs_rope() -> None:
    config = tiny_decoder(position="learned").config
    with pytest.raises(LmforgeError, match="needs a RoPE model"):
        with_rope_scaling(config, "linear:2")


# -- generation past the context window -------------------------------------------------------


def shifting(**kw) -> GenerationConfig:
    return GenerationConfig(**{"max_tokens": 100, "temperature": 0.0, "context_shift": True,
                               "n_keep": 4, **kw})


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


@pytest.mark.parametrize("shift", [False, True])
def test_a_tiny_model_writes_past_its_window_only_with_context_shift(shift: bool) -> None:
    model = tiny_decoder(max_seq_len=32)
    config = shifting(context_shift=shift)
    rows = Rows([None])
    tokens = [t for step in generate_ids(model, [PROMPT], config, [], rows) for _, t in step]
    assert len(tokens) == (100 if shift else 32 - len(PROMPT) + 1)
    assert rows.finish_reason == ["length"]


def test_the_shifted_cache_equals_a_fresh_prefill_of_the_kept_tokens() -> None:
    model = tiny_decoder(max_seq_len=32)
    cache = KVCache(model.config, 2, 32)
    batch = Batch(model, cache)
    slot = cache.allocate()
    decoder = RowDecoder(PROMPT, shifting(), [], 50)
    batch.join(slot, decoder, batch.prefill(slot, PROMPT))
    while cache.lengths[slot] < 32:
        batch.step()
    fed = decoder.context[:-1]
    assert fed[:len(PROMPT)] == PROMPT and len(fed) == 32
    batch.shift(batch.rows[slot])
    kept = decoder.context[:-1]
    assert kept == fed[:4] + fed[4 + 14:] == shifted(fed, 4)
    assert cache.lengths[slot] == len(kept) == 18
    fresh = cache.allocate()
    prefill(model, cache, fresh, kept)
    for t in (cache.k, cache.v):
        torch.testing.assert_close(t[:, slot, :, :18], t[:, fresh, :, :18], rtol=0, atol=1e-5)
    batch.step()  # and it goes on from there
    assert cache.lengths[slot] == 19 and decoder.n_generated == 32 - len(PROMPT) + 2


def test_context_shift_lifts_the_window_bound_on_max_tokens() -> None:
    assert fit_context(10, shifting(max_tokens=500), True, 32).max_tokens == 500
    with pytest.raises(LmforgeError, match="lower max_tokens"):
        fit_context(10, shifting(max_tokens=500, context_shift=False), True, 32)
    with pytest.raises(LmforgeError, match="shorten it to at most 31"):
        fit_context(32, shifting(), True, 32)
    with pytest.raises(LmforgeError, match="n_keep=31"):
        fit_context(31, shifting(n_keep=31), True, 32)
    with pytest.raises(LmforgeError, match="needs a decoder"):
        fit_context(10, shifting(), True, 32, encoder_decoder=True)
    with pytest.raises(LmforgeError, match="not beam search"):
        shifting(num_beams=2)


def test_context_shift_needs_a_causal_decoder() -> None:
    model = tiny_decoder(max_seq_len=32, family="prefix")
    with pytest.raises(LmforgeError, match="needs a decoder"):
        list(generate_ids(model, [PROMPT], shifting(), [], Rows([None])))


def test_the_command_line_takes_the_long_context_flags() -> None:
    args = build_parser().parse_args(["generate", "--model", "m", "--prompt", "p",
                                      "--context-shift", "--n-keep", "3",
                                      "--rope-scaling", "yarn:2"])
    config = generation_config(args)
    assert (config.context_shift, config.n_keep, args.rope_scaling) == (True, 3, "yarn:2")
    assert not generation_config(build_parser().parse_args(
        ["generate", "--model", "m", "--prompt", "p"])).context_shift


def test_the_documented_commands_parse() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "long_context.md").read_text()
    commands = re.findall(r"^lmforge ((?:[^\n\\#]|\\\n)+)", doc, flags=re.M)
    assert len(commands) >= 4
    parser = build_parser()
    for command in commands:
        assert callable(parser.parse_args(shlex.split(command.replace("\\\n", " "))).func)
