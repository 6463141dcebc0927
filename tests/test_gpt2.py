"""GPT-2 through our converter: random transformers GPT2LMHeadModel weights give the same
logits in lmforge's Transformer (learned positions, LayerNorm, GELU-tanh, biases)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.api import build_model
from lmforge.errors import LmforgeError
from lmforge.interop.load import load_weights


@pytest.mark.parametrize("act,n_inner", [("gelu_new", None), ("relu", 48)])
def test_random_gpt2_logits_match(tmp_path, act, n_inner):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2,
                                    n_head=4, n_inner=n_inner, activation_function=act,
                                    bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path)
    config, state_dict, tokenizer, _ = load_weights(tmp_path)
    assert tokenizer is None and config.mlp == {"gelu_new": "gelu_tanh"}.get(act, act)
    model = build_model(config, state_dict)
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = hf(ids).logits
        ours = model(ids)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_unknown_gpt2_tensor_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1,
                                    n_head=2, bos_token_id=0, eos_token_id=0))
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["transformer.h.0.adapter.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(LmforgeError, match="adapter"):
        load_weights(tmp_path)
