"""Instruction SFT and LoRA fine-tuning (#19): the assistant-only mask on hand-checked
SmolLM2 renderings (one and several turns), the Self-Instruct format, packing that keeps
conversations apart, `finetune --method lora --task seqcls` (loss, one adapter that reloads
with the run's predictions), a LoRA SFT adapter through `generate --adapter` and a recipe
run by `lmforge train --config`, the base left bit-identical, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.adapt.classifier import classify
from lmforge.adapt.finetune import finetune
from lmforge.adapt.labeled import read_labelled
from lmforge.adapt.lora import remove_lora
from lmforge.adapt.sft import (
    IGNORE,
    encode_all,
    encode_conversation,
    pad_batch,
    read_conversations,
    sft_store,
    token_losses,
)
from lmforge.adapt.sft_batches import SftSampler, pack, packed_batch
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import save_checkpoint
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.masks import NoCache
from lmforge.model.transformer import Transformer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SEED = DATA / "self-instruct" / "seed_tasks.jsonl"
HELD = DATA / "self-instruct" / "user_oriented_instructions.jsonl"
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you."}]
FAST = {"max_steps": 6, "eval_every": 3, "eval_batches": 1, "log_every": 1, "batch_size": 4,
        "warmup_steps": 1, "max_len": 96, "train_subset": 24, "eval_subset": 8}


@pytest.fixture(scope="module")
def tok():
    return load_weights("smollm2")[2]


def tiny_decoder(tok, seed: int = 0) -> Transformer:
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=4,
                         n_kv_head=2, d_ff=64, max_seq_len=128)
    model = Transformer(config)
    model.init_weights(std=0.2, seed=seed)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tok) -> str:
    """A 2-layer width-32 decoder with SmolLM2's tokenizer (and chat template), saved."""
    d = tmp_path_factory.mktemp("sft") / "tiny"
    model = tiny_decoder(tok)
    save_checkpoint(d, model.config, model.state_dict(), tok)
    return str(d)


def scored_tokens(tok, messages) -> list[str]:
    ex = encode_conversation(tok, messages)
    return [tok.id_to_token(i) for i, label in zip(ex.ids, ex.labels, strict=True)
            if label != IGNORE]


def metric(run_dir: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


# --- the assistant-only mask ---------------------------------------------------------------

def test_only_the_assistant_turn_and_its_end_of_turn_token_are_scored(tok):
    ex = encode_conversation(tok, CHAT[:3])
    tokens = [tok.id_to_token(i) for i in ex.ids]
    # checked by hand on SmolLM2's ChatML rendering:
    # <|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n
    # <|im_start|>assistant\nHello!<|im_end|>\n
    assert tokens == ["<|im_start|>", "system", "Ċ", "Be", "Ġbrief", ".", "<|im_end|>", "Ċ",
                      "<|im_start|>", "user", "Ċ", "Hi", "Ġthere", "<|im_end|>", "Ċ",
                      "<|im_start|>", "ass", "istant", "Ċ", "Hello", "!", "<|im_end|>", "Ċ"]
    scored = [t for t, label in zip(tokens, ex.labels, strict=True) if label != IGNORE]
    assert scored == ["Hello", "!", "<|im_end|>"]
    assert ex.labels[19:22] == ex.ids[19:22] and ex.labels[22] == IGNORE


def test_every_assistant_turn_of_a_conversation_is_scored(tok):
    assert scored_tokens(tok, CHAT) == ["Hello", "!", "<|im_end|>",
                                        "See", "Ġyou", ".", "<|im_end|>"]
    # without a system message SmolLM2's template adds its own; it stays unscored
    assert scored_tokens(tok, CHAT[1:3]) == ["Hello", "!", "<|im_end|>"]


def test_self_instruct_rows_and_messages_rows(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    rows = [{"instruction": "Add.", "instances": [{"input": "2 + 2", "output": "4"},
                                                   {"input": "", "output": "Nothing."}]},
            {"messages": CHAT}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    conv = read_conversations(f)
    assert conv[0] == [{"role": "user", "content": "Add.\n\n2 + 2"},
                       {"role": "assistant", "content": "4"}]
    assert conv[1][0]["content"] == "Add." and conv[2] == CHAT
    assert len(read_conversations(SEED)) >= 175
    f.write_text('{"text": "no"}\n')
    with pytest.raises(LmforgeError, match="neither"):
        read_conversations(f)
    with pytest.raises(LmforgeError, match="needs an assistant message"):
        encode_conversation(tok, CHAT[:2])


# --- packing -----------------------------------------------------------------------------

def test_packed_conversations_do_not_see_each_other(tok):
    model = tiny_decoder(tok)
    conversations = [[CHAT[0], {"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": "Yes, " * (i + 1)}] for i in range(8)]
    examples = encode_all(tok, conversations, 64)
    windows = pack(examples, 64)
    assert all(sum(len(e.ids) for e in w) <= 64 for w in windows) and len(windows) > 2
    assert [e for w in windows for e in w] == examples  # in order, none split or lost
    batch = packed_batch(windows[:2])
    first = windows[0]
    assert len(first) >= 2
    assert batch["docs"][0, :len(first[0].ids)].unique().tolist() == [1]
    store = sft_store(batch)  # positions restart at each conversation
    assert store.positions[0, len(first[0].ids)] == 0
    with torch.no_grad():
        packed = token_losses(model, batch)
        alone = torch.cat([token_losses(model, pad_batch([e])) for w in windows[:2]
                           for e in w])
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
        # the same window read as one causal sequence: the second conversation sees the first
        leaky = model.hidden(batch["ids"], cache=NoCache.start(*batch["ids"].shape, True))
        kept = model.hidden(batch["ids"], cache=store)
    j = len(first[0].ids)
    assert not torch.allclose(leaky[0, j], kept[0, j], atol=1e-3)


def test_a_sampler_draws_windows_or_conversations(tok):
    examples = encode_all(tok, read_conversations(SEED)[:10], 96)
    gen = torch.Generator().manual_seed(0)
    assert set(SftSampler(examples, True, 128)(gen, 3)) == {"ids", "labels", "attention_mask",
                                                            "docs"}
    b = SftSampler(examples, False, 128)(gen, 3)
    assert b["ids"].shape[0] == 3 and (b["labels"][b["attention_mask"] == 0] == IGNORE).all()


# --- finetune --method lora --------------------------------------------------------------

def test_lora_seqcls_lowers_the_loss_and_its_adapter_reloads(tiny, tmp_path):
    sst2 = DATA / "sst2"
    lines = {s: (sst2 / f"{s}.tsv").read_text(encoding="utf-8").splitlines()
             for s in ("train", "dev")}
    for s, n in (("train", 64), ("dev", 32)):
        (tmp_path / f"{s}.tsv").write_text("\n".join(lines[s][:n + 1]) + "\n")
    r = finetune(tiny, "lora", "seqcls", tmp_path / "train.tsv",
                 {"eval_data": str(tmp_path / "dev.tsv"), "out_dir": str(tmp_path / "run"),
                  "max_steps": 30, "eval_every": 30, "eval_batches": 1, "log_every": 1,
                  "batch_size": 8, "lr": 1e-2, "warmup_steps": 2, "max_len": 32,
                  "r": 4, "alpha": 8, "targets": "all-linear"}, progress=False)
    loss = metric(r.run_dir, "loss")
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.05
    assert 0 < r.trainable < r.total * 0.3
    config = json.loads((r.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["classifier"]["labels"] == ["0", "1"]
    lm = lmforge.load(tiny, adapter=r.run_dir / "adapter")
    dev = read_labelled(tmp_path / "dev.tsv", "", "label")
    predicted = classify(lm, dev.texts)
    assert sum(p == dev.names[y] for p, y in zip(predicted, dev.labels, strict=True)) \
        == round(r.eval_acc * len(dev.labels))


# --- SFT: recipe, adapter, base, resume ---------------------------------------------------

def test_sft_recipe_lora_adapter_changes_generation_and_leaves_the_base(tiny, tmp_path,
                                                                        capsys):
    before = (Path(tiny) / "model.safetensors").read_bytes()
    recipe = tmp_path / "sft.toml"
    recipe.write_text(f'[finetune]\nmodel = "{tiny}"\nmethod = "lora"\ntask = "sft"\n'
                      f'data = "{SEED}"\n[settings]\nout_dir = "run"\neval_data = "{HELD}"\n'
                      + "".join(f"{k} = {v}\n" for k, v in FAST.items())
                      + 'lr = 3e-2\ntargets = "all-linear"\npacking = true\n')
    assert main(["train", "--config", str(recipe)]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text())["eval_loss"] > 0
    prompt = ["--model", tiny, "--prompt", "Name a colour.", "--chat", "--max-tokens", "8",
              "--temperature", "0"]
    capsys.readouterr()
    assert main(["generate", *prompt]) == 0
    plain = capsys.readouterr().out
    assert main(["generate", *prompt, "--adapter", str(run / "adapter")]) == 0
    assert capsys.readouterr().out != plain
    assert (Path(tiny) / "model.safetensors").read_bytes() == before
    base = lmforge.load(tiny).model.state_dict()
    tuned = lmforge.load(tiny, adapter=run / "adapter").model
    remove_lora(tuned)
    got = tuned.state_dict()
    assert got.keys() == base.keys() and all(torch.equal(got[k], base[k]) for k in base)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_sft_run_resumes_exactly(method, tiny, tmp_path):
    settings = {**FAST, "lr": 1e-2, "lora_dropout": 0.1 if method == "lora" else 0.0}

    def run(out: Path, **kw):
        return finetune(tiny, method, "sft", SEED, {**settings, "out_dir": str(out)},
                        progress=False, **kw)

    whole = run(tmp_path / "whole")
    run(tmp_path / "paused", stop_after=3)
    resumed = run(tmp_path / "paused", resume=True)
    assert metric(resumed.run_dir, "loss") == metric(whole.run_dir, "loss")
    assert len(metric(whole.run_dir, "loss")) == FAST["max_steps"]
    assert (whole.run_dir / ("adapter" if method == "lora" else "model")).is_dir()


def test_sft_refuses_an_encoder(tmp_path, tok):
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=4, d_ff=64,
                         max_seq_len=64, family="encoder", norm="layernorm", mlp="gelu",
                         position="learned", bias=True, norm_position="post")
    save_checkpoint(tmp_path / "enc", config, Transformer(config).state_dict(), tok)
    with pytest.raises(LmforgeError, match="trains a decoder"):
        finetune(str(tmp_path / "enc"), "lora", "sft", SEED, {**FAST,
                 "out_dir": str(tmp_path / "o")}, progress=False)


def test_finetune_names_what_it_lacks(capsys):
    assert main(["finetune", "--method", "lora", "--task", "sft"]) == 2
    assert "needs --model, --data, --out (or --config RECIPE.toml)" in capsys.readouterr().err
