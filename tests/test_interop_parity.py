"""Our converters against transformers: the same logits through every path.

- SmolLM2: transformers reading the GGUF itself vs transformers reading our HF export
  (needs no lmforge model), our un-permuted Q/K vs transformers' q_proj/k_proj, and
  lmforge's Transformer on the converted weights.
- Tiny random Llama/Mistral models (2 layers, width 32, fp32) through HF → lmforge → HF.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from lmforge.interop import load_gguf, load_weights, save_hf
from lmforge.interop.hf import HF_NAMES
from lmforge.interop.layout import source_name, split
from lmforge.interop.registry import model_path
from lmforge.model.transformer import Transformer
from lmforge.tokenizers import BPETokenizer

PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def smol():
    config, sd, meta = load_gguf(model_path("smollm2"))
    return config, sd, BPETokenizer.from_gguf_metadata(meta)


@pytest.fixture(scope="module")
def exported(smol, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2_hf")
    save_hf(*smol, out)
    return out


@pytest.fixture(scope="module")
def ids(smol) -> torch.Tensor:
    return torch.tensor([smol[2].encode(PROMPT)])


def last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return (out.logits if hasattr(out, "logits") else out)[0, -1].float()


def test_hf_export_matches_transformers_reading_the_gguf(hf_smollm2, exported, ids) -> None:
    ours = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    assert ours.config.rope_parameters["rope_theta"] == 100000.0
    diff = (last_logits(ours, ids) - last_logits(hf_smollm2, ids)).abs().max().item()
    assert diff <= 1e-4


def test_unpermuted_weights_equal_transformers(hf_smollm2, smol) -> None:
    """Every projection, Q and K included, equals transformers' own GGUF conversion."""
    config, sd, _ = smol
    theirs = hf_smollm2.state_dict()
    for part, tensor in split(config, sd).items():
        assert torch.equal(tensor, theirs[source_name(HF_NAMES, part)]), part


def test_lmforge_transformer_matches_transformers(hf_smollm2, smol, ids) -> None:
    config, sd, _ = smol
    model = Transformer(config).eval()
    model.load_state_dict(sd, strict=True)
    diff = (last_logits(model, ids) - last_logits(hf_smollm2, ids)).abs().max().item()
    assert diff <= 1e-4


def test_exported_tokenizer_loads_in_transformers(exported, smol) -> None:
    theirs = AutoTokenizer.from_pretrained(exported)
    text = "Hello, world! <|im_start|>user\n  naïve  café 12345"
    assert theirs.encode(text, add_special_tokens=False) == smol[2].encode(text)


# -- tiny random models: HF → lmforge → HF ---------------------------------------------------

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6)


def tiny_hf_model(cls, config_cls, **kw):
    torch.manual_seed(0)
    model = cls(config_cls(**{**TINY, **kw})).eval()
    with torch.no_grad():  # random norms and biases too, so a wrong mapping cannot hide
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


CASES = {
    "llama-gqa": (LlamaForCausalLM, LlamaConfig, dict(num_key_value_heads=2, rope_theta=5e4)),
    "llama-tied": (LlamaForCausalLM, LlamaConfig, dict(tie_word_embeddings=True)),
    "llama-attn-bias": (LlamaForCausalLM, LlamaConfig, dict(attention_bias=True,
                                                            num_key_value_heads=1)),
    "llama-head-dim": (LlamaForCausalLM, LlamaConfig, dict(head_dim=16)),
    "mistral": (MistralForCausalLM, MistralConfig, dict(num_key_value_heads=2,
                                                       sliding_window=None)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_models_round_trip(case: str, tmp_path: Path) -> None:
    cls, config_cls, kw = CASES[case]
    ref = tiny_hf_model(cls, config_cls, **kw)
    ref.save_pretrained(tmp_path / "src")
    ids = torch.randint(0, TINY["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))

    config, sd, _, _ = load_weights(tmp_path / "src")
    model = Transformer(config).eval()
    model.load_state_dict(sd, strict=True)
    assert (last_logits(model, ids) - last_logits(ref, ids)).abs().max() <= 1e-5

    save_hf(config, sd, None, tmp_path / "back")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    assert torch.equal(last_logits(back, ids), last_logits(ref, ids))
    theirs = back.state_dict()
    for name, tensor in ref.state_dict().items():
        assert torch.equal(theirs[name], tensor), name
