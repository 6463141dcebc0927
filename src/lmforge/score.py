"""Scoring: the log-probabilities a model gives to the tokens it is shown.

The one scoring layer under perplexity (`lmforge.eval.perplexity`), task evaluation and the
API's `logprobs`. Two functions:

- `token_logprobs(model, ids)`: log p of every token of one sequence from one forward pass
  (an encoder: one pass per scored token, batched), with the top-k alternatives and whether
  each token is the argmax (greedy) choice.
- `loglikelihood(model, context, continuations)`: Σ log p of each continuation given the
  context, and whether the whole continuation is the greedy one. The context and the trie
  of the continuations are read in one pass, each token attending to its own path (tree
  attention, `lmforge.continuation_tree`), several requests as a right-padded batch.

What "log p(x_t)" means per family (t counts from 0 over `ids`; `prefix` tokens of context
come first and are never scored):

    decoder           log p(x_t | x_<t)                                   t ≥ max(1, prefix)
    prefix decoder    log p(x_t | x_<t), x_<prefix read bidirectionally   t ≥ max(1, prefix)
    encoder-decoder   log p(y_t | y_<t, source), the decoder reading
                      [decoder_start_id, y_0 … y_{t−1}]                   t ≥ prefix
    encoder (PLL)     log p(x_t | x_\\t): x_t replaced by [MASK]          t ≥ prefix

First-token rule: a decoder's token 0 has nothing to be predicted from, so it has no
log-probability (NaN in `TokenScores`, None in `TokenScores.tolist()`, as OpenAI's
completions API gives null); `loglikelihood` therefore needs a non-empty context for the
decoder families (give the tokenizer's BOS token when there is no natural one).

The encoder's pseudo-log-likelihood (Salazar et al., 2020, "Masked Language Model
Scoring") is not a probability of the sequence: the terms condition on the other tokens,
both sides, so their sum is not normalised over sequences and compares only between
encoders, never with a decoder's log-likelihood.

Logits are fp32 (the model's head casts them); log-softmax is logit − logsumexp with the
normaliser accumulated in float64 (`continuation_tree.distribution_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmforge.continuation_tree import continuation_scores, distribution_scores
from lmforge.errors import LmforgeError
from lmforge.model.cross_attention import CrossMemory
from lmforge.model.transformer import Transformer

PLL_TOKENS = 8192  # tokens per forward pass of an encoder's masked copies


@dataclass
class TokenScores:
    """Per-position scores of one sequence (an encoder-decoder's: the target's).

    Positions without a log-probability (a decoder's token 0, the context before `prefix`)
    hold NaN in `logprobs` and `top_logprobs`, False in `greedy` and −1 in `top_ids`."""

    ids: torch.Tensor  # (T,) the scored tokens
    logprobs: torch.Tensor  # (T,) fp32 log p(ids[t] | …)
    greedy: torch.Tensor  # (T,) bool: ids[t] is the argmax of its distribution
    top_ids: torch.Tensor  # (T, k) the k most likely ids, most likely first
    top_logprobs: torch.Tensor  # (T, k) their log-probabilities

    @property
    def scored(self) -> torch.Tensor:
        """(T,) bool: the positions that have a log-probability."""
        return ~self.logprobs.isnan()

    def total(self) -> float:
        """Σ log p over the scored positions (accumulated in float64)."""
        return self.logprobs[self.scored].double().sum().item()

    def tolist(self) -> list[float | None]:
        """The log-probabilities as the API returns them: None where there is none."""
        return [None if math.isnan(x) else x for x in self.logprobs.tolist()]


@dataclass
class Loglikelihood:
    """One continuation's score given the context."""

    logprob: float  # Σ_t log p(c_t | context, c_<t)
    is_greedy: bool  # every c_t is the argmax given what precedes it
    token_logprobs: list[float]  # log p(c_t | context, c_<t), one per continuation token


def _as_ids(model: Transformer, ids: Sequence[int] | torch.Tensor, what: str) -> torch.Tensor:
    """`ids` as a (T,) long tensor on the model's device, checked against its vocabulary."""
    x = torch.as_tensor(ids, dtype=torch.long, device=model.device).flatten()
    vocab = model.config.vocab_size
    bad = x[(x < 0) | (x >= vocab)]
    if len(bad):
        raise LmforgeError(f"token id {bad[0].item()} in the {what} is outside the model's "
                           f"vocabulary of {vocab} ids")
    return x


def _check_window(model: Transformer, n: int, what: str) -> None:
    limit = model.config.max_seq_len
    if n > limit:
        raise LmforgeError(f"the {what} has {n} tokens but the model's context window is "
                           f"{limit}; shorten it")


def _memory(model: Transformer, source: Sequence[int] | torch.Tensor | None) -> CrossMemory:
    """An encoder-decoder's cross-attention memory of one source (batch of 1)."""
    if source is None or len(source) == 0:
        raise LmforgeError("an encoder-decoder scores a target against a source: pass a "
                           "non-empty source (for loglikelihood, the context)")
    src = _as_ids(model, source, "source")
    _check_window(model, len(src), "source")
    return model.cross_memory(model.encode(src[None]))


def _pll_logits(model: Transformer, ids: torch.Tensor, positions: torch.Tensor,
                mask_id: int | None) -> torch.Tensor:
    """Logits (P, V) at each position p of `positions`, read from a copy of `ids` whose
    token p is [MASK] (Salazar et al., 2020): the copies go through in batches, each
    computing its masked position only (`keep`)."""
    if mask_id is None or not 0 <= mask_id < model.config.vocab_size:
        raise LmforgeError(f"an encoder scores a token by masking it: pass mask_id, the "
                           f"[MASK] id below the vocabulary of {model.config.vocab_size} "
                           f"(lmforge.data.lines.specials_for(tokenizer).mask); got {mask_id}")
    rows = max(1, PLL_TOKENS // len(ids))
    out = []
    for chunk in positions.split(rows):
        copies = ids.repeat(len(chunk), 1)  # (n, T)
        copies[torch.arange(len(chunk), device=ids.device), chunk] = mask_id
        out.append(model(copies, keep=chunk[:, None])[:, 0])  # (n, V)
    return torch.cat(out)


def _logits(model: Transformer, x: torch.Tensor, positions: torch.Tensor,
            source: Sequence[int] | torch.Tensor | None, prefix: int, mask_id: int | None
            ) -> torch.Tensor:
    """The logits (P, V) of the distributions that predict x at `positions` (P,)."""
    family = model.config.family
    if family == "encoder":
        return _pll_logits(model, x, positions, mask_id)
    if family == "encoder_decoder":
        memory = _memory(model, source)
        # the decoder reads [start, y_0 … y_{T−2}]; its output at t predicts y_t
        dec = torch.cat([x.new_tensor([model.config.decoder_start_id]), x[:-1]])
        return model(dec[None], keep=positions[None], memory=memory)[0]
    kw = {"prefix": x.new_tensor([prefix])} if family == "prefix" and prefix else {}
    # the output at t − 1 predicts x_t: compute those positions only (`keep`)
    return model(x[None], keep=(positions - 1)[None], **kw)[0]


@torch.inference_mode()
def token_logprobs(model: Transformer, ids: Sequence[int] | torch.Tensor, *, top: int = 0,
                   prefix: int = 0, source: Sequence[int] | torch.Tensor | None = None,
                   mask_id: int | None = None) -> TokenScores:
    """Log-probability of every token of `ids` under `model` (formulas in the module doc).

    top: also the k most likely ids per position and their log-probabilities (the API's
    top_logprobs). prefix: the first `prefix` tokens are context only, not scored; a prefix
    decoder also reads them bidirectionally, as in its training (0: fully causal). source:
    an encoder-decoder's source (then `ids` is the target). mask_id: an encoder's [MASK]
    id (`lmforge.data.lines.specials_for(tokenizer).mask`); the encoder sees `ids` exactly
    as given, so add [CLS] … [SEP] when it was trained with them.
    """
    x = _as_ids(model, ids, "sequence")
    T = len(x)
    if T == 0:
        raise LmforgeError("the sequence to score is empty: give at least one token")
    if not 0 <= prefix <= T:
        raise LmforgeError(f"prefix={prefix} must lie between 0 and the sequence's {T} tokens")
    if top < 0 or top > model.config.vocab_size:
        raise LmforgeError(f"top={top} must lie between 0 and the vocabulary size "
                           f"{model.config.vocab_size}")
    _check_window(model, T, "sequence")
    first = prefix if model.config.family in ("encoder", "encoder_decoder") else max(1, prefix)
    positions = torch.arange(first, T, device=x.device)
    if len(positions):
        logits = _logits(model, x, positions, source, prefix, mask_id)
    else:  # nothing to score (a decoder's single token, or all context)
        logits = torch.zeros(0, model.config.vocab_size, device=x.device)
    lp, greedy, best, best_lp = distribution_scores(logits, x[positions], top)
    scores = TokenScores(x, torch.full((T,), math.nan, device=x.device),
                         torch.zeros(T, dtype=torch.bool, device=x.device),
                         torch.full((T, top), -1, dtype=torch.long, device=x.device),
                         torch.full((T, top), math.nan, device=x.device))
    scores.logprobs[positions] = lp
    scores.greedy[positions] = greedy
    scores.top_ids[positions] = best
    scores.top_logprobs[positions] = best_lp
    return scores


Request = tuple[Sequence[int], Sequence[Sequence[int]]]  # (context, continuations)


@torch.inference_mode()
def loglikelihood(model: Transformer, context: Sequence[int],
                  continuations: Sequence[Sequence[int]], *, batch: int = 8,
                  mask_id: int | None = None, truncate: bool = False) -> list[Loglikelihood]:
    """Σ_t log p(c_t | context, c_<t) of each continuation c, and whether every c_t is the
    argmax (lm-evaluation-harness's `loglikelihood` requests).

    Decoder and prefix decoder: the context and the trie of the continuations go through
    one pass as one row, each token seeing its own path (tree attention,
    `lmforge.continuation_tree`; a prefix decoder reads the context as its bidirectional
    prefix), so the context and any first tokens the continuations share are read once.
    Encoder-decoder: the context is the source, encoded once; the continuations are the
    targets, as a trie. Encoder: the pseudo-log-likelihood of the continuation's tokens
    within context + continuation (needs `mask_id`). `batch`: the most rows (requests) per
    pass. `truncate`: a context too long for the window loses its oldest tokens instead of
    raising (`fit_window`).
    Equal, up to rounding, to `token_logprobs(model, context + c, prefix=len(context))`
    (an encoder-decoder: `token_logprobs(model, c, source=context)`).
    """
    return loglikelihood_requests(model, [(context, continuations)], batch=batch,
                                  mask_id=mask_id, truncate=truncate)[0]


@torch.inference_mode()
def loglikelihood_requests(model: Transformer, requests: Sequence[Request], *,
                           batch: int = 8, mask_id: int | None = None,
                           truncate: bool = False) -> list[list[Loglikelihood]]:
    """`loglikelihood` of several (context, continuations) requests at once: the examples
    of a task evaluated together.

    Each request is one row (its context and its continuations' trie), rows sorted by length
    and cut into right-padded passes of at most `batch` rows (`lmforge.continuation_tree`),
    so small examples fill the matrix products. Equal, up to rounding, to one
    `loglikelihood` per request.
    """
    if batch < 1:
        raise LmforgeError(f"batch must be at least 1, got {batch}")
    if truncate:
        requests = [fit_window(model, ctx, conts) for ctx, conts in requests]
    checked = [_check_request(model, i, ctx, conts) for i, (ctx, conts) in enumerate(requests)]
    if model.config.family == "encoder":
        return [[_summed(token_logprobs(model, [*ctx, *c], prefix=len(ctx), mask_id=mask_id))
                 for c in conts] for ctx, conts in checked]
    if not any(conts for _, conts in checked):
        return [[] for _ in checked]
    return _tree_loglikelihood(model, [r for r in checked if r[1]], batch, checked)


def fit_window(model: Transformer, context: Sequence[int],
               continuations: Sequence[Sequence[int]]) -> Request:
    """(context, continuations) with the context's oldest tokens dropped so that it and its
    longest continuation fit the model's window (an encoder-decoder: the context alone, its
    source), as lm-evaluation-harness truncates a request on the left. A continuation that
    alone overflows the window cannot be scored: an error names it."""
    window = model.config.max_seq_len
    longest = max((len(c) for c in continuations), default=0)
    if longest > window or (longest == window and model.config.family != "encoder_decoder"):
        raise LmforgeError(f"a continuation of {longest} tokens does not fit this model's "
                           f"context window of {window} tokens, even after its context: this "
                           "task's answers are too long for the model")
    keep = window if model.config.family == "encoder_decoder" else window - longest
    context = list(context)
    if len(context) > keep:
        context = context[len(context) - keep:]
    return context, continuations


def _check_request(model: Transformer, n: int, context: Sequence[int],
                   continuations: Sequence[Sequence[int]]
                   ) -> tuple[list[int], list[list[int]]]:
    """(context, continuations) as lists of ids, every length checked against the window."""
    what = f"request {n}: " if n else ""
    for i, c in enumerate(continuations):
        if len(c) == 0:
            raise LmforgeError(f"{what}continuation {i} is empty: give at least one token "
                               "to score")
    if model.config.family == "encoder" or not continuations:
        return list(context), [list(c) for c in continuations]
    if len(context) == 0:
        raise LmforgeError(f"{what}the context is empty: a decoder's first continuation token "
                           "would have nothing to be predicted from (an encoder-decoder reads "
                           "the context as its source); start it with a token such as BOS")
    context = _as_ids(model, context, f"{what}context").tolist()
    # an encoder-decoder's context is its source: each continuation has the window alone
    separate = model.config.family == "encoder_decoder"
    if separate:
        _check_window(model, len(context), f"{what}context (the source)")
    for i, c in enumerate(continuations):
        _as_ids(model, c, f"{what}continuation {i}")
        _check_window(model, len(c) + (0 if separate else len(context)),
                      f"{what}{'' if separate else 'context + '}continuation {i}")
    return context, [list(c) for c in continuations]


def _summed(scores: TokenScores) -> Loglikelihood:
    scored = scores.scored
    return Loglikelihood(scores.total(), bool(scores.greedy[scored].all()),
                         scores.logprobs[scored].tolist())


def _tree_loglikelihood(model: Transformer, requests: list[tuple[list[int], list[list[int]]]],
                        batch: int, layout: list) -> list[list[Loglikelihood]]:
    """Every continuation of `requests` scored as its context's tree
    (`continuation_tree.continuation_scores`); the results in the shape of `layout` (the
    requests with those without continuations)."""
    it = (Loglikelihood(lp.double().sum().item(), bool(greedy.all()), lp.tolist())
          for lp, greedy in continuation_scores(model, requests, batch))
    return [[next(it) for _ in conts] for _, conts in layout]
