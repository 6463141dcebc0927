"""Mixture-of-experts layers: routing against naive formulas, capacity, the auxiliary losses,
inference invariants, and a MoE decoder trained, resumed and sampled end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_workdir, tiny_run_toml

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.generate.cache import KVCache
from lmforge.model.config import ModelConfig
from lmforge.model.ffn import ACTIVATIONS, FeedForward
from lmforge.model.moe import MoE, moe_aux_loss, moe_stats, param_counts, route
from lmforge.model.transformer import Transformer
from lmforge.train.config import load_run_config
from lmforge.train.loop import train

ROUTINGS = ("soft", "topk", "switch")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=97, d_model=16, n_layer=2, n_head=2, d_ff=24, max_seq_len=64,
                  moe_experts=4, moe_noise=0.0)
    return ModelConfig(**{**fields, **overrides})


def moe(seed: int = 0, **overrides) -> MoE:
    layer = MoE(config(**overrides))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return layer


def tokens(n: int, d: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("training", [False, True])
def test_one_expert_is_the_dense_layer_exactly(routing, mlp, training):
    layer = moe(moe_experts=1, moe_routing=routing, moe_k=1, mlp=mlp, moe_noise=1.0)
    dense = FeedForward(config(mlp=mlp))
    dense.load_state_dict(layer.experts[0].state_dict())
    layer.train(training)
    x = tokens(10).view(2, 5, 16)
    assert torch.equal(layer(x), dense(x))


def naive(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Σ_i g_i(x) · E_i(x), token by token, from the weights (SwiGLU experts)."""
    act = ACTIVATIONS["swiglu"]
    rows = []
    for t in range(x.shape[0]):
        g = (layer.router.weight @ x[t]).softmax(-1)
        y = torch.zeros(x.shape[1])
        for i, e in enumerate(layer.experts):
            gate, up = (e.up.weight @ x[t]).chunk(2)
            y += g[i] * (e.down.weight @ (act(gate) * up))
        rows.append(y)
    return torch.stack(rows)


@torch.no_grad()
def test_soft_is_the_explicit_mixture_and_topk_n_equals_soft():
    soft = moe(moe_routing="soft").eval()
    x = tokens(12)
    torch.testing.assert_close(soft(x), naive(soft, x), atol=1e-5, rtol=1e-5)
    full = moe(moe_routing="topk", moe_k=4).eval()
    full.load_state_dict(soft.state_dict())
    torch.testing.assert_close(full(x), soft(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("routing", ["topk", "switch"])
def test_gradients_reach_the_gate_and_the_chosen_experts_only(routing):
    layer = moe(moe_routing=routing, moe_experts=8, moe_k=2, moe_capacity_factor=8.0).train()
    x = tokens(3)  # 3 tokens choose at most 6 of the 8 experts
    layer(x).square().sum().backward()
    chosen = set(route(layer.router_logits(x), routing, 2)[0].flatten().tolist())
    assert len(chosen) < 8
    assert layer.router.weight.grad.abs().sum() > 0
    for i, e in enumerate(layer.experts):
        grads = [p.grad.abs().sum().item() for p in e.parameters()]
        assert all(g > 0 for g in grads) if i in chosen else all(g == 0 for g in grads)


def skewed_router(layer: MoE, strength: float = 4.0) -> torch.Tensor:
    """Tokens whose first feature is 1 and a router that prefers expert 0 on it."""
    x = tokens(16)
    x[:, 0] = 1.0
    with torch.no_grad():
        layer.router.weight.mul_(0.1)
        layer.router.weight[0, 0] = strength
    return x


def test_switch_capacity_drops_overflow_deterministically():
    layer = moe(moe_routing="switch", moe_capacity_factor=1.0).train()
    x = skewed_router(layer)  # 16 tokens, 4 experts: capacity 4, all want expert 0
    assert route(layer.router_logits(x), "switch", 1)[0].flatten().tolist() == [0] * 16
    out = layer(x)
    p0 = layer.router_logits(x).softmax(-1)[:4, 0, None]
    torch.testing.assert_close(out[:4], p0 * layer.experts[0](x[:4]), atol=1e-6, rtol=1e-6)
    assert torch.equal(out[4:], torch.zeros(12, 16))  # the overflow rides the residual
    assert layer.stats["dropped"].item() == 0.75
    assert torch.equal(layer(x), out)
    layer.eval()  # inference is dropless
    assert layer(x)[4:].abs().min() > 0 and layer.stats["dropped"].item() == 0


def test_balance_loss_is_one_when_uniform_and_above_one_when_skewed():
    layer = moe(moe_routing="switch", moe_experts=4, d_model=4).train()
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4) * 3)
    layer(torch.eye(4))  # token t goes to expert t with the same probabilities, permuted
    assert layer.stats["utilisation"].tolist() == [0.25] * 4
    assert layer.stats["balance_loss"].item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        layer.router.weight.zero_()  # every probability exactly 1/4
    layer(torch.eye(4))
    assert layer.stats["balance_loss"].item() == 1.0
    skewed = moe(moe_routing="switch")
    skewed(skewed_router(skewed))
    assert skewed.stats["balance_loss"].item() > 2.0


def test_balance_gradient_pushes_a_skewed_router_toward_balance():
    layer = moe(moe_routing="switch", moe_z_weight=0.0, moe_aux_weight=1.0).train()
    x = skewed_router(layer, strength=2.0)
    layer(x)
    before = layer.stats["utilisation"].max().item()
    opt = torch.optim.SGD([layer.router.weight], lr=0.5)
    for _ in range(40):
        layer(x)
        opt.zero_grad()
        moe_aux_loss(layer).backward()
        opt.step()
    layer(x)
    assert before == 1.0 and layer.stats["utilisation"].max().item() < 0.6
    assert layer.stats["balance_loss"].item() < 1.3


def tiny(routing: str, **overrides) -> Transformer:
    model = Transformer(config(moe_routing=routing, d_model=32, n_head=4, d_ff=64,
                               moe_layers="every_other", **overrides))
    model.init_weights(std=0.2, seed=0)
    return model.eval()


@pytest.mark.parametrize("routing", ROUTINGS)
@torch.inference_mode()
def test_batch_invariance_and_cached_decode(routing):
    model = tiny(routing, moe_noise=1.0)
    assert isinstance(model.layers[1].ffn, MoE) and isinstance(model.layers[0].ffn, FeedForward)
    x = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = model(x)
    for r in range(3):
        torch.testing.assert_close(batch[r], model(x[r: r + 1])[0], atol=1e-4, rtol=0)
    cache = KVCache(model.config, 1, 32)
    slot = cache.allocate()
    parts = [model(x[:1, :5], cache=cache.step([slot], width=5))]
    parts += [model(x[:1, t: t + 1], cache=cache.step([slot])) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), batch[:1], atol=1e-4, rtol=0)


def test_bf16_autocast_keeps_the_router_in_fp32():
    model = tiny("topk").train()
    x = torch.randint(0, 97, (2, 8))
    with torch.autocast("cpu", torch.bfloat16):
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten()) + moe_aux_loss(model)
        logits = model.layers[1].ffn.router_logits(torch.randn(4, 32))
    loss.backward()
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    assert model.layers[1].ffn.router.weight.grad.abs().sum() > 0


def test_config_fields_are_validated_and_old_configs_stay_dense():
    old = ModelConfig.from_dict(dict(vocab_size=97, d_model=16, n_layer=2, n_head=2))
    assert old.moe_experts == 0 and not any(isinstance(m, MoE)
                                            for m in Transformer(old).modules())
    again = ModelConfig.from_dict(config(moe_layers=[0]).to_dict())
    assert again == config(moe_layers=[0])
    for field, value in (("moe_routing", "top2"), ("moe_k", 5), ("moe_k", 0),
                         ("moe_experts", -1), ("moe_capacity_factor", 0.0),
                         ("moe_layers", [2]), ("moe_layers", "odd"), ("moe_noise", -1.0),
                         ("moe_router_fp32", 1)):
        with pytest.raises(LmforgeError, match=field):
            config(**{field: value})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("moe-*.toml")), ids=lambda p: p.name)
def test_shipped_configs_build(path):
    run = load_run_config(path)
    model = Transformer(ModelConfig.from_dict({"vocab_size": 65, **run.model}))
    assert any(isinstance(m, MoE) for m in model.modules())


def test_param_counts():
    c = config(moe_routing="topk", moe_experts=8, moe_k=2, moe_d_ff=12)
    counts = param_counts(c)
    expert = 3 * 16 * 12  # SwiGLU: gate, up and down
    assert counts["total"] == c.n_params()
    assert counts["total"] - counts["active"] == 2 * 6 * expert  # 6 idle experts, 2 layers
    assert counts["total"] - counts["total_no_embed"] == 97 * 16


CONFIG = tiny_run_toml('moe_experts = 4\nmoe_routing = "switch"\nmoe_capacity_factor = 1.0\n'
                     'moe_layers = [1]', out_dir="run", max_steps=16, dtype="bf16")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shakespeare_char):
    return run_workdir(tmp_path_factory.mktemp("moe"), shakespeare_char, {"run.toml": CONFIG})


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_moe_decoder_trains_resumes_and_generates(workdir, capsys):
    whole = rows(train(load_run_config(workdir / "run.toml"), progress=False))
    logged = [r for r in whole if "loss" in r]
    assert all(len(r["moe_utilisation"]["1"]) == 4 and 0 <= r["moe_dropped"] < 1
               for r in logged)
    assert any(r["moe_dropped"] > 0 for r in logged)  # capacity factor 1 overflows
    assert [r["val_loss"] for r in whole if "val_loss" in r][-1] < logged[0]["loss"] - 0.5
    assert (workdir / "run" / "experts.png").stat().st_size > 1000
    paused = load_run_config(workdir / "run.toml", ["train.out_dir='b'"])
    train(paused, stop_after=6, progress=False)
    resumed = rows(train(paused, resume=True, progress=False))
    assert [r["loss"] for r in resumed if "loss" in r] == [r["loss"] for r in logged]
    code = main(["generate", "--model", str(workdir / "run"), "--prompt", "ROMEO:",
                 "--max-tokens", "20", "--temperature", "0.8", "--seed", "1"])
    assert code == 0 and len(capsys.readouterr().out) > 10
    assert moe_stats(Transformer(config())) == {}


def test_convert_to_hf_refuses_moe_and_writes_nothing(tmp_path, capsys):
    """No Hugging Face class the exporter targets has MoE layers: the export must stop before
    writing (it used to write a Llama directory without the experts), and the lmforge
    format keeps every expert."""
    from lmforge.interop import load_weights, save_checkpoint

    model = tiny("topk")
    save_checkpoint(tmp_path / "moe", model.config, model.state_dict(), None)
    out = tmp_path / "hf"
    assert main(["convert", "--model", str(tmp_path / "moe"), "--to", "hf", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "mixture-of-experts" in err and "Llama, GPT-2, BERT and T5" in err
    assert "lmforge checkpoint format" in err
    assert not out.exists()
    kept = tmp_path / "kept"
    assert main(["convert", "--model", str(tmp_path / "moe"), "--to", "lmforge", "--out",
                 str(kept)]) == 0
    config, state_dict, _, _ = load_weights(kept)
    assert config == model.config
    assert all(torch.equal(state_dict[n], t) for n, t in model.state_dict().items())
