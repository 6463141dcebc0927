"""The encoder family (BERT): tiny random invariants, parity with transformers' BertModel on
tiny random weights through our converter, and all-MiniLM-L6-v2 sentence embeddings against
the sentence-transformers recipe in transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmforge
from lmforge.api import build_model
from lmforge.cli import main
from lmforge.embed import embed, embed_ids, pad_batch
from lmforge.errors import LmforgeError
from lmforge.interop import registry
from lmforge.interop.bert import load_bert
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

ENCODER = dict(family="encoder", norm="layernorm", norm_eps=1e-12, mlp="gelu",
               position="learned", bias=True, norm_position="post", type_vocab_size=2)
SENTENCES = [
    "Hello world!",
    "北京是中国的首都，一座历史悠久的城市。",
    "Crème brûlée, señor Müller? Ça coûte 3,50 €.",
    "?!... ,;: -- (( )) \"quoted\" 'single'",
    "A much longer English sentence about encoders, embeddings, and the padding mask that "
    "every batch must respect so that short sentences are not changed by long ones.",
    "naïve café résumé",
]


def tiny(**overrides) -> Transformer:
    config = ModelConfig(vocab_size=97, d_model=32, n_layer=2, n_head=4, d_ff=64,
                         max_seq_len=64, **{**ENCODER, **overrides})
    model = Transformer(config)
    model.init_weights(std=0.2, seed=0)
    return model.eval()


def ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(seed))


# --- tiny random encoders ---------------------------------------------------------------

def test_post_norm_layout_and_config_round_trip():
    model = tiny()
    names = set(model.state_dict())
    assert {"embed_norm.weight", "embed_norm.bias", "type_embed.weight"} <= names
    assert not any(n.startswith("norm.") for n in names)  # post-norm: no final norm
    assert ModelConfig.from_dict(model.config.to_dict()) == model.config
    assert not model.config.causal and model.config.post_norm


def test_new_fields_keep_decoder_configs_unchanged():
    config = ModelConfig(vocab_size=97, d_model=32, n_layer=2, n_head=4)
    assert (config.norm_position, config.type_vocab_size, config.causal) == ("pre", 0, True)
    names = set(Transformer(config).state_dict())
    assert "norm.weight" in names and not any(n.startswith(("embed_norm", "type_embed"))
                                              for n in names)
    with pytest.raises(LmforgeError, match="norm_position"):
        ModelConfig(vocab_size=97, d_model=32, n_layer=2, n_head=4, norm_position="sandwich")
    with pytest.raises(LmforgeError, match="unknown model config key"):
        ModelConfig.from_dict({**config.to_dict(), "norm_positon": "post"})


@torch.inference_mode()
def test_bidirectional_later_token_changes_earlier_outputs():
    model, x = tiny(), ids(8, 0)
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 97
    a, b = model.hidden(x), model.hidden(y)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-3  # the first position sees the last
    causal = tiny(family="decoder")  # same weights, causal mask: the first position does not
    torch.testing.assert_close(causal.hidden(x)[0, :-1], causal.hidden(y)[0, :-1])


@pytest.mark.parametrize("family", ["encoder", "decoder"])
@torch.inference_mode()
def test_padding_does_not_change_real_positions(family):
    model = tiny(family=family)
    a, b = ids(9, 1), ids(4, 2)
    types = torch.tensor([[0] * 5 + [1] * 4, [0, 0, 1, 1] + [0] * 5])
    batch, mask = pad_batch([a[0].tolist(), b[0].tolist()], pad=5)
    h = model.hidden(batch, token_types=types, attention_mask=mask)
    torch.testing.assert_close(h[0], model.hidden(a, token_types=types[:1])[0],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(h[1, :4], model.hidden(b, token_types=types[1:, :4])[0],
                               atol=1e-5, rtol=0)


def test_token_types_matter_and_default_to_zero():
    model, x = tiny(), ids(6, 3)
    with torch.inference_mode():
        zero = model.hidden(x, token_types=torch.zeros_like(x))
        torch.testing.assert_close(model.hidden(x), zero)
        assert (model.hidden(x, token_types=torch.ones_like(x)) - zero).abs().max() > 1e-3


def test_attention_mask_with_a_cache_is_an_error():
    from lmforge.generate.cache import KVCache

    model = tiny(family="decoder")
    cache = KVCache(model.config, 1, 16)
    with pytest.raises(LmforgeError, match="attention_mask"):
        model(ids(3, 0), cache=cache.step([cache.allocate()], width=3),
              attention_mask=torch.ones(1, 3))


# --- parity with transformers on tiny random weights, through our converter ------------

@pytest.mark.parametrize("arch", ["BertModel", "BertForMaskedLM"])
def test_tiny_bert_matches_transformers(tmp_path, arch):
    import transformers

    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    hf = getattr(transformers, arch)(cfg).eval()
    hf.save_pretrained(tmp_path)
    config, state_dict, _ = load_bert(tmp_path)
    ours = build_model(config, state_dict)
    x, mask = pad_batch([ids(11, 4)[0].tolist(), ids(6, 5)[0].tolist()])
    types = (torch.arange(11) >= 5).long().expand(2, -1) * mask
    with torch.inference_mode():
        bert = hf if arch == "BertModel" else hf.bert
        ref = bert(input_ids=x, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours.hidden(x, token_types=types, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=0)


def test_unknown_bert_tensor_is_an_error(tmp_path):
    import transformers
    from safetensors.torch import load_file, save_file

    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64)
    transformers.BertModel(cfg).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({**tensors, "encoder.layer.0.adapter.weight": torch.zeros(2)},
              tmp_path / "model.safetensors")
    with pytest.raises(LmforgeError, match="adapter"):
        load_bert(tmp_path)


# --- the real all-MiniLM-L6-v2 -----------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_dir():
    return registry.model_path("minilm")


@pytest.fixture(scope="module")
def minilm_lm():
    return lmforge.load("minilm")


@pytest.fixture(scope="module")
def minilm(minilm_lm) -> Transformer:
    return minilm_lm.model


@pytest.fixture(scope="module")
def hf_minilm(minilm_dir):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(minilm_dir).eval(), AutoTokenizer.from_pretrained(minilm_dir)


def test_minilm_config(minilm):
    c = minilm.config
    assert (c.family, c.norm_position, c.n_layer, c.d_model, c.n_head, c.d_ff) == \
        ("encoder", "post", 6, 384, 12, 1536)
    assert (c.type_vocab_size, c.max_seq_len, c.norm_eps, c.mlp) == (2, 512, 1e-12, "gelu")


@torch.inference_mode()
def test_minilm_matches_transformers(minilm_lm, minilm, hf_minilm):
    hf, tok = hf_minilm
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(1).unique().numel() > 3  # really padded
    ref_h = hf(**enc).last_hidden_state
    got_h = minilm.hidden(enc["input_ids"], token_types=enc["token_type_ids"],
                          attention_mask=enc["attention_mask"])
    real = enc["attention_mask"].bool()
    hidden_diff = (got_h[real] - ref_h[real]).abs().max().item()
    # the sentence-transformers recipe: masked mean pooling, then L2 normalisation
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = F.normalize((ref_h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
    got = embed(minilm_lm, SENTENCES, batch_size=4)  # our WordPiece tokenizer, end to end
    cos = F.cosine_similarity(got, ref).min().item()
    print(f"minilm: hidden max abs diff {hidden_diff:.2e}, embedding min cosine {cos:.8f}, "
          f"max abs diff {(got - ref).abs().max().item():.2e}")
    assert hidden_diff <= 1e-4
    assert cos >= 0.9999
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_minilm_batch_of_two_equals_two_singles(minilm, hf_minilm):
    _, tok = hf_minilm
    rows = [tok(s)["input_ids"] for s in (SENTENCES[1], SENTENCES[4])]
    both = embed_ids(minilm, rows)
    singles = torch.cat([embed_ids(minilm, [r]) for r in rows])
    torch.testing.assert_close(both, singles, atol=1e-5, rtol=0)


def test_encoders_do_not_generate(minilm_lm, capsys):
    """minilm is a sentence-embedding BERT: no engine, and no MLM head to fill [MASK] with."""
    with pytest.raises(LmforgeError, match="encoders do not generate text left to right"):
        minilm_lm.engine  # noqa: B018
    assert main(["generate", "--model", "minilm", "--prompt", "Paris is the [MASK]."]) == 2
    err = capsys.readouterr().err
    assert "no masked-LM head" in err and "Traceback" not in err
    with pytest.raises(LmforgeError, match="need an encoder"):
        embed_ids(tiny(family="decoder"), [[1, 2, 3]])
    with pytest.raises(LmforgeError, match="list of texts"):
        embed(minilm_lm, "one string")
