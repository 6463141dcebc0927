"""LoRA (adapt/lora.py, adapt/lora_format.py) and the adapter directory (adapt/adapter.py) on
tiny random Llama models (2 layers, width 32, fp32): a fresh adapter changes nothing, the base
stays bit-identical, merge = unmerged, and PEFT reads our adapters and we read PEFT's on the
Hugging Face model that our converter writes, with the same logits."""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path

import peft
import pytest
import torch
from transformers import LlamaForCausalLM

import lmforge
from lmforge.adapt.adapter import CONFIG_FILE, AdapterBase, load_adapter, save_adapter
from lmforge.adapt.lora import (
    TRAINABLE_PATTERNS,
    LoraConfig,
    attach_lora,
    lora_state_dict,
    merge_lora,
    remove_lora,
    unmerge_lora,
)
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.hf import save_hf
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers.char import CharTokenizer
from lmforge.train.base import freeze

TOKENIZER = CharTokenizer.from_text(string.ascii_lowercase + " ")
IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]])
ALL = ("all-linear", "lm_head")  # every projection: q, k, v inside qkv, gate and up inside up


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=TOKENIZER.vocab_size, d_model=32, n_layer=2,
                                 n_head=4, n_kv_head=2, d_ff=48, max_seq_len=32,
                                 tie_embeddings=False), **overrides})


def tiny(seed: int = 0, **overrides) -> Transformer:
    model = Transformer(tiny_config(**overrides))
    model.init_weights(std=0.2, seed=seed)
    return model.eval()


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Nonzero A and B, so the adapter changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_state_dict(model).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS)
    return (out.logits if hasattr(out, "logits") else out).float()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """The tiny model as an lmforge checkpoint and as the Hugging Face directory of
    `lmforge convert --to hf`, and a second model of the same shape (another base)."""
    root = tmp_path_factory.mktemp("lora")
    model = tiny()
    save_checkpoint(root / "ckpt", model.config, model.state_dict(), TOKENIZER)
    other = tiny(seed=7)
    save_checkpoint(root / "other", other.config, other.state_dict(), TOKENIZER)
    save_hf(model.config, model.state_dict(), None, root / "hf")
    _, sd, _, _ = load_weights(root / "ckpt")
    return {"root": root, "ckpt": str(root / "ckpt"), "other": str(root / "other"),
            "hf": root / "hf", "base": AdapterBase(str(root / "ckpt"), content_hash(sd))}


def test_fresh_adapter_changes_no_output() -> None:
    model = tiny()
    before = logits(model)
    attach_lora(model, LoraConfig(r=4, targets=ALL))
    assert torch.equal(logits(model), before)  # B = 0: the update adds exact zeros


def test_only_lora_trains_and_the_base_stays_bit_identical() -> None:
    model = tiny()
    original = {n: t.clone() for n, t in model.state_dict().items()}
    names = attach_lora(model, LoraConfig(r=4, alpha=8, dropout=0.1, targets=("q_proj",
                                                                              "v_proj")))
    assert names == sorted(names, key=list(dict(model.named_parameters())).index)
    assert names == [f"layers.{i}.attn.qkv.lora_{k}.{p}" for i in range(2) for k in "AB"
                     for p in "qv"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == names
    # train.trainable's patterns select exactly these (lmforge train on a frozen base)
    assert list(freeze(model, list(TRAINABLE_PATTERNS), "tiny")) == names
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(IDS).flatten(0, 1), IDS.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.abs().sum() > 0 for n, p in lora_state_dict(model).items() if "lora_B" in n)
    remove_lora(model)
    after = model.state_dict()
    assert list(after) == list(original)
    assert all(torch.equal(after[n], t) for n, t in original.items())


def test_merge_equals_unmerged_and_unmerge_restores_the_base() -> None:
    model = tiny()
    weights = {n: t.clone() for n, t in model.state_dict().items()}
    attach_lora(model, LoraConfig(r=4, alpha=8, targets=ALL))
    randomize(model)
    unmerged = logits(model)
    assert (unmerged - logits(tiny())).abs().max() > 1e-2  # the adapter does something
    merge_lora(model)
    assert (logits(model) - unmerged).abs().max() <= 1e-5
    qkv = model.layers[0].attn.qkv
    assert not torch.equal(qkv.base.weight, weights["layers.0.attn.qkv.weight"])
    unmerge_lora(model)
    assert (logits(model) - unmerged).abs().max() <= 1e-5
    for name, t in model.state_dict().items():
        if ".base." in name:  # within fp32 rounding of W + Δ − Δ
            torch.testing.assert_close(t, weights[name.replace(".base.", ".")], rtol=0,
                                       atol=1e-6)
    remove_lora(model, merge=True)  # PEFT's merge_and_unload: a plain model again
    assert set(model.state_dict()) == set(weights)
    assert (logits(model) - unmerged).abs().max() <= 1e-5


def test_q_and_v_slices_leave_k_rows_untouched() -> None:
    model = tiny()
    k_rows = model.layers[1].attn.qkv.slices["k"]
    k = model.layers[1].attn.qkv.weight[k_rows].clone()
    attach_lora(model, LoraConfig(r=2, targets=("layers.1.attn.qkv.q", "v_proj")))
    randomize(model)
    merge_lora(model)
    assert torch.equal(model.layers[1].attn.qkv.base.weight[k_rows], k)
    assert model.layers[1].attn.qkv.parts == ("q", "v")
    assert model.layers[0].attn.qkv.parts == ("v",)


def test_targets_that_match_nothing_are_refused() -> None:
    with pytest.raises(LmforgeError, match="'v_prj' matches no projection"):
        attach_lora(tiny(), LoraConfig(targets=("q_proj", "v_prj")))
    model = tiny()
    attach_lora(model, LoraConfig(targets=("q_proj",)))
    with pytest.raises(LmforgeError, match="already has LoRA"):
        attach_lora(model, LoraConfig(targets=("v_proj",)))


def test_peft_reads_our_adapter_with_the_same_logits(base, tmp_path) -> None:
    model = tiny()
    attach_lora(model, LoraConfig(r=4, alpha=8, targets=ALL))
    randomize(model)
    save_adapter(tmp_path / "ours", model, "lora", base["base"])
    config = json.loads((tmp_path / "ours" / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["lmforge"]["base_hash"].startswith("sha256:")
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                        "up_proj", "v_proj", "lm_head"]
    hf = LlamaForCausalLM.from_pretrained(base["hf"], dtype=torch.float32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft names our "lmforge" key, which it ignores
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    assert (logits(theirs) - logits(model)).abs().max() <= 1e-4


def test_we_read_an_adapter_peft_trained(base, tmp_path) -> None:
    hf = LlamaForCausalLM.from_pretrained(base["hf"], dtype=torch.float32).eval()
    torch.manual_seed(3)  # init_lora_weights=False: random A and B (an update that shows)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False, use_rslora=True)).eval()
    theirs.save_pretrained(tmp_path / "peft")
    lm = lmforge.load(base["ckpt"], adapter=tmp_path / "peft")
    assert (logits(lm.model) - logits(theirs)).abs().max() <= 1e-4
    assert (logits(lm.model) - logits(tiny())).abs().max() > 1e-2
    assert lm.model.layers[0].attn.qkv.parts == ("q", "v")


def test_our_adapter_loads_back_through_the_api(base, tmp_path) -> None:
    model = tiny()
    attach_lora(model, LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "ffn.up")))
    randomize(model)
    save_adapter(tmp_path / "a", model, "lora", base["base"])
    lm = lmforge.load(base["ckpt"], adapter=tmp_path / "a")
    assert (logits(lm.model) - logits(model)).abs().max() <= 1e-5
    with pytest.raises(LmforgeError, match="is not empty"):
        save_adapter(tmp_path / "a", model, "lora", base["base"])


def test_a_mismatched_base_is_refused(base, tmp_path) -> None:
    model = tiny()
    attach_lora(model, LoraConfig(r=2))
    save_adapter(tmp_path / "a", model, "lora", base["base"])
    with pytest.raises(LmforgeError) as err:
        lmforge.load(base["other"], adapter=tmp_path / "a")
    message = str(err.value)
    assert f"adapter {tmp_path / 'a'} was trained on base {base['ckpt']} (hash sha256:" in message
    assert f"not on {base['other']} (hash sha256:" in message


def test_encoder_adapters_keep_lmforge_names(tmp_path) -> None:
    """Families the HF export does not write as Llama keep our names (read by us only)."""
    encoder = dict(family="encoder", norm="layernorm", mlp="gelu", position="learned")
    model = tiny(**encoder)
    attach_lora(model, LoraConfig(r=2, targets=("attn.qkv", "ffn.*")))
    randomize(model)
    sd = tiny(**encoder).state_dict()
    save_adapter(tmp_path / "enc", model, "lora", AdapterBase("enc", content_hash(sd)))
    config = json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())
    assert "layers.0.attn.qkv.q" in config["target_modules"] and config["task_type"] is None
    fresh = tiny(**encoder)
    load_adapter(tmp_path / "enc", fresh, AdapterBase("enc", content_hash(sd)))
    assert torch.equal(logits(fresh), logits(model))


def test_unsupported_peft_options_are_refused(base, tmp_path) -> None:
    model = tiny()
    attach_lora(model, LoraConfig(r=2))
    save_adapter(tmp_path / "a", model, "lora", base["base"])
    path = tmp_path / "a" / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_dora": True}))
    with pytest.raises(LmforgeError, match="use_dora = True"):
        load_adapter(tmp_path / "a", tiny(), None)
    with pytest.raises(LmforgeError, match="has no adapter_config.json"):
        load_adapter(tmp_path, tiny(), None)


def test_cli_generate_with_adapter(base, tmp_path, capsys) -> None:
    model = tiny()
    attach_lora(model, LoraConfig(r=4, alpha=32, targets=ALL))
    randomize(model)
    save_adapter(tmp_path / "a", model, "lora", base["base"])
    argv = ["generate", "--model", base["ckpt"], "--prompt", "abc", "--max-tokens", "6",
            "--temperature", "0"]
    assert main(argv + ["--adapter", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    lm = lmforge.load(base["ckpt"], adapter=tmp_path / "a")
    expected = lm.engine.generate([TOKENIZER.encode("abc")], lmforge.GenerationConfig(
        max_tokens=6, temperature=0))[0].text
    assert out == expected + "\n"
    code = main(argv + ["--model", base["other"], "--adapter", str(tmp_path / "a")])
    assert code == 2 and "was trained on base" in capsys.readouterr().err


def test_adapter_directory_is_whole_or_absent(base, tmp_path) -> None:
    model = tiny()
    attach_lora(model, LoraConfig(r=2))
    out = save_adapter(tmp_path / "a", model, "lora", base["base"], force=True)
    assert sorted(p.name for p in Path(out).iterdir()) == [CONFIG_FILE,
                                                           "adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_serve_adds_each_adapter_as_a_model(base, tmp_path, monkeypatch) -> None:
    """`lmforge serve --model M --adapter DIR` serves M and M:DIR's name, each its own."""
    import uvicorn
    from fastapi.testclient import TestClient

    model = tiny()
    attach_lora(model, LoraConfig(r=4, alpha=32, targets=ALL))
    randomize(model)
    save_adapter(tmp_path / "tuned", model, "lora", base["base"])
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    assert main(["serve", "--model", base["ckpt"], "--adapter", str(tmp_path / "tuned"),
                 "--served-model-name", "tiny", "--kv-cache-gb", "0.01"]) == 0
    lm = lmforge.load(base["ckpt"], adapter=tmp_path / "tuned")
    expected = lm.engine.generate([TOKENIZER.encode("abc")], lmforge.GenerationConfig(
        max_tokens=6, temperature=0))[0].text
    with TestClient(apps[0]) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["tiny", "tiny:tuned"]
        reply = client.post("/v1/completions", json={
            "model": "tiny:tuned", "prompt": "abc", "max_tokens": 6, "temperature": 0})
    assert reply.json()["choices"][0]["text"] == expected


def test_adapters_share_the_base_weights(base, tmp_path) -> None:
    """Two adapters on one base: each model reads the base's own tensors (one copy in
    memory) and answers as the same adapter loaded alone; the base is left unchanged."""
    for i, name in enumerate(("a", "b")):
        model = tiny()
        attach_lora(model, LoraConfig(r=4, alpha=32, targets=ALL))
        randomize(model, seed=i)
        save_adapter(tmp_path / name, model, "lora", base["base"])
    models = lmforge.api.load_with_adapters(base["ckpt"], [tmp_path / "a", tmp_path / "b"])
    plain = lmforge.load(base["ckpt"])
    ids = torch.tensor([TOKENIZER.encode("abcab")])

    def pointers(m):
        return {n: t.data_ptr() for n, t in m.model.state_dict().items() if "lora" not in n}

    base_ptrs = pointers(models[0])
    with torch.no_grad():
        for lm, name in zip(models[1:], ("a", "b"), strict=True):
            assert set(base_ptrs.values()) <= set(pointers(lm).values())
            alone = lmforge.load(base["ckpt"], adapter=tmp_path / name)
            assert torch.equal(lm.model(ids), alone.model(ids))
            assert not torch.equal(lm.model(ids), plain.model(ids))
        assert torch.equal(models[0].model(ids), plain.model(ids))


@pytest.mark.slow
def test_smollm2_adapter_in_peft_gives_our_logits(tmp_path) -> None:
    """SmolLM2 (GQA 9/3 heads, tied embeddings): our q/v LoRA in peft on transformers' own
    reading of the GGUF (the weights our HF export writes, test_interop_parity.py)."""
    from conftest import SMOLLM2_GGUF, smollm2_folder
    from transformers import AutoModelForCausalLM

    lm = lmforge.load("smollm2")
    attach_lora(lm.model, LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")))
    randomize(lm.model, seed=5)
    _, sd, _, _ = load_weights("smollm2")
    save_adapter(tmp_path / "a", lm.model, "lora", AdapterBase("smollm2", content_hash(sd)))
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF,
                                              dtype=torch.float32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "a").eval()
    ids = torch.tensor([lm.tokenizer.encode("The capital of France is Paris, and")])
    with torch.no_grad(), theirs.disable_adapter():
        plain = theirs(ids).logits[0]
    with torch.no_grad():
        ours, reference = lm.model(ids)[0], theirs(ids).logits[0]
    assert (ours - reference).abs().max() <= 1e-4
    assert (ours - plain).abs().max() > 0.1
