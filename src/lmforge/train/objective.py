"""The objective of a run: which batches it draws and how a batch becomes a loss.

    family            default objective   other choices
    decoder           causal_lm           —
    prefix            prefix_lm           causal_lm
    encoder           mlm                 + train.nsp = true: BERT's MLM + NSP (else RoBERTa)
    encoder_decoder   span_corruption     denoising (BART)

`ObjectiveModel` wraps the Transformer with the objective's extra heads (the NSP head), so
that one module holds every trained parameter: DDP and FSDP wrap it, and its forward turns
one batch into a dict of losses whose "loss" is what the trainer minimises. Only the
Transformer goes into the checkpoint directory (loadable like any model); the heads travel
in the training state.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data import batches
from lmforge.data.lines import Specials, line_index, newline_counts
from lmforge.errors import LmforgeError
from lmforge.model.heads import NSPHead
from lmforge.model.linear import linear
from lmforge.model.transformer import Transformer
from lmforge.objectives.causal_lm import causal_lm_loss
from lmforge.objectives.masked_lm import IGNORE
from lmforge.objectives.nsp import nsp_loss
from lmforge.objectives.prefix_lm import prefix_lm_loss
from lmforge.tokenizers import Tokenizer
from lmforge.train.config import TrainSettings

DEFAULTS = {"decoder": "causal_lm", "prefix": "prefix_lm", "encoder": "mlm",
            "encoder_decoder": "span_corruption"}
FAMILIES = {"causal_lm": ("decoder", "prefix"), "prefix_lm": ("prefix",), "mlm": ("encoder",),
            "span_corruption": ("encoder_decoder",), "denoising": ("encoder_decoder",)}


def resolve(family: str, t: TrainSettings) -> str:
    """The run's objective: train.objective, or the family's default; checked against it."""
    name = t.objective or DEFAULTS[family]
    if family not in FAMILIES[name]:
        raise LmforgeError(f"train.objective = {name!r} does not train a {family} model; "
                           f"use one of {[o for o, f in FAMILIES.items() if family in f]}")
    if t.nsp and name != "mlm":
        raise LmforgeError("train.nsp = true adds next-sentence prediction to masked LM; "
                           "it needs an encoder with train.objective = \"mlm\"")
    return name


def needs_specials(objective: str) -> bool:
    return objective in ("mlm", "span_corruption", "denoising")


def make_sampler(objective: str, tokens: np.ndarray, tokenizer: Tokenizer, t: TrainSettings,
                 sp: Specials | None, start: int) -> batches.Sampler:
    """The batch sampler of `objective` over one split's tokens."""
    if objective == "causal_lm":
        return batches.Windows(tokens, t.block_size)
    if objective == "prefix_lm":
        return batches.PrefixWindows(tokens, t.block_size)
    if objective == "span_corruption":
        return batches.SpanPairs(tokens, t.block_size, sp, start, t.noise_density, t.mean_span)
    newlines, blank = newline_counts(tokenizer, sp.vocab_size)
    if objective == "denoising":
        return batches.DenoisePairs(tokens, newlines, t.block_size, sp, start, t.denoising,
                                    t.noise_density)
    if t.nsp:
        lines = line_index(tokens, newlines, blank)
        return batches.SentencePairs(tokens, lines, t.block_size, sp, t.mask_rate)
    return batches.MaskedWindows(tokens, t.block_size, sp, t.mask_rate)


class ObjectiveModel(nn.Module):
    """The Transformer plus the objective's heads; forward(batch) → {"loss": …, parts…}."""

    def __init__(self, model: Transformer, objective: str, nsp: bool = False) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        if nsp:
            if not model.config.type_vocab_size:
                raise LmforgeError("train.nsp = true needs segment embeddings: set "
                                   "model.type_vocab_size = 2")
            self.nsp = NSPHead(model.config.d_model)

    def heads(self) -> dict[str, torch.Tensor]:
        """The heads' parameters (everything but the Transformer), for the training state."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def scored(self, batch: batches.Batch) -> int:
        """How many tokens the token-level loss of `batch` averages over."""
        if self.objective == "causal_lm":
            return batch["targets"].numel()
        if self.objective == "prefix_lm":
            return int((batch["targets"].shape[1] + 1 - batch["prefix"]).sum())
        return int((batch["labels"] != IGNORE).sum())

    def shard(self, batch: batches.Batch, rows: slice, world_size: int) -> batches.Batch:
        """This rank's rows of a global batch. Their token-level loss is scaled by
        `share` = world_size · n_rank / n_global, so that the ranks' average (what DDP and
        FSDP take of the gradients) is the global batch's mean over all its scored tokens,
        also when ranks score different numbers of tokens (MLM, prefix LM, seq2seq)."""
        local = {k: v[rows] for k, v in batch.items()}
        if world_size > 1:
            local["share"] = torch.tensor(world_size * self.scored(local) / self.scored(batch))
        return local

    def forward(self, batch: batches.Batch) -> dict[str, torch.Tensor]:
        out = self._losses(batch)
        if "share" in batch:
            token_loss = "mlm" if "mlm" in out else "loss"
            out["loss"] = out["loss"] + (batch["share"] - 1) * out[token_loss]
        return out

    def _losses(self, batch: batches.Batch) -> dict[str, torch.Tensor]:
        if self.objective == "causal_lm":
            return {"loss": causal_lm_loss(self.model(batch["ids"]), batch["targets"])}
        if self.objective == "prefix_lm":
            logits = self.model(batch["ids"], prefix=batch["prefix"])
            return {"loss": prefix_lm_loss(logits, batch["targets"], batch["prefix"])}
        if self.objective == "mlm":
            return self._masked(batch)
        return self._seq2seq(batch)

    def _masked(self, batch: batches.Batch) -> dict[str, torch.Tensor]:
        """MLM cross-entropy over the chosen positions only: the head runs on those rows
        (15% of the tokens), not on every position. Plus NSP on [CLS] when there is a head."""
        h = self.model.hidden(batch["ids"], token_types=batch.get("token_types"),
                              attention_mask=batch.get("attention_mask"))
        chosen = batch["labels"] != IGNORE
        logits = linear(h[chosen], self.model.head_weight()).float()
        out = {"mlm": F.cross_entropy(logits, batch["labels"][chosen])}
        if hasattr(self, "nsp"):
            nsp_logits = self.nsp(h)
            out["nsp"] = nsp_loss(nsp_logits, batch["nsp_labels"])
            out["nsp_acc"] = (nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean()
            out["loss"] = out["mlm"] + out["nsp"]
        else:
            out["loss"] = out["mlm"]
        return out

    def _seq2seq(self, batch: batches.Batch) -> dict[str, torch.Tensor]:
        """Cross-entropy of the decoder's predictions of the target (span corruption's
        sentinel-delimited spans, or denoising's original text), padding ignored."""
        memory = self.model.encode(batch["src"], attention_mask=batch["src_mask"])
        logits = self.model(batch["dec"], memory=memory, memory_mask=batch["src_mask"])
        return {"loss": F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                        ignore_index=IGNORE)}
