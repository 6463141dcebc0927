"""Quantized models on a tiny random decoder (2 layers, width 64, SmolLM2's tokenizer):
`quantize_model` replaces every projection but the skipped ones, precomputed (GPTQ) weights
are installed as given, a quantized checkpoint saves and loads with the same logits in
`lmforge.load`, `generate` and `eval`, compiled decoding agrees with eager, and LoRA trains
on a frozen quantized base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lmforge
from lmforge.adapt.finetune import finetune
from lmforge.cli import main
from lmforge.compress.checkpoint import save_quantized
from lmforge.compress.linear import QuantLinear
from lmforge.compress.quantize import Quantization, quantize_model, quantized_layers
from lmforge.compress.schemes import Scheme, rtn
from lmforge.errors import LmforgeError
from lmforge.generate.compiled import compile_decode
from lmforge.generate.config import GenerationConfig
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.linear import Linear
from lmforge.model.surgery import projections
from lmforge.model.transformer import Transformer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
IDS = torch.tensor([[1, 17, 400, 9, 3000, 25, 7]])
SCHEMES = ("int8", "w8a8", "int8-g32", "int4-g32", "fp8-e4m3", "fp8-e5m2-tensor")


@pytest.fixture(scope="module")
def tok():
    return load_weights("smollm2")[2]


def tiny(tok, tie: bool = True) -> Transformer:
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layer=2, n_head=4,
                         n_kv_head=2, d_ff=128, max_seq_len=128, tie_embeddings=tie)
    model = Transformer(config)
    model.init_weights(std=0.2, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def quantized_dirs(tok, tmp_path_factory) -> dict[str, Path]:
    """The tiny model saved in float, and quantized to each scheme."""
    root = tmp_path_factory.mktemp("quant")
    model = tiny(tok)
    save_checkpoint(root / "float", model.config, model.state_dict(), tok)
    dirs = {"float": root / "float"}
    for name in SCHEMES:
        model = tiny(tok)
        record = quantize_model(model, name)
        save_quantized(root / name, model, tok, record)
        dirs[name] = root / name
    return dirs


def logits(model: Transformer) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


def test_every_projection_but_the_skipped_head_is_replaced(tok) -> None:
    model = tiny(tok, tie=False)
    names = list(projections(model))
    record = quantize_model(model, "int4-g64")
    layers = quantized_layers(model)
    assert sorted(layers) == sorted(n for n in names if n != "lm_head")
    assert isinstance(model.lm_head, Linear) and model.embed.weight.dtype == torch.float32
    assert layers["layers.0.attn.qkv"].slices == {"q": slice(0, 64), "k": slice(64, 96),
                                                  "v": slice(96, 128)}
    assert record.to_dict() == {"scheme": "int4-g64", "method": "rtn",
                                "skip": ["lm_head", "ffn.router", "ffn.noise"],
                                "group_size": 64, "calibration": None, "head": False}
    model = tiny(tok, tie=False)
    quantize_model(model, "int8", skip=["lm_head", "ffn.down"])
    assert not any(n.endswith("ffn.down") for n in quantized_layers(model))


def test_moe_experts_are_quantized_and_the_router_is_not() -> None:
    config = ModelConfig(vocab_size=64, d_model=64, n_layer=2, n_head=4, d_ff=64,
                         max_seq_len=32, moe_experts=4, moe_k=2)
    model = Transformer(config)
    model.init_weights(std=0.2, seed=0)
    model.eval()
    ids = torch.tensor([[1, 7, 40, 9, 30, 25]])
    with torch.no_grad():
        before = model(ids)
        quantize_model(model, "int8")
        after = model(ids)
    layers = quantized_layers(model)
    assert "layers.0.ffn.experts.3.up" in layers
    assert not any("router" in n or "noise" in n for n in layers)
    assert (after - before).abs().max() < 0.1 * before.abs().max()


def test_precomputed_weights_are_installed_as_given(tok) -> None:
    """method gptq installs `weights` ({projection name: QuantizedWeight}) unchanged: given
    round-to-nearest weights, the model equals the rtn one."""
    scheme = Scheme.parse("int4-g32")
    model = tiny(tok)
    weights = {n: rtn(scheme, m.weight.detach()) for n, m in projections(model).items()}
    quantize_model(model, scheme, method="gptq", weights=weights)
    reference = tiny(tok)
    quantize_model(reference, scheme)
    assert torch.equal(logits(model), logits(reference))
    with pytest.raises(LmforgeError, match="no entry for layers.0.attn.out"):
        quantize_model(tiny(tok), scheme, "gptq", {"layers.0.attn.qkv": weights[
            "layers.0.attn.qkv"]})


@pytest.mark.parametrize("call, message", [
    (lambda m: quantize_model(m, "int5"), "unknown quantization scheme 'int5'"),
    (lambda m: quantize_model(m, "int8", method="awq"), "unknown quantization method"),
    (lambda m: quantize_model(m, "int8", method="gptq"), "pass weights="),
    (lambda m: quantize_model(m, "int8", weights={}), "method 'rtn' computes its own"),
    (lambda m: quantize_model(m, "int8", skip=["*"]), "no projection matched"),
])
def test_clear_errors(tok, call, message: str) -> None:
    with pytest.raises(LmforgeError, match=message):
        call(tiny(tok))


def test_quantizing_a_quantized_model_is_refused(tok) -> None:
    model = tiny(tok)
    quantize_model(model, "int8")
    with pytest.raises(LmforgeError, match="not a linear layer with a float weight"):
        quantize_model(model, "int4-g32")


@pytest.mark.parametrize("name", SCHEMES)
def test_checkpoint_loads_with_the_same_logits(quantized_dirs, tok, name: str) -> None:
    model = tiny(tok)
    quantize_model(model, name)
    lm = lmforge.load(str(quantized_dirs[name]))
    assert torch.equal(logits(lm.model), logits(model))
    layer = lm.model.layers[1].ffn.up
    assert isinstance(layer, QuantLinear) and layer.scheme.name == name
    assert layer.kernel == model.layers[1].ffn.up.kernel
    config = json.loads((quantized_dirs[name] / "config.json").read_text())
    assert config["quantization"]["scheme"] == name and config["format"] == "lmforge/1"
    bf16 = lmforge.load(str(quantized_dirs[name]), dtype="bf16")
    assert bf16.model.layers[0].attn.qkv.stored_codes().dtype == layer.stored_codes().dtype
    close = (logits(bf16.model) - logits(model)).abs().max() / logits(model).abs().max()
    assert close < 0.05


@pytest.mark.parametrize("name", SCHEMES)
def test_save_load_save_writes_the_same_bytes(quantized_dirs, tmp_path, name: str) -> None:
    """An int4 layer holds only the kernel's layout; saving recovers the stored codes."""
    lm = lmforge.load(str(quantized_dirs[name]))
    if name.startswith("int4"):
        assert not any(n.endswith(".codes") for n, _ in lm.model.named_buffers())
    save_quantized(tmp_path / "again", lm.model, lm.tokenizer,
                   Quantization.from_dict(lm.metadata["quantization"]))
    again = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert again == (quantized_dirs[name] / "model.safetensors").read_bytes()
    assert torch.equal(logits(lmforge.load(str(tmp_path / "again")).model), logits(lm.model))


def test_checkpoint_holds_packed_codes_and_scales(quantized_dirs) -> None:
    def tensors(directory: Path) -> dict[str, torch.Tensor]:
        with safe_open(directory / "model.safetensors", "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    def projection_bytes(directory: Path) -> int:
        return sum(t.numel() * t.element_size() for k, t in tensors(directory).items()
                   if k.startswith("layers.") and "norm" not in k)

    stored = tensors(quantized_dirs["int4-g32"])
    assert stored["layers.0.attn.qkv.codes"].dtype == torch.uint8
    assert stored["layers.0.attn.qkv.codes"].shape == (128, 32)  # two codes per byte
    assert "layers.0.attn.qkv.weight" not in stored
    shapes = [t.shape for k, t in tensors(quantized_dirs["float"]).items()
              if k.startswith("layers.") and "norm" not in k]
    full = sum(4 * out * cols for out, cols in shapes)
    # int8: a byte per weight + an fp32 scale per row; int4-g32: ½ byte per weight + an
    # fp32 scale and zero per 32 weights (~1/4 and ~3/16 of fp32 at any width)
    assert projection_bytes(quantized_dirs["int8"]) == sum(out * cols + 4 * out
                                                           for out, cols in shapes)
    assert projection_bytes(quantized_dirs["int4-g32"]) == sum(out * cols // 2 + out * cols // 4
                                                               for out, cols in shapes)
    assert projection_bytes(quantized_dirs["int4-g32"]) / full == 0.1875


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_and_eval_load_a_quantized_directory(quantized_dirs, capsys) -> None:
    d = str(quantized_dirs["int4-g32"])
    code, out, _ = run_cli(capsys, "generate", "--model", d, "--prompt", "Hello",
                           "--max-tokens", "6", "--temperature", "0")
    lm = lmforge.load(d)
    api = lm.engine.generate([lm.tokenizer.encode("Hello")],
                             GenerationConfig(max_tokens=6, temperature=0))[0].text
    assert code == 0 and out == api + "\n"
    code, out, _ = run_cli(capsys, "eval", "--model", d, "--input",
                           str(DATA / "wikitext-2" / "test.txt"), "--chars", "1500",
                           "--ctx", "64", "--json")
    assert code == 0 and json.loads(out)["perplexity"] > 1
    # no --ctx: the model's own window (128 here), not the 1,024 default it could not hold
    code, out, _ = run_cli(capsys, "eval", "--model", d, "--input",
                           str(DATA / "wikitext-2" / "test.txt"), "--chars", "1500", "--json")
    assert code == 0 and json.loads(out)["ctx"] == 128


def test_damaged_quantized_checkpoint_is_named(quantized_dirs, tmp_path) -> None:
    damaged = shutil.copytree(quantized_dirs["float"], tmp_path / "damaged")
    config = json.loads((damaged / "config.json").read_text())
    config["quantization"] = {"scheme": "int8", "method": "rtn"}
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmforgeError, match="no quantized weights"):
        lmforge.load(str(damaged))
    config["quantization"] = {"scheme": "int8", "bits": 8}
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmforgeError, match=r"unknown keys \['bits'\]"):
        lmforge.load(str(damaged))


def test_lora_trains_on_a_frozen_quantized_base(quantized_dirs, tmp_path) -> None:
    d = str(quantized_dirs["int4-g32"])
    sst2 = DATA / "sst2"
    for split, n in (("train", 16), ("dev", 8)):
        lines = (sst2 / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines[:n + 1]) + "\n")
    r = finetune(d, "lora", "seqcls", tmp_path / "train.tsv",
                 {"eval_data": str(tmp_path / "dev.tsv"), "out_dir": str(tmp_path / "run"),
                  "max_steps": 2, "eval_every": 2, "eval_batches": 1, "log_every": 1,
                  "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "max_len": 24, "r": 4,
                  "alpha": 8, "targets": "all-linear"}, progress=False)
    assert 0 < r.trainable < r.total
    lm = lmforge.load(d, adapter=r.run_dir / "adapter")
    wrapped = lm.model.layers[0].attn.qkv
    assert isinstance(wrapped.base, QuantLinear)
    assert any(b.abs().sum() > 0 for b in wrapped.lora_B.values())  # one step moved B


@pytest.mark.slow
def test_compiled_decoding_equals_eager(quantized_dirs) -> None:
    """Inductor compiles the int8 and w8a8 products (tens of seconds on two cores)."""
    config = GenerationConfig(max_tokens=8, temperature=0)
    for name in ("int8", "w8a8", "int4-g32"):
        lm = lmforge.load(str(quantized_dirs[name]))
        eager = lm.engine.generate([[1, 17, 400]], config)[0].token_ids
        compile_decode(lm.model)
        assert lm.engine.generate([[1, 17, 400]], config)[0].token_ids == eager
