"""Calibration for GPTQ: token windows of a text, and the statistics a block's projections
see on them, one block at a time.

- `calibration_batches`: random windows of `seq_len` tokens from a text file, seeded. The
  GPTQ paper draws 128 random 2048-token segments of C4; we draw from a local file (for
  example WikiText-2's training split), each window starting at a word boundary at a
  uniformly random character and cut to its first `seq_len` tokens.
- `block_inputs`: the arguments the model passes to its first block, per batch, captured by
  a pre-hook that stops the forward pass there (the reference implementation's "Catcher");
  the model's code is not touched, and the same arguments (positions, RoPE tables, the
  key/value store of a pass without a cache) then feed every block.
- `collect_hessians`: H = 2XXᵀ / n per projection of one block (X: its inputs, one column
  per token, n tokens), gathered by forward hooks; the sum runs in float32.
- `run_block`: the block's outputs, which become the next block's inputs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.tokenizers.base import Tokenizer

Inputs = list[tuple]  # per batch: the positional arguments of a block, hidden states first
_SPACE = re.compile(r"\s")


def _window(tokenizer: Tokenizer, text: str, seq_len: int, chars: int,
            rng: random.Random) -> list[int]:
    """`seq_len` tokens from a random word boundary of `text`; `chars` is the first guess
    of the characters needed, doubled until the span holds more than `seq_len` tokens (the
    last token of a span may be a cut word, so it is never kept)."""
    start = rng.randrange(max(1, len(text) - chars))
    found = _SPACE.search(text, start)
    start = found.end() if start and found else start
    while True:
        ids = tokenizer.encode(text[start:start + chars], parse_special=False, add_bos=False)
        if len(ids) > seq_len:
            return ids[:seq_len]
        if start == 0 and chars >= len(text):
            raise LmforgeError(f"the calibration text has {len(ids)} tokens, not more than "
                               f"seq_len={seq_len}: use a longer text or a smaller seq_len")
        chars *= 2
        start = max(0, min(start, len(text) - chars))


def calibration_batches(tokenizer: Tokenizer, path: str | Path, n_samples: int = 128,
                        seq_len: int = 512, seed: int = 0) -> list[torch.Tensor]:
    """`n_samples` windows of `seq_len` token ids, each a (1, seq_len) tensor, drawn from
    the text file at `path` with `random.Random(seed)`."""
    if n_samples < 1 or seq_len < 1:
        raise LmforgeError(f"n_samples and seq_len must be ≥ 1, got {n_samples} and {seq_len}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LmforgeError(f"cannot read the calibration text {path}: {e}") from None
    if not text.strip():
        raise LmforgeError(f"the calibration text {path} is empty")
    # characters per token, measured on the start of the text, sizes the first span
    head = text[:20000]
    per_token = len(head) / max(1, len(tokenizer.encode(head, parse_special=False,
                                                        add_bos=False)))
    chars = int(seq_len * per_token * 1.5) + 64
    rng = random.Random(seed)
    return [torch.tensor([_window(tokenizer, text, seq_len, chars, rng)])
            for _ in range(n_samples)]


class _Captured(Exception):
    """Raised by the pre-hook of the first block: its inputs are all that is needed."""


def block_inputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> Inputs:
    """The positional arguments of `model.layers[0]` for each batch of token ids."""
    captured: Inputs = []

    def catch(module: nn.Module, args: tuple) -> None:
        captured.append(args)
        raise _Captured

    handle = model.layers[0].register_forward_pre_hook(catch)
    try:
        for ids in batches:
            if ids.is_floating_point() or ids.dim() not in (1, 2):
                raise LmforgeError(f"calibration batches are token ids, (B, T) or (T,) "
                                   f"integers; got {ids.dtype} of shape {tuple(ids.shape)}")
            ids = ids if ids.dim() == 2 else ids.view(1, -1)
            try:
                model.hidden(ids.to(model.device))
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, inputs: Inputs) -> Inputs:
    """The block's outputs, as the next block's arguments (the rest stay the same)."""
    return [(block(*args), *args[1:]) for args in inputs]


def collect_hessians(block: nn.Module, modules: Mapping[str, nn.Module], inputs: Inputs
                     ) -> dict[str, torch.Tensor]:
    """H = 2XXᵀ / n (in × in, float32) of each of `modules` (projections inside `block`),
    from one pass of the block over `inputs`; all zeros for one that saw no token (an MoE
    expert no token was routed to)."""
    sums = {n: torch.zeros(m.in_features, m.in_features, device=m.weight.device)
            for n, m in modules.items()}
    counts = dict.fromkeys(modules, 0)

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (n, in)
            sums[name].addmm_(x.t(), x)
            counts[name] += x.shape[0]
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    try:
        for args in inputs:
            block(*args)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] * (2 / max(1, counts[n])) for n in modules}
