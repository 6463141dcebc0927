"""Module surgery from outside the model: the LM head and the MoE router are modules that
forward calls, `replace_linears` and the named slices of fused projections, `build_model`
transforms that load a quantized state dict strictly, packed inference weights that follow
every write, and the model's dtype and device."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.api import build_model
from lmforge.errors import LmforgeError
from lmforge.model import linear as lin
from lmforge.model.config import ModelConfig
from lmforge.model.linear import Linear, pack_for_inference
from lmforge.model.moe import MoE
from lmforge.model.surgery import projections, replace_linears, slices_of
from lmforge.model.transformer import Transformer

IDS = torch.tensor([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]])
needs_packing = pytest.mark.skipif(not lin.PACKED, reason="packing needs oneDNN on the CPU "
                                   "(and LMFORGE_PACKED_WEIGHTS unset or 1)")


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=61, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                                 d_ff=48, max_seq_len=32), **overrides})


def tiny(**overrides) -> Transformer:
    model = Transformer(config(**overrides))
    model.init_weights(std=0.3, seed=0)
    return model.eval()


class SliceLoRA(nn.Module):
    """LoRA (Hu et al., 2021) on some slices of a projection: y = W·x + B_s·A_s·x on the
    output rows of each slice s in `parts` only, as PEFT does with target_modules=["q_proj",
    "v_proj"] on unfused projections. `merge` writes the update into W through `.data`, as
    PEFT's merge does."""

    def __init__(self, base: nn.Module, parts: list[str], rank: int = 2) -> None:
        super().__init__()
        self.base, self.slices, self.parts = base, slices_of(base), parts
        self.in_features, self.out_features = base.in_features, base.out_features
        gen = torch.Generator().manual_seed(1)
        self.A = nn.ParameterDict({p: nn.Parameter(torch.randn(rank, self.in_features,
                                                               generator=gen)) for p in parts})
        self.B = nn.ParameterDict({p: nn.Parameter(torch.randn(
            self.slices[p].stop - self.slices[p].start, rank, generator=gen)) for p in parts})
        self.merged = False

    def delta(self) -> torch.Tensor:
        """B·A in the chosen slices' rows, zero elsewhere: (out_features, in_features)."""
        d = torch.zeros(self.out_features, self.in_features)
        for p in self.parts:
            d[self.slices[p]] = self.B[p] @ self.A[p]
        return d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.merged else self.base(x) + F.linear(x, self.delta())

    def merge(self) -> None:
        self.base.weight.data += self.delta()
        self.merged = True


# -- the head and the router are modules ----------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_the_head_is_a_module_forward_calls_and_checkpoint_names_stay(tied):
    model = tiny(tie_embeddings=tied)
    blocks = [f"layers.{i}.{p}.weight" for i in range(2) for p in
              ("attn_norm", "attn.qkv", "attn.out", "ffn_norm", "ffn.up", "ffn.down")]
    assert set(model.state_dict()) == {"embed.weight", "norm.weight", *blocks,
                                       *([] if tied else ["lm_head.weight"])}
    assert (model.lm_head.weight is model.embed.weight) == tied
    assert sum(p.numel() for p in model.parameters()) == model.config.n_params()
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), F.linear(model.hidden(IDS), model.head_weight()))
        model.lm_head = nn.Linear(32, 61)
        nn.init.zeros_(model.lm_head.weight)
        torch.testing.assert_close(model(IDS), model.lm_head.bias.expand(2, 6, 61))


def test_replacing_the_moe_router_changes_the_routing():
    """A router that always prefers expert 2 makes a top-1 layer equal to that expert."""
    layer = MoE(config(moe_experts=4, moe_k=1)).eval()
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))

    class Prefer(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return F.one_hot(torch.full(h.shape[:-1], 2), 4).float() * 9

    with torch.no_grad():
        replaced = replace_linears(layer, lambda name, m: name == "router", lambda *_: Prefer())
        assert list(replaced) == ["router"] and isinstance(layer.router, Prefer)
        torch.testing.assert_close(layer(x), layer.experts[2](x))
    assert layer.stats["utilisation"].tolist() == [0.0, 0.0, 1.0, 0.0]


# -- replace_linears and slices -------------------------------------------------------------

def test_fused_projections_name_their_slices():
    attn, ffn = tiny().layers[0].attn, tiny().layers[0].ffn
    assert attn.qkv.slices == {"q": slice(0, 32), "k": slice(32, 48), "v": slice(48, 64)}
    assert ffn.up.slices == {"gate": slice(0, 48), "up": slice(48, 96)}
    assert attn.out.slices == {"all": slice(0, 32)}
    assert tiny(mlp="gelu").layers[0].ffn.up.slices == {"all": slice(0, 48)}
    t5 = tiny(family="encoder_decoder")
    assert t5.layers[0].cross_attn.kv.slices == {"k": slice(0, 16), "v": slice(16, 32)}
    for name, module in projections(t5).items():  # every projection's slices tile its rows
        rows = [r for s in slices_of(module).values() for r in range(s.start, s.stop)]
        assert rows == list(range(module.out_features)), name
    assert "lm_head" not in projections(t5)  # tied: no matrix of its own
    with pytest.raises(LmforgeError, match="sum to the 10 output"):
        Linear(8, 10, slices={"a": 4, "b": 4})


def test_lora_on_q_and_v_changes_only_their_columns():
    model = tiny()
    qkv = model.layers[0].attn.qkv
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before, logits = qkv(x), model(IDS)
        replaced = replace_linears(model, lambda name, m: name.endswith("attn.qkv"),
                                   lambda name, m: SliceLoRA(m, ["q", "v"]))
        assert list(replaced) == ["layers.0.attn.qkv", "layers.1.attn.qkv"]
        assert model.layers[0].attn.qkv is replaced["layers.0.attn.qkv"]
        after = model.layers[0].attn.qkv(x)
        assert not torch.allclose(model(IDS), logits)
    s = qkv.slices
    assert torch.equal(after[:, s["k"]], before[:, s["k"]])
    assert not torch.isclose(after[:, s["q"]], before[:, s["q"]]).any()
    assert not torch.isclose(after[:, s["v"]], before[:, s["v"]]).any()
    # surgery sees the wrapper (it declares slices), never the base layer inside it
    assert "layers.0.attn.qkv" in projections(model)
    assert not any(name.endswith(".base") for name in projections(model))


def test_a_predicate_matching_nothing_is_an_error_unless_allowed():
    model = tiny()
    with pytest.raises(LmforgeError, match=r"layers\.0\.attn\.qkv \(q/k/v\)"):
        replace_linears(model, lambda name, m: name.endswith("q_proj"), lambda n, m: m)
    assert replace_linears(model, lambda *_: False, lambda n, m: m, missing_ok=True) == {}
    with pytest.raises(LmforgeError, match="must return an nn.Module"):
        replace_linears(model, lambda name, m: True, lambda n, m: None)


# -- build_model transforms: a quantized checkpoint loads strictly --------------------------

class Int8Linear(nn.Module):
    """Weight-only int8 with one fp32 scale per output row (absmax): W ≈ scale · qweight,
    scale = max_j |W_ij| / 127; dequantized in forward."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.slices = slices_of(base)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.register_buffer("qweight", torch.empty(self.out_features, self.in_features,
                                                    dtype=torch.int8))
        self.register_buffer("scale", torch.empty(self.out_features, 1))

    @staticmethod
    def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return (w / scale).round().to(torch.int8), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight.to(x.dtype) * self.scale.to(x.dtype))


def quantize_linears(model: nn.Module) -> None:
    replace_linears(model, lambda name, m: isinstance(m, nn.Linear), lambda n, m: Int8Linear(m))


def test_build_model_transforms_load_an_int8_state_dict_strictly():
    ref = tiny(tie_embeddings=False)
    state = dict(ref.state_dict())
    for name in projections(ref):
        state[f"{name}.qweight"], state[f"{name}.scale"] = Int8Linear.quantize(
            state.pop(f"{name}.weight"))
    model = build_model(ref.config, state, transforms=[quantize_linears])
    qkv = model.layers[1].attn.qkv
    assert isinstance(qkv, Int8Linear) and qkv.qweight.dtype == torch.int8
    assert qkv.qweight.data_ptr() == state["layers.1.attn.qkv.qweight"].data_ptr()  # assigned
    assert qkv.slices == ref.layers[1].attn.qkv.slices
    with torch.no_grad():
        ours, want = model(IDS), ref(IDS)
    assert (ours - want).norm() / want.norm() < 0.02  # int8 rounding: ≈ 1/254 per weight
    with pytest.raises(LmforgeError, match="unexpected"):  # without the swap: keys don't fit
        build_model(ref.config, state)
    with pytest.raises(LmforgeError, match=r"missing \['layers.0.attn.qkv.scale'\]"):
        build_model(ref.config, {k: v for k, v in state.items()
                                 if k != "layers.0.attn.qkv.scale"},
                    transforms=[quantize_linears])


def test_dtype_and_device_come_from_the_build_not_the_first_parameter():
    ref = tiny()
    state = dict(ref.state_dict())
    for name in projections(ref):
        state[f"{name}.qweight"], state[f"{name}.scale"] = Int8Linear.quantize(
            state.pop(f"{name}.weight"))
    model = build_model(ref.config, state, torch.bfloat16, transforms=[quantize_linears])
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    assert model.layers[0].attn.qkv.qweight.dtype == torch.int8  # integers are not cast
    assert model.layers[0].attn.qkv.scale.dtype == torch.bfloat16
    assert ref.dtype == torch.float32 and ref.to(torch.bfloat16).dtype == torch.bfloat16
    assert "dtype_marker" not in ref.state_dict()


# -- packed inference weights ---------------------------------------------------------------

def packed_weights(model: nn.Module) -> int:
    return sum(getattr(p, lin.PACK_ATTR, None) is not None for p in model.parameters())


@needs_packing
@pytest.mark.parametrize("write", ["data_copy", "data_assign", "data_row", "no_grad_copy",
                                   "fused_adamw"])
def test_packed_weights_follow_every_write(write, monkeypatch):
    """The packed copy is made again after any write: through `.data` (which moves no
    version counter), one row (a new token's embedding), in place, a fused optimizer step."""
    refreshes = []
    monkeypatch.setattr(lin.Pack, "refresh", lambda self, w, f=lin.Pack.refresh:
                        (refreshes.append(1), f(self, w))[1])
    layer = Linear(96, 40).eval()
    x = torch.randn(8, 96)
    assert layer.pack_for_inference()
    new = torch.randn(40, 96)
    if write == "data_copy":
        layer.weight.data.copy_(new)
    elif write == "data_assign":
        layer.weight.data = new
    elif write == "data_row":
        layer.weight.data[7] = new[7]
    elif write == "no_grad_copy":
        with torch.no_grad():
            layer.weight.copy_(new)
    else:
        layer.weight.grad = torch.ones_like(layer.weight)
        torch.optim.AdamW(layer.parameters(), fused=True).step()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias),
                                   atol=1e-5, rtol=1e-5)
        assert len(refreshes) == 2  # packed at first, then again after the write
        layer(x)
    assert len(refreshes) == 2  # and not again while nothing changes


@needs_packing
def test_a_lora_merge_after_packing_is_seen():
    model = tiny()
    with torch.no_grad():
        before = model(IDS)
        wrappers = replace_linears(model, lambda name, m: name.endswith("attn.qkv"),
                                   lambda name, m: SliceLoRA(m, ["q", "v"]))
        assert pack_for_inference(model) == 9  # 2 × (qkv, out, up, down) + the tied head
        adapted = model(IDS)
        for wrapper in wrappers.values():
            wrapper.merge()  # through .data, into the packed base weight
        torch.testing.assert_close(model(IDS), adapted, atol=1e-4, rtol=1e-4)
        replace_linears(model, lambda name, m: name in wrappers, lambda name, m: m.base)
        torch.testing.assert_close(model(IDS), adapted, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(adapted, before)


@needs_packing
def test_packed_copies_are_dropped_by_train_casts_surgery_and_copies():
    model = tiny()
    assert pack_for_inference(model) == packed_weights(model) == 9
    assert packed_weights(copy.deepcopy(model)) == 0  # a copy starts unpacked
    model.train()
    assert packed_weights(model) == 0
    pack_for_inference(model)
    replace_linears(model, lambda name, m: name == "layers.0.attn.qkv", lambda name, m: m)
    assert packed_weights(model) == 8
    model.to(torch.bfloat16)
    assert packed_weights(model) == 0 and pack_for_inference(model) == 0  # fp32 only


@needs_packing
def test_the_compiled_op_uses_the_packed_weight_and_follows_writes(monkeypatch):
    refreshes = []
    monkeypatch.setattr(lin.Pack, "refresh", lambda self, w, f=lin.Pack.refresh:
                        (refreshes.append(1), f(self, w))[1])
    layer = Linear(64, 32).eval()
    layer.pack_for_inference()
    step = torch.compile(layer.forward)
    x = torch.randn(4, 64)
    with torch.no_grad():
        for scale in (1.0, 3.0):
            layer.weight.data.mul_(scale)
            torch.testing.assert_close(step(x), F.linear(x, layer.weight, layer.bias))
    assert len(refreshes) == 2  # the op packed nothing itself: it read the pack and renewed it
