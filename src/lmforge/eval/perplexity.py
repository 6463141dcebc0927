"""Cross-entropy, perplexity and bits per byte of a causal LM (decoder or prefix decoder,
read causally) over a text.

The text's tokens are cut into non-overlapping windows of `ctx` tokens; each window is one
forward pass, and every token but the first of its window is scored (the first has no
context inside the window). With N scored tokens of negative log-likelihood ℓ_i (nats):

    CE  = (1/N) Σ ℓ_i                 (nats per token)
    PPL = exp(CE)
    BPB = Σ ℓ_i / (ln 2 · B)          B = UTF-8 bytes of the text

Bits per byte does not depend on the tokenizer, so it compares models with different ones.
Each window's ℓ_i come from `lmforge.score.token_logprobs`, the scoring layer the API's
log-probabilities and task evaluation share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.score import token_logprobs


@dataclass
class EvalResult:
    tokens: int  # tokens in the text
    scored: int  # tokens whose probability counts (all but the first of each window)
    bytes: int
    nll: float  # total negative log-likelihood, nats
    cross_entropy: float
    perplexity: float
    bits_per_byte: float

    def to_dict(self) -> dict:
        return asdict(self)


def window_nll(model: Transformer, ids: torch.Tensor) -> float:
    """Σ −log p(x_t | x_<t) for t ≥ 1 within one window `ids` (T,)."""
    return -token_logprobs(model, ids).total()


@torch.inference_mode()
def evaluate(model: Transformer, ids: list[int], n_bytes: int, ctx: int = 1024,
             progress: bool = False) -> EvalResult:
    if model.config.family not in ("decoder", "prefix"):
        raise LmforgeError(f"perplexity reads a text left to right, which needs a decoder or "
                           f"prefix decoder; this model is a {model.config.family} (score it "
                           "with lmforge.score.token_logprobs)")
    if ctx < 2:
        raise LmforgeError(f"--ctx must be at least 2 tokens, got {ctx}")
    if ctx > model.config.max_seq_len:
        raise LmforgeError(f"--ctx {ctx} exceeds the model's context window "
                           f"{model.config.max_seq_len}")
    if len(ids) < 2:
        raise LmforgeError("the text has fewer than 2 tokens: nothing to score")
    tensor = torch.tensor(ids)
    starts = range(0, len(ids), ctx)
    nll, scored = 0.0, 0
    for start in tqdm(starts, desc="eval", unit="window", disable=not progress):
        window = tensor[start: start + ctx]
        if len(window) < 2:
            continue
        nll += window_nll(model, window)
        scored += len(window) - 1
    ce = nll / scored
    return EvalResult(len(ids), scored, n_bytes, nll, ce, math.exp(ce),
                      nll / (math.log(2) * n_bytes))
