"""Filling blanks with the models that the masked objectives train.

- `fill_masks` (encoder, MLM): every `[MASK]` in the text is replaced by the model's most
  likely token there, all masks predicted at once from `[CLS] text [SEP]`, the layout of
  masked-LM training. `top_k` lists the k best candidates per mask instead.
- `fill_spans` (encoder-decoder, span corruption): the text holds T5 sentinels
  `<extra_id_0>`, `<extra_id_1>` …; the decoder writes `<extra_id_0> span <extra_id_1>
  span … [SEP]` greedily, and each span goes back in place of its sentinel. It decodes
  through the generation engine (`generate_ids`: cross-attention K/V projected once, a KV
  cache for the decoder), so each new token costs one position, not a pass over the prefix.

The special ids come from the tokenizer by `data.lines.specials_for`, as in training.
"""

from __future__ import annotations

import re

import torch

from lmforge.data.lines import N_SENTINELS, specials_for
from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Rows, generate_ids
from lmforge.model.transformer import Transformer
from lmforge.tokenizers import Tokenizer

MASK = "[MASK]"
SENTINEL = re.compile(r"<extra_id_(\d+)>")


def _encode_with(tokenizer: Tokenizer, pieces: list[str], between: list[int]) -> list[int]:
    """The ids of `pieces` with `between[i]` after piece i."""
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        ids += tokenizer.encode(piece, parse_special=False) if piece else []
        if i < len(between):
            ids.append(between[i])
    return ids


def has_mlm_head(lm) -> bool:
    """Whether a loaded encoder was trained here with masked LM (converted BERTs keep no MLM
    head, so their [MASK] logits mean nothing)."""
    return lm.config.family == "encoder" and lm.metadata.get("format") is not None


def mask_input(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids an encoder reads to fill `text`: `[CLS] text [SEP]`, each [MASK] its id."""
    pieces = text.split(MASK)
    if len(pieces) == 1:
        raise LmforgeError(f"the text has no {MASK} to fill; write e.g. 'ROM{MASK}O:'")
    sp = specials_for(tokenizer)
    return [sp.cls, *_encode_with(tokenizer, pieces, [sp.mask] * (len(pieces) - 1)), sp.sep]


@torch.no_grad()
def fill_masks(model: Transformer, tokenizer: Tokenizer, text: str, top_k: int = 0
               ) -> str | list[list[tuple[str, float]]]:
    """`text` with each [MASK] replaced by the argmax token; with `top_k`, per mask the k
    most likely (token, probability) pairs instead."""
    if model.config.family != "encoder":
        raise LmforgeError(f"fill_masks needs an encoder trained with masked LM; this model "
                           f"is a {model.config.family}")
    pieces = text.split(MASK)
    sp = specials_for(tokenizer)
    x = torch.tensor([mask_input(tokenizer, text)])
    logits = model.eval()(x)[0, x[0] == sp.mask, : sp.n_text]  # text tokens only
    if top_k:
        probs, best = logits.softmax(-1).topk(top_k, dim=-1)
        return [[(tokenizer.decode([i]), p) for i, p in zip(row.tolist(), pr.tolist(),
                                                             strict=True)]
                for row, pr in zip(best, probs, strict=True)]
    fills = [tokenizer.decode([i]) for i in logits.argmax(-1).tolist()]
    return "".join(p + (fills[i] if i < len(fills) else "") for i, p in enumerate(pieces))


@torch.no_grad()
def fill_spans(model: Transformer, tokenizer: Tokenizer, text: str, max_tokens: int = 64
               ) -> tuple[str, list[str]]:
    """(`text` with its sentinels replaced by the decoded spans, the spans in order)."""
    if model.config.family != "encoder_decoder":
        raise LmforgeError(f"fill_spans needs an encoder-decoder trained with span "
                           f"corruption; this model is a {model.config.family}")
    pieces = SENTINEL.split(text)
    texts, numbers = pieces[0::2], [int(k) for k in pieces[1::2]]
    sp = specials_for(tokenizer)
    dec = greedy_target(model, span_input(tokenizer, text), sp.sep, max_tokens)
    spans = _split_spans(dec, [sp.sentinels[k] for k in numbers], tokenizer)
    filled = "".join(t + (spans[i] if i < len(spans) else "") for i, t in enumerate(texts))
    return filled, spans


def span_input(tokenizer: Tokenizer, text: str) -> list[int]:
    """The source ids an encoder-decoder reads to fill `text`: each `<extra_id_k>` its
    sentinel's id, the text between them encoded as text."""
    pieces = SENTINEL.split(text)
    texts, numbers = pieces[0::2], [int(k) for k in pieces[1::2]]
    if not numbers or max(numbers) >= N_SENTINELS:
        raise LmforgeError(f"write the blanks as <extra_id_0>, <extra_id_1> … (fewer than "
                           f"{N_SENTINELS}); the text has {len(numbers)}")
    sp = specials_for(tokenizer)
    return _encode_with(tokenizer, texts, [sp.sentinels[k] for k in numbers])


def greedy_target(model: Transformer, source: list[int], stop_id: int, max_tokens: int
                  ) -> list[int]:
    """The encoder-decoder's greedy answer to `source`: argmax tokens after
    `decoder_start_id` until `stop_id` (not included) or `max_tokens` tokens. The same
    cached path as `lmforge generate` (`encode_source` encodes the source, the decoder
    starts from `decoder_start_id`)."""
    config = GenerationConfig(max_tokens=max_tokens, temperature=0.0)
    steps = generate_ids(model.eval(), [source], config, [stop_id], Rows([None]))
    ids = [tok for step in steps for _, tok in step]
    return ids[:-1] if ids and ids[-1] == stop_id else ids


def _split_spans(ids: list[int], sentinels: list[int], tokenizer: Tokenizer) -> list[str]:
    """The text after each expected sentinel in the decoder's output ('' where missing)."""
    spans, current = {}, None
    for i in ids:
        if i in sentinels:
            current = spans.setdefault(i, [])
        elif current is not None and i < tokenizer.vocab_size:
            current.append(i)
    return [tokenizer.decode(spans.get(s, [])) for s in sentinels]
