"""GPTQ over a whole model (`compress.gptq.gptq_weights`): one QuantizedWeight per projection
of the blocks, block i calibrated on the outputs of the already-quantized block i − 1, the
model left as it was; calibration windows (`compress.calibrate.calibration_batches`)."""

from __future__ import annotations

import pytest
import torch

from lmforge.compress.calibrate import calibration_batches
from lmforge.compress.gptq import gptq_quantize, gptq_weights
from lmforge.compress.schemes import Scheme
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.surgery import projections
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.char import CharTokenizer

SCHEME = Scheme.parse("int4-g32")


def tiny(**overrides) -> Transformer:
    config = ModelConfig(**{**dict(vocab_size=61, d_model=64, n_layer=2, n_head=4,
                                   n_kv_head=2, d_ff=96, max_seq_len=64), **overrides})
    model = Transformer(config)
    model.init_weights(std=0.3, seed=0)
    return model.eval()


def batches(n: int = 3, seq_len: int = 24) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 61, (2, seq_len), generator=gen) for _ in range(n)]


def block_hessian(model: Transformer, name: str, data: list[torch.Tensor]) -> torch.Tensor:
    """2XXᵀ / n of the inputs of projection `name` over full forward passes of `model`."""
    xs = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda m, args, out: xs.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for ids in data:
            model.hidden(ids)
    handle.remove()
    x = torch.cat(xs)
    return 2 * x.T @ x / x.shape[0]


def test_one_weight_per_block_projection_with_its_shapes():
    model = tiny(tie_embeddings=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = gptq_weights(model, SCHEME, batches(), progress=False)
    names = projections(model)
    assert list(result) == [n for n in names if n.startswith("layers.")]
    assert "lm_head" in names and "lm_head" not in result  # the head stays in full precision
    for name, q in result.items():
        w = names[name].weight
        assert q.codes.shape == w.shape and q.codes.dtype == torch.uint8
        assert q.scale.shape == q.zero.shape == (w.shape[0], w.shape[1] // 32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_blocks_are_calibrated_sequentially():
    model, data = tiny(), batches()
    result = gptq_weights(model, SCHEME, data, progress=False)
    # block 0 sees the model's own embeddings
    first = gptq_quantize(model.layers[0].attn.qkv.weight,
                          block_hessian(model, "layers.0.attn.qkv", data), SCHEME)
    assert (first.codes == result["layers.0.attn.qkv"].codes).float().mean() > 0.999
    # block 1 sees what block 0 outputs with its quantized weights
    with torch.no_grad():
        for name, q in result.items():
            if name.startswith("layers.0."):
                model.get_submodule(name).weight.copy_(q.dequantize())
    second = gptq_quantize(model.layers[1].ffn.down.weight,
                           block_hessian(model, "layers.1.ffn.down", data), SCHEME)
    assert (second.codes == result["layers.1.ffn.down"].codes).float().mean() > 0.999


def test_quantized_model_stays_close_to_the_original():
    model, data = tiny(), batches()
    with torch.no_grad():
        reference = model(data[0])
    result = gptq_weights(model, Scheme.parse("int8"), data, progress=False)
    with torch.no_grad():
        for name, q in result.items():
            model.get_submodule(name).weight.copy_(q.dequantize())
        quantized = model(data[0])
    assert torch.allclose(quantized, reference, atol=0.05 * reference.abs().max().item())


def test_model_errors():
    with pytest.raises(LmforgeError, match="not fp8-e5m2"):
        gptq_weights(tiny(), "fp8-e5m2", batches(), progress=False)
    with pytest.raises(LmforgeError, match="calibration batches"):
        gptq_weights(tiny(), SCHEME, [], progress=False)
    with pytest.raises(LmforgeError, match="are token ids"):
        gptq_weights(tiny(), SCHEME, [torch.randn(2, 8, 64)], progress=False)
    with pytest.raises(LmforgeError, match="encoder-decoder"):
        gptq_weights(tiny(family="encoder_decoder", position="relative"), SCHEME, batches(),
                     progress=False)


TEXT = " ".join(f"word{i % 37} line{i % 11}" + ("\n" if i % 9 == 0 else "")
                for i in range(3000))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_calibration_windows_are_seeded_word_aligned_slices(text_file):
    tok = CharTokenizer.from_text(TEXT)
    a = calibration_batches(tok, text_file, n_samples=6, seq_len=40, seed=3)
    assert len(a) == 6 and all(t.shape == (1, 40) and t.dtype == torch.long for t in a)
    b = calibration_batches(tok, text_file, n_samples=6, seq_len=40, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = calibration_batches(tok, text_file, n_samples=6, seq_len=40, seed=4)
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    starts = set()
    for t in a:
        window = tok.decode(t[0].tolist())
        start = TEXT.find(window)
        assert start >= 0  # a contiguous piece of the text
        assert start == 0 or TEXT[start - 1].isspace()  # cut at a word boundary
        starts.add(start)
    assert len(starts) > 1


def test_calibration_errors(text_file, tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    with pytest.raises(LmforgeError, match="cannot read"):
        calibration_batches(tok, tmp_path / "missing.txt")
    with pytest.raises(LmforgeError, match="not more than seq_len"):
        calibration_batches(tok, text_file, n_samples=1, seq_len=len(TEXT))
    with pytest.raises(LmforgeError, match="must be ≥ 1"):
        calibration_batches(tok, text_file, n_samples=0)
