"""Sentence embeddings from an encoder: tokens → hidden states → masked mean → unit length.

    >>> import lmforge
    >>> from lmforge.embed import embed
    >>> lm = lmforge.load("minilm")
    >>> v = embed(lm, ["A cat sits on the mat.", "Un chat est assis sur le tapis."])
    >>> float(v[0] @ v[1])  # cosine similarity: the vectors have unit length

The recipe of Sentence-BERT (Reimers & Gurevych, 2019) that all-MiniLM-L6-v2 was trained
with: [CLS] text [SEP] through the encoder, the mean of the token vectors over the attention
mask, L2-normalised. Texts are batched by length (less padding, as sentence-transformers
does) and padded on the right; the padding mask keeps the result of a text independent of
what it is batched with. `embed_ids` is the same on token ids, for callers that tokenize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lmforge.errors import LmforgeError
from lmforge.model.heads import l2_normalize, mean_pool
from lmforge.model.transformer import Transformer

if TYPE_CHECKING:
    from lmforge.api import LoadedModel


def pad_batch(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and the attention mask (B, T) of 1 (token) / 0 (padding)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _truncate(row: list[int], max_len: int) -> list[int]:
    # keep the closing token ([SEP]): the model never saw a sequence without it
    return row if len(row) <= max_len else row[: max_len - 1] + row[-1:]


@torch.inference_mode()
def embed_ids(model: Transformer, rows: list[list[int]],
              token_types: list[list[int]] | None = None, batch_size: int = 32,
              normalize: bool = True) -> torch.Tensor:
    """(N, d_model) fp32 mean-pooled embeddings of N token-id rows (with their specials)."""
    if model.config.causal:
        raise LmforgeError("sentence embeddings need an encoder (family 'encoder'); this "
                           f"model is a {model.config.family}")
    if not rows or any(len(r) == 0 for r in rows):
        raise LmforgeError("embed needs at least one row, and no empty rows")
    max_len = model.config.max_seq_len
    rows = [_truncate(r, max_len) for r in rows]
    types = [_truncate(t, max_len) for t in token_types] if token_types is not None else None
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), model.config.d_model)
    device = model.embed.weight.device
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        ids, mask = pad_batch([rows[i] for i in chunk])
        tt = pad_batch([types[i] for i in chunk])[0].to(device) if types is not None else None
        h = model.hidden(ids.to(device), token_types=tt, attention_mask=mask.to(device))
        pooled = mean_pool(h, mask.to(device))
        out[chunk] = (l2_normalize(pooled) if normalize else pooled).cpu()
    return out


def embed(lm: LoadedModel, texts: list[str], batch_size: int = 32,
          normalize: bool = True) -> torch.Tensor:
    """(len(texts), d_model) fp32 sentence embeddings, unit length unless normalize=False."""
    if isinstance(texts, str):
        raise LmforgeError("embed takes a list of texts, not one string")
    pairs = [sentence_ids(lm.tokenizer, t) for t in texts]
    return embed_ids(lm.model, [p[0] for p in pairs], [p[1] for p in pairs], batch_size,
                     normalize)


def sentence_ids(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(ids, token types) of `[CLS] text [SEP]`: a WordPiece tokenizer's own pair encoding,
    else the layout of lmforge's masked-LM training (`data.lines.specials_for`)."""
    if hasattr(tokenizer, "encode_pair"):
        return tokenizer.encode_pair(text)
    from lmforge.data.lines import specials_for

    sp = specials_for(tokenizer)
    ids = [sp.cls, *tokenizer.encode(text, parse_special=False), sp.sep]
    return ids, [0] * len(ids)
