"""Every family trains with its objective on real data (Tiny Shakespeare, characters): the
loss falls, a non-causal run resumes exactly, activation checkpointing changes nothing,
and bad settings are errors that say what to change (2 processes: test_distributed.py)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_workdir, tiny_run_toml

from lmforge.data.lines import specials_for
from lmforge.data.prepare import load_tokens
from lmforge.errors import LmforgeError
from lmforge.objectives.registry import SamplerInputs, resolve
from lmforge.tokenizers import load_tokenizer
from lmforge.train.config import load_run_config
from lmforge.train.loop import train
from lmforge.train.objective import ObjectiveModel
from lmforge.train.setup import build

FAMILIES = {  # name: ([model] lines, [train] lines)
    "decoder": ("", ""),
    "prefix": ('family = "prefix"', ""),
    "roberta": ('family = "encoder"', ""),
    "bert": ('family = "encoder"\ntype_vocab_size = 2', "nsp = true"),
    "t5": ('family = "encoder_decoder"\nposition = "relative"\nn_encoder_layer = 2', ""),
    "bart": ('family = "encoder_decoder"\nposition = "relative"', 'objective = "denoising"'),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_char):
    return run_workdir(tmp_path_factory.mktemp("families"), shakespeare_char, {
        f"{name}.toml": tiny_run_toml(model, extra, out_dir=name, block_size=48, eval_every=12,
                                      threads=1)
        for name, (model, extra) in FAMILIES.items()})


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in rows(run_dir) if "loss" in r]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_learns_with_its_objective(workdir, family):
    run_dir = train(load_run_config(workdir / f"{family}.toml"), progress=False)
    curve = losses(run_dir)
    assert len(curve) == 24
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.3, curve
    evals = [r for r in rows(run_dir) if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    if family == "bert":
        assert {"val_mlm", "val_nsp", "val_nsp_acc"} <= set(evals[-1])
    assert ("val_bits_per_byte" in evals[-1]) == (family == "decoder")
    assert (run_dir / "best" / "model.safetensors").is_file()


def test_nsp_run_resumes_exactly_heads_included(workdir):
    sets = ["train.max_steps=10", "train.eval_every=4"]
    whole = losses(train(load_run_config(workdir / "bert.toml", [*sets, "train.out_dir='w'"]),
                         progress=False))
    paused = load_run_config(workdir / "bert.toml", [*sets, "train.out_dir='p'"])
    train(paused, stop_after=4, progress=False)
    state = torch.load(workdir / "p" / "checkpoints" / "step-4" / "train_state.pt",
                       weights_only=True)
    assert set(state["heads"]) == {"nsp.pool.weight", "nsp.pool.bias", "nsp.classify.weight",
                                   "nsp.classify.bias"}
    assert losses(train(paused, resume=True, progress=False)) == whole


def objective_model(workdir, family: str) -> tuple[ObjectiveModel, dict]:
    run = load_run_config(workdir / f"{family}.toml")
    tok = load_tokenizer(workdir / "data" / "tokenizer")
    objective = resolve(run.model.get("family", "decoder"), run.train)
    sp = specials_for(tok) if objective.specials else None
    torch.manual_seed(0)
    task = ObjectiveModel(build(run, tok.vocab_size, sp), objective)
    sampler = objective.sampler(load_tokens(workdir / "data", "val"), SamplerInputs(
        tok, run.train, sp, task.model.config.decoder_start_id))
    return task, sampler(torch.Generator().manual_seed(0), 4)


@pytest.mark.parametrize("family", ["decoder", "bert", "t5"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(workdir, family):
    task, batch = objective_model(workdir, family)
    results = []
    for checkpointing in (False, True):
        task.model.activation_checkpointing = checkpointing
        task.zero_grad(set_to_none=True)
        loss = task(batch)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in task.named_parameters()
                                        if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=0)
    assert grads0.keys() == grads1.keys() and len(grads0) > 10
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, atol=1e-6, rtol=1e-6, msg=name)


def test_activation_checkpointing_setting_trains_the_same(workdir):
    sets = ["train.max_steps=4", "train.eval_every=4", "train.warmup_steps=2"]
    plain = losses(train(load_run_config(workdir / "decoder.toml", [*sets, "train.out_dir='n'"]),
                         progress=False))
    ckpt = losses(train(load_run_config(workdir / "decoder.toml", [
        *sets, "train.out_dir='c'", "train.activation_checkpointing=true"]), progress=False))
    assert max(abs(a - b) for a, b in zip(plain, ckpt, strict=True)) < 1e-6


def test_bad_objective_settings_say_what_to_change(workdir):
    with pytest.raises(LmforgeError, match="does not train a decoder"):
        train(load_run_config(workdir / "decoder.toml", ["train.objective='mlm'"]),
              progress=False)
    with pytest.raises(LmforgeError, match="type_vocab_size = 2"):
        train(load_run_config(workdir / "roberta.toml", ["train.nsp=true"]), progress=False)
    with pytest.raises(LmforgeError, match="nsp = true adds"):
        train(load_run_config(workdir / "t5.toml", ["train.nsp=true"]), progress=False)
    with pytest.raises(LmforgeError, match="denoising"):
        load_run_config(workdir / "bart.toml", ["train.denoising=['shuffle']"])
    with pytest.raises(LmforgeError, match="objective"):
        load_run_config(workdir / "bart.toml", ["train.objective='bert'"])
    with pytest.raises(LmforgeError, match="torchrun"):
        train(load_run_config(workdir / "decoder.toml", ["train.fsdp=true"]), progress=False)



def test_fill_masks_and_spans_put_predictions_in_place(workdir):
    from lmforge.generate.fill import fill_masks, fill_spans

    tok = load_tokenizer(workdir / "data" / "tokenizer")
    encoder, _ = objective_model(workdir, "roberta")
    text = "ROM[MASK]O:\nI love [MASK]er.\n"
    filled = fill_masks(encoder.model, tok, text)
    assert len(filled) == len(text) - 2 * (len("[MASK]") - 1)
    assert filled.startswith("ROM") and filled[4:].startswith("O:\nI love ")
    top = fill_masks(encoder.model, tok, text, top_k=3)
    assert len(top) == 2 and all(len(r) == 3 and r[0][1] >= r[1][1] >= r[2][1] for r in top)
    with pytest.raises(LmforgeError, match="no \\[MASK\\]"):
        fill_masks(encoder.model, tok, "ROMEO")
    t5, _ = objective_model(workdir, "t5")
    filled, spans = fill_spans(t5.model, tok, "KING <extra_id_0>:\nNow <extra_id_1>.",
                               max_tokens=8)
    assert len(spans) == 2 and filled.startswith("KING ")
    assert filled == f"KING {spans[0]}:\nNow {spans[1]}."
    with pytest.raises(LmforgeError, match="encoder-decoder"):
        fill_spans(encoder.model, tok, "a <extra_id_0>")
