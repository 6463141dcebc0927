"""Starting a run from a trained model (`train.init_from`) and training only some of its
parameters (`train.trainable`).

`init_from` is anything `--model` takes: a built-in name, a GGUF file, a Hugging Face
directory, an lmforge checkpoint or run directory (`interop/load.py`). The run takes the
model's architecture from it, so the run config's [model] table must be absent or agree
with it field by field (a conflict names every field that differs). The tokenizer comes
from it too: the data directory must have been prepared with it (`lmforge prepare
--tokenizer <init_from>`); the two are compared (vocabulary, special tokens, and the split of
a sample of the data), and a difference is an error that says how to prepare the data.

`trainable` holds fnmatch patterns over the Transformer's parameter names (`embed.weight`,
`norm.weight`, `layers.29.attn.qkv.weight`, …; `*` matches dots too). Every parameter that
no pattern matches gets `requires_grad = False` and never reaches the optimizer; a pattern
that matches nothing is an error that shows real names. The objective's own heads (BERT's
NSP classifier) are new, so they are always trained.

A run with a frozen base writes checkpoints that hold only the trained parameters, plus
`base.json`: the base's `init_from` and its content hash (`interop/fingerprint.py`).
Loading one (resume, or `--model RUN_DIR`) rebuilds the base from `init_from`, checks the
hash, and puts the trained parameters on top (`interop/checkpoint.py`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.interop.fingerprint import content_hash
from lmforge.interop.load import load_weights
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizers import Tokenizer

PROBE_TOKENS = 2000  # tokens of the data decoded and re-encoded to compare tokenizers


@dataclass
class Base:
    """The model a run starts from, as `load_weights` gives it (float32, our names)."""

    spec: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer | None
    transforms: tuple = ()  # `api.build_model` transforms: a quantized base's layers


def load_base(spec: str) -> Base:
    from lmforge.compress.checkpoint import transforms_for

    try:
        config, state_dict, tokenizer, meta = load_weights(spec)
    except LmforgeError as exc:
        raise LmforgeError(f"train.init_from = {spec!r}: {exc}") from None
    return Base(spec, config, state_dict, tokenizer, tuple(transforms_for(meta, state_dict)))


def check_model_table(table: dict, config: ModelConfig, spec: str) -> None:
    """The run's [model] table, when there is one, must repeat init_from's architecture."""
    fields = config.to_dict()
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise LmforgeError(f"unknown model config key(s) {unknown} in [model]; known keys are "
                           f"{sorted(fields)}")
    conflicts = [f"{k} = {v!r} (init_from has {fields[k]!r})" for k, v in table.items()
                 if v != fields[k]]
    if conflicts:
        raise LmforgeError(f"[model] conflicts with train.init_from = {spec!r}, whose "
                           f"architecture the run takes: {', '.join(conflicts)}; remove the "
                           "[model] table or make it agree")


def tokenizer_difference(ours: Tokenizer, theirs: Tokenizer, probe: str) -> str | None:
    """How two tokenizers differ (None: they give the same ids): vocabulary, special
    tokens, or the split of `probe` (merges and pre-tokenization)."""
    if ours.vocab_size != theirs.vocab_size:
        return f"vocabularies of {ours.vocab_size} and {theirs.vocab_size} tokens"
    for i in range(ours.vocab_size):
        if ours.id_to_token(i) != theirs.id_to_token(i):
            return f"id {i} is {ours.id_to_token(i)!r} in one and {theirs.id_to_token(i)!r} " \
                   "in the other"
    if ours.special != theirs.special:
        return f"special tokens {ours.special} and {theirs.special}"
    if ours.encode(probe, parse_special=False) != theirs.encode(probe, parse_special=False):
        return "they split the data's text differently"
    return None


def run_tokenizer(base: Base, data_tokenizer: Tokenizer, data_dir: Path, meta: dict,
                  tokens: torch.Tensor | list[int]) -> Tokenizer:
    """init_from's tokenizer, checked to be the one the data was prepared with (`tokens`: a
    sample of the data); the data's when init_from has none."""
    if base.tokenizer is None:
        return data_tokenizer
    probe = data_tokenizer.decode(list(tokens[:PROBE_TOKENS]))
    difference = tokenizer_difference(base.tokenizer, data_tokenizer, probe)
    if difference is not None:
        raise LmforgeError(
            f"{data_dir} was prepared with the tokenizer {meta.get('tokenizer')!r}, which is "
            f"not train.init_from = {base.spec!r}'s ({difference}); prepare the data with it: "
            f"`lmforge prepare --tokenizer {base.spec} --input … --out …`")
    return base.tokenizer


def build_from_base(base: Base, need: int, block_size: int) -> Transformer:
    """init_from's model (its weights, not a random init); `need`: the vocabulary the data
    and the objective's special ids take."""
    from lmforge.api import build_model  # the API imports the generation engine: late

    config = base.config
    if config.vocab_size < need:
        raise LmforgeError(f"train.init_from = {base.spec!r} has a vocabulary of "
                           f"{config.vocab_size}, smaller than the data's with the objective's "
                           f"special tokens ({need}); choose an objective the model was built "
                           "for or prepare the data with its tokenizer")
    if config.max_seq_len < block_size:
        raise LmforgeError(f"train.block_size = {block_size} exceeds train.init_from = "
                           f"{base.spec!r}'s max_seq_len ({config.max_seq_len}); lower it")
    return build_model(config, base.state_dict, transforms=base.transforms)


@dataclass(frozen=True)
class FrozenBase:
    """What a run with `train.trainable` trains on top of, as recorded in base.json."""

    init_from: str
    content_hash: str
    patterns: tuple[str, ...]
    trainable: tuple[str, ...]  # the Transformer's parameters that are trained

    def record(self) -> dict:
        return {"init_from": self.init_from, "content_hash": self.content_hash,
                "trainable": list(self.patterns)}

    def check(self, checkpoint: Path, recorded: dict | None, stored: set[str]) -> None:
        """A checkpoint to resume from holds this base's trained parameters."""
        if recorded is None:
            raise LmforgeError(f"{checkpoint} holds a whole model, but train.trainable is set; "
                               "resume with the settings the run started with")
        if recorded["content_hash"] != self.content_hash:
            raise LmforgeError(
                f"{checkpoint} was trained on top of a base with content hash "
                f"{recorded['content_hash']}, but train.init_from = {self.init_from!r} now "
                f"hashes to {self.content_hash}: the base changed; restore it to resume")
        if stored != set(self.trainable):
            raise LmforgeError(f"{checkpoint} holds the parameters of train.trainable = "
                               f"{recorded['trainable']}, not of {list(self.patterns)}; resume "
                               "with the settings the run started with")


def freeze(model: nn.Module, patterns: list[str], spec: str) -> tuple[str, ...]:
    """Train only the parameters whose names match a pattern; return their names."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.3)
            spread = [names[0], names[len(names) // 2], names[-1]]
            examples = list(dict.fromkeys(close + spread))
            raise LmforgeError(f"train.trainable pattern {pattern!r} matches no parameter of "
                               f"{spec!r}; its {len(names)} parameters are named like "
                               f"{', '.join(examples)} (fnmatch: * matches any characters)")
    trainable = tuple(n for n in names if any(fnmatchcase(n, p) for p in patterns))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return trainable


def frozen_base(base: Base, model: nn.Module, patterns: list[str]) -> FrozenBase:
    """Freeze `model` (built from `base`) but `patterns`, and record the base's hash."""
    trainable = freeze(model, patterns, base.spec)
    return FrozenBase(base.spec, content_hash(base.state_dict), tuple(patterns), trainable)
