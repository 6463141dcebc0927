"""T5 through our converter: random transformers T5ForConditionalGeneration weights give the
same logits and the same greedy output in lmforge's encoder-decoder (relative position bias,
RMSNorm, ReLU or GELU-tanh GeGLU, cross-attention cached during generation)."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from lmforge.api import build_model
from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Rows, generate_ids
from lmforge.interop.load import load_weights

VARIANTS = {"t5-relu-tied": ("relu", True), "t5.1.1-gated-gelu": ("gated-gelu", False)}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def pair(request, tmp_path_factory):
    proj, tied = VARIANTS[request.param]
    torch.manual_seed(0)
    hf = T5ForConditionalGeneration(T5Config(
        vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj=proj, tie_word_embeddings=tied, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1)).eval()
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    config, state_dict, _, _ = load_weights(d)
    return hf, build_model(config, state_dict)


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(2, 120, (2, 30), generator=gen)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 19:] = 0  # right padding in the second source
    return src, mask, torch.randint(2, 120, (2, 12), generator=gen)


def test_config_is_t5(pair):
    _, model = pair
    c = model.config
    assert (c.family, c.position, c.norm, c.scale_attention) == (
        "encoder_decoder", "relative", "rmsnorm", False)
    assert (c.encoder_layers, c.n_layer) == (2, 3)


def test_logits_match_transformers(pair):
    hf, model = pair
    src, mask, dec = batch()
    with torch.inference_mode():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        ours = model(dec, memory=model.encode(src, mask), memory_mask=mask)
        enc_ref = hf.encoder(input_ids=src, attention_mask=mask).last_hidden_state
        enc = model.encode(src, mask)
    assert (enc - enc_ref)[mask.bool()].abs().max().item() <= 1e-4
    assert (ours - ref).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(pair):
    hf, model = pair
    src, mask, _ = batch(seed=3)
    prompts = [src[0].tolist(), src[1, :19].tolist()]
    with torch.inference_mode():
        ref = hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=10,
                          min_new_tokens=10, do_sample=False, num_beams=1,
                          use_cache=False)  # their cache assumes equal stack depths
    config = GenerationConfig(max_tokens=10, temperature=0)
    out = [[] for _ in prompts]
    for step in generate_ids(model, prompts, config, [], Rows([None, None])):
        for row, tok in step:
            out[row].append(tok)
    assert out == ref[:, 1:].tolist()  # theirs starts with the decoder start token


def test_cached_decode_equals_one_pass(pair):
    """Each decode step reads the cached cross-attention K/V; logits equal a full pass."""
    from lmforge.generate.cache import KVCache

    _, model = pair
    src, mask, dec = batch()
    with torch.inference_mode():
        full = model(dec, memory=model.encode(src, mask), memory_mask=mask)
        memory = model.cross_memory(model.encode(src, mask), mask)
        cache = KVCache(model.config, 2, 16)
        slots = [cache.allocate(), cache.allocate()]
        steps = [model(dec[:, t: t + 1], cache=cache.step(slots), memory=memory)
                 for t in range(dec.shape[1])]
    # fp32 kernels sum in a different order per shape: compare relative to the logits' scale
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_decoder_needs_an_encoder_output(pair):
    _, model = pair
    with pytest.raises(LmforgeError, match="memory=model.encode"):
        model(torch.tensor([[0, 5]]))


def test_unsupported_activation_is_named(tmp_path):
    import json

    from lmforge.interop.t5 import config_from_t5

    hf = {"vocab_size": 8, "d_model": 8, "num_layers": 1, "num_heads": 2, "d_kv": 4,
          "d_ff": 8, "feed_forward_proj": "gated-relu"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(LmforgeError, match="gated-relu"):
        config_from_t5(hf)
