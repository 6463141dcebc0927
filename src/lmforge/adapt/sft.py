"""Instruction SFT data: conversations rendered with the model's chat template, the loss on
assistant tokens only.

    >>> ex = encode_conversation(tok, [{"role": "user", "content": "Hi"},
    ...                                {"role": "assistant", "content": "Hello!"}])
    >>> # SmolLM2: <|im_start|>system … <|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n
    >>> # <|im_start|>assistant\\n [Hello ! <|im_end|>] \\n   (brackets: the scored tokens)

Files (JSONL, one example a line) in either form:
- `{"messages": [{"role": ..., "content": ...}, …]}`: a conversation, any number of turns;
  every assistant message is scored.
- the Self-Instruct seed format `{"instruction": ..., "instances": [{"input", "output"}]}`:
  one user/assistant exchange per instance, the user's text the instruction followed by a
  blank line and the input when there is one.

The assistant mask follows from the template itself, not from a guess at its markup
(TRL's "prefix" method): for each assistant message i, the ids of messages[:i] with the
generation prompt are a prefix of the ids of messages[:i+1]; the ids between the two are
the assistant's turn. It is scored up to and including its last end-of-turn token (the
tokenizer's eos and extra stop ids, `<|im_end|>` for ChatML), so the model learns to stop;
the template text after it (ChatML's newline) is masked like system and user text. A
template whose renderings are not prefixes of each other is refused.

A label is the token itself where scored, −100 elsewhere, aligned with the ids: position t's
logits predict label t+1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.model.masks import NoCache
from lmforge.tokenizers.base import Tokenizer
from lmforge.tokenizers.chat import encode_chat, validate_messages

IGNORE = -100  # torch's cross-entropy ignore_index


@dataclass
class Example:
    """One rendered conversation: ids and labels (the id where scored, IGNORE elsewhere)."""

    ids: list[int]
    labels: list[int]

    @property
    def n_scored(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def seed_exchanges(row: dict) -> list[list[dict]]:
    """One user/assistant exchange per instance of a Self-Instruct task."""
    out = []
    for inst in row.get("instances") or []:
        user = row["instruction"].strip()
        if inst.get("input", "").strip():
            user += "\n\n" + inst["input"].strip()
        out.append([{"role": "user", "content": user},
                    {"role": "assistant", "content": inst["output"].strip()}])
    return out


def read_conversations(path: str | Path) -> list[list[dict]]:
    """The conversations of a JSONL file of {"messages": …} or Self-Instruct rows."""
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"--data {p}: no such file; give a JSONL file of "
                           '{"messages": [...]} or Self-Instruct {"instruction", "instances"} rows')
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LmforgeError(f"{p}:{n} is not valid JSON ({exc})") from None
        if isinstance(row, dict) and "messages" in row:
            out.append(validate_messages(row["messages"]))
        elif isinstance(row, dict) and "instruction" in row:
            out.extend(seed_exchanges(row))
        else:
            raise LmforgeError(f"{p}:{n} has neither \"messages\" nor \"instruction\"; each line "
                               'is {"messages": [{"role", "content"}, …]} or a Self-Instruct task')
    if not out:
        raise LmforgeError(f"{p} holds no conversation")
    return out


def end_of_turn_ids(tok: Tokenizer) -> set[int]:
    return {i for i in (tok.special.eos, *tok.special.extra_stop) if i is not None}


def encode_conversation(tok: Tokenizer, messages: list[dict]) -> Example:
    """The conversation's ids, with labels on the assistant turns only (module docstring)."""
    validate_messages(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise LmforgeError("a training conversation needs an assistant message to learn from")
    ids = encode_chat(tok, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(ids)
    stops = end_of_turn_ids(tok)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = encode_chat(tok, messages[:i], add_generation_prompt=True) if i else []
        start = len(before)
        end = len(encode_chat(tok, messages[:i + 1], add_generation_prompt=False))
        if ids[:start] != before or end > len(ids):
            raise LmforgeError("this chat template renders a conversation differently from its "
                               "beginning (the ids before an assistant turn are not a prefix of "
                               "the whole), so assistant tokens cannot be told apart")
        turn = range(start, end)
        last_stop = max((t for t in turn if ids[t] in stops), default=end - 1)
        for t in range(start, last_stop + 1):
            labels[t] = ids[t]
    labels[0] = IGNORE  # nothing predicts the first token (and a packed window's doc start)
    return Example(ids, labels)


def encode_all(tok: Tokenizer, conversations: list[list[dict]], max_len: int) -> list[Example]:
    """Every conversation encoded and cut to `max_len` tokens; those left with no scored
    token are dropped (a user turn longer than max_len)."""
    out = []
    for messages in conversations:
        ex = encode_conversation(tok, messages)
        ex = Example(ex.ids[:max_len], ex.labels[:max_len])
        if ex.n_scored:
            out.append(ex)
    if not out:
        raise LmforgeError(f"no conversation has an assistant token within max_len={max_len}; "
                           "raise max_len")
    return out


def pad_batch(examples: list[Example], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows: ids, labels (IGNORE on padding), attention_mask (1 on tokens)."""
    T = max(len(ex.ids) for ex in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for r, ex in enumerate(examples):
        n = len(ex.ids)
        ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(ex.ids), torch.tensor(ex.labels), 1
    return {"ids": ids, "labels": labels, "attention_mask": mask}


def sft_store(batch: dict[str, torch.Tensor]) -> NoCache:
    """The attention of a batch: right-padded rows, or packed rows whose `docs` (B, T) number
    the conversations (0: padding), each attending causally within itself only, with its
    positions counted from 0 (so RoPE and learned positions see it as if alone)."""
    mask = batch["attention_mask"]
    if "docs" not in batch:
        B, T = mask.shape
        return NoCache.start(B, T, True, mask, device=mask.device)
    docs = batch["docs"]
    T = docs.shape[1]
    index = torch.arange(T, device=docs.device)
    starts = torch.ones_like(docs, dtype=torch.bool)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    # position = t − (index of the latest doc start at or before t)
    first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    store = NoCache(index - first, True)
    causal = index[None, :, None] >= index[None, None, :]
    store.mask = (causal & (docs[:, :, None] == docs[:, None, :]))[:, None]  # (B, 1, T, T)
    return store


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each scored label given the tokens before it (1-D, in label order):
    −log p(label_{t+1} | ids_{≤t}) over the positions whose label is not IGNORE."""
    h = model.hidden(batch["ids"], cache=sft_store(batch))
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE
    h = h[:, :-1][scored]  # (N, d): only the scored positions reach the LM head
    if model.config.head_rescale:
        h = h * model.config.d_model ** -0.5
    logits = model.lm_head(h).float()
    return F.cross_entropy(logits, targets[scored], reduction="none")


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, examples: list[Example], batch_size: int = 8
                 ) -> tuple[float, int]:
    """(mean cross-entropy over every assistant token of `examples`, their number)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = pad_batch(examples[start:start + batch_size])
        b = {k: v.to(model.device) for k, v in batch.items()}
        losses = token_losses(model, b)
        total, n = total + float(losses.double().sum()), n + losses.numel()
    model.train(was)
    return total / max(n, 1), n
