"""The registry of training objectives: one entry per objective, bundling what it needs.

    family            default objective   other choices
    decoder           causal_lm           —
    prefix            prefix_lm           causal_lm
    encoder           mlm                 + train.nsp = true: BERT's MLM + NSP (else RoBERTa)
    encoder_decoder   span_corruption     denoising (BART)

An entry (`Objective`) says
- which families it trains (`families`) and whether it needs the special ids of
  `data/lines.py` (`specials`);
- how its batches are drawn (`sampler`: a `data/batches.py` sampler over one split);
- which positions it scores (`scored`: how many positions its token-level loss averages
  over, which data parallelism needs to weight the ranks);
- its loss (`losses`: {"loss": what the trainer minimises, parts…}, from the model and the
  entry's extra `heads`, such as BERT's NSP classifier);
- what evaluation reports beside the loss (`lm`: perplexity; `bits_per_byte`).

The trainer knows no objective by name: adding one (SFT, distillation, probing) is adding
an entry here. The formulas are in the `objectives/` modules each entry calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data import batches
from lmforge.data.lines import Specials, line_index, newline_counts
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.heads import NSPHead
from lmforge.objectives.causal_lm import causal_lm_loss
from lmforge.objectives.distillation import Teacher, distill_loss
from lmforge.objectives.masked_lm import IGNORE
from lmforge.objectives.nsp import nsp_loss
from lmforge.objectives.prefix_lm import prefix_lm_loss
from lmforge.tokenizers import Tokenizer

if TYPE_CHECKING:
    from lmforge.train.config import TrainSettings

Losses = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SamplerInputs:
    """What a sampler needs besides one split's tokens."""

    tokenizer: Tokenizer
    settings: TrainSettings
    specials: Specials | None  # the objective's special ids (`specials` entries only)
    start: int  # the decoder's first input (encoder-decoders)


class Objective(ABC):
    """One training objective; `task` below is the `train.objective.ObjectiveModel` that
    holds the Transformer as `task.model` and the entry's heads under their names."""

    name: ClassVar[str]
    families: ClassVar[tuple[str, ...]]
    specials: ClassVar[bool] = False
    lm: ClassVar[bool] = False
    bits_per_byte: ClassVar[bool] = False
    token_loss: ClassVar[str] = "loss"  # the output that averages over `scored` positions

    @abstractmethod
    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler: ...

    @abstractmethod
    def scored(self, batch: batches.Batch) -> int: ...

    @abstractmethod
    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses: ...

    def heads(self, config: ModelConfig) -> dict[str, nn.Module]:
        """Modules trained beside the Transformer (kept in the training state)."""
        return {}


class CausalLM(Objective):
    """Next-token prediction on random windows (`objectives/causal_lm.py`)."""

    name, families = "causal_lm", ("decoder", "prefix")
    lm = bits_per_byte = True  # it scores every token, hence every byte of the text

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        return batches.Windows(tokens, inputs.settings.block_size)

    def scored(self, batch: batches.Batch) -> int:
        return batch["targets"].numel()

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        return {"loss": causal_lm_loss(task.model(batch["ids"]), batch["targets"])}


class PrefixLM(Objective):
    """Windows with a bidirectional prefix; the loss on the part after it
    (`objectives/prefix_lm.py`)."""

    name, families, lm = "prefix_lm", ("prefix",), True

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        return batches.PrefixWindows(tokens, inputs.settings.block_size)

    def scored(self, batch: batches.Batch) -> int:
        return int((batch["targets"].shape[1] + 1 - batch["prefix"]).sum())

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        logits = task.model(batch["ids"], prefix=batch["prefix"])
        return {"loss": prefix_lm_loss(logits, batch["targets"], batch["prefix"])}


class MaskedLM(Objective):
    """RoBERTa's masked LM: 80/10/10 corruption, loss at the chosen positions only
    (`objectives/masked_lm.py`)."""

    name, families, specials, token_loss = "mlm", ("encoder",), True, "mlm"

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        t = inputs.settings
        return batches.MaskedWindows(tokens, t.block_size, inputs.specials, t.mask_rate)

    def scored(self, batch: batches.Batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def hidden(self, task: nn.Module, batch: batches.Batch) -> tuple[torch.Tensor, Losses]:
        """The final hidden states and the MLM loss: the head runs on the chosen rows only
        (15% of the tokens), not on every position."""
        h = task.model.hidden(batch["ids"], token_types=batch.get("token_types"),
                              attention_mask=batch.get("attention_mask"))
        chosen = batch["labels"] != IGNORE
        logits = task.model.lm_head(h[chosen]).float()  # the head module: replaceable
        return h, {"mlm": F.cross_entropy(logits, batch["labels"][chosen])}

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        _, out = self.hidden(task, batch)
        return {**out, "loss": out["mlm"]}


class MaskedLMNSP(MaskedLM):
    """BERT: masked LM on sentence pairs plus next-sentence prediction on [CLS]
    (`objectives/nsp.py`); L = L_MLM + L_NSP."""

    name = "mlm+nsp"

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        t, sp = inputs.settings, inputs.specials
        newlines, blank = newline_counts(inputs.tokenizer, sp.vocab_size)
        lines = line_index(tokens, newlines, blank)
        return batches.SentencePairs(tokens, lines, t.block_size, sp, t.mask_rate)

    def heads(self, config: ModelConfig) -> dict[str, nn.Module]:
        if not config.type_vocab_size:
            raise LmforgeError("train.nsp = true needs segment embeddings: set "
                               "model.type_vocab_size = 2")
        return {"nsp": NSPHead(config.d_model)}

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        h, out = self.hidden(task, batch)
        nsp_logits = task.nsp(h)
        out["nsp"] = nsp_loss(nsp_logits, batch["nsp_labels"])
        out["nsp_acc"] = (nsp_logits.argmax(-1) == batch["nsp_labels"]).float().mean()
        out["loss"] = out["mlm"] + out["nsp"]
        return out


class SpanCorruption(Objective):
    """T5: sentinel-delimited spans dropped from the source, listed in the target
    (`objectives/span_corruption.py`)."""

    name, families, specials = "span_corruption", ("encoder_decoder",), True

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        t = inputs.settings
        return batches.SpanPairs(tokens, t.block_size, inputs.specials, inputs.start,
                                 t.noise_density, t.mean_span)

    def scored(self, batch: batches.Batch) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        """Cross-entropy of the decoder's predictions of the target, padding ignored."""
        memory = task.model.encode(batch["src"], attention_mask=batch["src_mask"])
        logits = task.model(batch["dec"], memory=memory, memory_mask=batch["src_mask"])
        return {"loss": F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                        ignore_index=IGNORE)}


class Denoising(SpanCorruption):
    """BART: the original text from a noised copy (`objectives/denoising.py`)."""

    name = "denoising"

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        t, sp = inputs.settings, inputs.specials
        newlines, _ = newline_counts(inputs.tokenizer, sp.vocab_size)
        return batches.DenoisePairs(tokens, newlines, t.block_size, sp, inputs.start,
                                    t.denoising, t.noise_density)


class Distill(Objective):
    """Knowledge distillation of a decoder (`objectives/distillation.py`):
    L = α·T²·KL(teacher ‖ student at T) + (1 − α)·CE, the teacher's targets in each batch from
    `teacher` (`adapt/distill.py`: on the fly, or a top-k cache). The registered entry has
    no teacher; `lmforge distill` configures one from its [distill] table."""

    name, families = "distill", ("decoder",)

    def __init__(self, teacher: Teacher | None = None, temperature: float = 2.0,
                 alpha: float = 0.5) -> None:
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def sampler(self, tokens: np.ndarray, inputs: SamplerInputs) -> batches.Sampler:
        if self.teacher is None:
            raise LmforgeError("train.objective = \"distill\" needs a teacher: run `lmforge "
                               "distill --config FILE`, whose [distill] table names it")
        return self.teacher.sampler(tokens, inputs.settings.block_size)

    def scored(self, batch: batches.Batch) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def losses(self, task: nn.Module, batch: batches.Batch) -> Losses:
        return distill_loss(task.model(batch["ids"]), batch["targets"],
                            batch["teacher_logprobs"], batch.get("teacher_ids"),
                            self.temperature, self.alpha)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    CausalLM(), PrefixLM(), MaskedLM(), SpanCorruption(), Denoising(), Distill())}
DEFAULTS = {"decoder": "causal_lm", "prefix": "prefix_lm", "encoder": "mlm",
            "encoder_decoder": "span_corruption"}
MLM_NSP = MaskedLMNSP()  # `objective = "mlm"` with `nsp = true`


def resolve(family: str, t: TrainSettings) -> Objective:
    """The run's objective: train.objective, or the family's default; checked against it."""
    name = t.objective or DEFAULTS[family]
    if family not in OBJECTIVES[name].families:
        raise LmforgeError(f"train.objective = {name!r} does not train a {family} model; use "
                           f"one of {[n for n, o in OBJECTIVES.items() if family in o.families]}")
    if t.nsp and name != "mlm":
        raise LmforgeError("train.nsp = true adds next-sentence prediction to masked LM; "
                           "it needs an encoder with train.objective = \"mlm\"")
    return MLM_NSP if t.nsp else OBJECTIVES[name]
