"""Cross-entropy, perplexity and bits per byte of a causal LM (decoder or prefix decoder,
read causally) over a text.

The text's T tokens are read in windows of `ctx` tokens whose starts advance by `stride`
(Hugging Face's "perplexity of fixed-length models"): window k holds tokens
[k·stride, k·stride + ctx), and scores only the tokens no earlier window scored, so every
token is scored exactly once, with up to ctx − 1 tokens of context (at least ctx − stride
after the first window). stride = ctx gives non-overlapping windows, where the first token
of each window has no context and is not scored; a smaller stride scores every token but
token 0, each with more context, for T/stride forward passes instead of T/ctx. With N
scored tokens of negative log-likelihood ℓ_i (nats):

    CE  = (1/N) Σ ℓ_i                 (nats per token)
    PPL = exp(CE)
    BPB = Σ ℓ_i / (ln 2 · B)          B = UTF-8 bytes of the text

Bits per byte does not depend on the tokenizer, so it compares models with different ones.
Each window's ℓ_i come from `lmforge.score.token_logprobs`, the scoring layer the API's
log-probabilities and task evaluation share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.score import token_logprobs


@dataclass
class EvalResult:
    tokens: int  # tokens in the text
    scored: int  # tokens whose probability counts (see the module docstring)
    bytes: int
    nll: float  # total negative log-likelihood, nats
    cross_entropy: float
    perplexity: float
    bits_per_byte: float
    ctx: int = 0  # window length
    stride: int = 0  # how far each window starts after the previous one

    def to_dict(self) -> dict:
        return asdict(self)


def sliding_windows(n_tokens: int, ctx: int, stride: int, start: int = 1
                    ) -> Iterator[tuple[int, int, int]]:
    """(begin, first, end) of each window ids[begin:end] that scores positions
    first … end − 1: every position from `start` on exactly once (position 0 never: it has
    no context). Windows that would score nothing are not yielded.

    >>> list(sliding_windows(10, ctx=4, stride=4))
    [(0, 1, 4), (4, 5, 8), (8, 9, 10)]
    >>> list(sliding_windows(10, ctx=4, stride=2))
    [(0, 1, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    """
    scored_to = max(1, start)
    for begin in range(0, n_tokens, stride):
        end = min(begin + ctx, n_tokens)
        first = max(scored_to, begin + 1)  # a window's own first token has no context
        if first < end:
            yield begin, first, end
            scored_to = end
        if end == n_tokens:
            break


def window_nll(model: Transformer, ids: torch.Tensor, first: int = 1) -> float:
    """Σ −log p(x_t | x_<t) for first ≤ t < T within one window `ids` (T,)."""
    # a decoder computes the scored positions only; a prefix decoder is read causally, so
    # it scores the whole window (`prefix` would make its context bidirectional)
    prefix = first if model.config.family == "decoder" else 0
    logprobs = token_logprobs(model, ids, prefix=prefix).logprobs[first:]
    return -logprobs.double().sum().item()


def check_window(model: Transformer, ctx: int, stride: int | None = None) -> None:
    """Raise LmforgeError when the model cannot read a text in windows of `ctx` tokens."""
    if model.config.family not in ("decoder", "prefix"):
        raise LmforgeError(f"perplexity reads a text left to right, which needs a decoder or "
                           f"prefix decoder; this model is a {model.config.family} (score it "
                           "with lmforge.score.token_logprobs)")
    if ctx < 2:
        raise LmforgeError(f"--ctx must be at least 2 tokens, got {ctx}")
    if ctx > model.config.max_seq_len:
        raise LmforgeError(f"--ctx {ctx} exceeds the model's context window "
                           f"{model.config.max_seq_len} (load it with --rope-scaling to "
                           "run past it: docs/long_context.md)")
    if stride is not None and not 1 <= stride <= ctx:
        raise LmforgeError(f"--stride must lie between 1 and --ctx ({ctx}), got {stride}")


@torch.inference_mode()
def sliding_nll(model: Transformer, ids: list[int], ctx: int, stride: int, start: int = 1,
                progress: bool = False) -> tuple[float, int]:
    """(Σ ℓ_i, N) over the positions from `start` on, read in `sliding_windows`."""
    check_window(model, ctx, stride)
    tensor = torch.tensor(ids, device=model.device)
    windows = list(sliding_windows(len(ids), ctx, stride, start))
    nll, scored = 0.0, 0
    for begin, first, end in tqdm(windows, desc=f"ctx {ctx}", unit="window",
                                  disable=not progress):
        nll += window_nll(model, tensor[begin:end], first - begin)
        scored += end - first
    return nll, scored


def evaluate(model: Transformer, ids: list[int], n_bytes: int, ctx: int = 1024,
             progress: bool = False, stride: int | None = None) -> EvalResult:
    """The text's figures (module docstring); `stride`: None for ctx (no overlap)."""
    stride = ctx if stride is None else stride
    if len(ids) < 2:
        raise LmforgeError("the text has fewer than 2 tokens: nothing to score")
    nll, scored = sliding_nll(model, ids, ctx, stride, progress=progress)
    ce = nll / scored
    return EvalResult(len(ids), scored, n_bytes, nll, ce, math.exp(ce),
                      nll / (math.log(2) * n_bytes), ctx, stride)
