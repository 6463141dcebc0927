"""Statistical word segmentation: an lmforge encoder that tags each character B/M/E/S.

    lmforge segment-train --config configs/msr-tagger.toml        # writes the run directory
    lmforge segment --model runs/msr-tagger --input text.txt      # words, space-separated

The config has three tables: [model] (ModelConfig fields; the family is "encoder", the
vocabulary and `max_seq_len` come from the data), [tagger] (`TaggerSettings`: where the
training sentences come from) and [train] (the trainer's settings, `train/config.py`).
Training goes through the trainer's own loop (`train/loop.py: run_steps`) with the
token-classification objective (`segment/tokcls.py`): the same schedule, clipping, bf16
autocast, checkpoints and `best/`, exact `--resume`, metrics.jsonl and loss.png.

The vocabulary is the characters seen at least `min_count` times in the dictionary and the
training text (after `windows.fullwidth`); rarer ones are [UNK], so that the [UNK] vector is
trained for the unseen characters of new text. Segmenting cuts each line into the same
windows as training (`windows.spans`), scores the tags, and decodes each window with the
B/M/E/S-constrained Viterbi search (`bmes.viterbi`), so the output is always a sequence of
words that join back into the line.

A run directory is a tagger's when it holds `tagger.json` (format `lmforge-tagger/1`: the
tags, the window length, the settings); the heads (the tag head and the dictionary
features' map) are the objective's, kept in the checkpoint's training state
(`train_state.pt`, "heads"). A tagger trained with dictionary features reads its dictionary
(tagger.dict) again when it segments.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.interop.checkpoint import load_checkpoint, resolve_run
from lmforge.io import atomic_write_text
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.segment.bmes import TAGS, viterbi, words_of
from lmforge.segment.corpus import TaggerSettings, load_config, training_sentences
from lmforge.segment.dictionary import Dictionary, read_words
from lmforge.segment.tokcls import TokenCls, tag_logits
from lmforge.segment.windows import (
    N_BITS,
    TagRows,
    char_ids,
    fullwidth,
    match_bits,
    pad_rows,
    spans,
    tagged_rows,
)
from lmforge.tokenizers.char import CharTokenizer
from lmforge.train import distributed
from lmforge.train.loop import run_steps
from lmforge.train.metrics import MetricsLog
from lmforge.train.objective import ObjectiveModel
from lmforge.train.precision import Precision, pick_device
from lmforge.train.setup import Trainer, make_optimizer, restore

FORMAT = "lmforge-tagger/1"
META = "tagger.json"
PAD, UNK = "[PAD]", "[UNK]"


def char_tokenizer(texts: Iterable[str], min_count: int) -> CharTokenizer:
    """[PAD], [UNK], then the characters seen at least `min_count` times."""
    counts = Counter(c for text in texts for c in fullwidth(text))
    chars = sorted(c for c, n in counts.items() if n >= min_count and not c.isspace())
    return CharTokenizer(chars, [PAD, UNK], roles={"pad": PAD, "unk": UNK})


def build_model(model: dict, vocab_size: int, max_len: int, seed: int) -> Transformer:
    if model.get("family", "encoder") != "encoder":
        raise LmforgeError(f"model.family = {model['family']!r}: the tagger reads each "
                           "character in both directions; use \"encoder\" (or leave it out)")
    config = ModelConfig.from_dict({**model, "family": "encoder", "vocab_size": vocab_size,
                                    "max_seq_len": max_len})
    net = Transformer(config)
    net.init_weights(std=0.02, seed=seed)
    return net


@dataclass
class TagData:
    tokenizer: CharTokenizer
    train: TagRows
    val: TagRows
    sources: dict = field(default_factory=dict)


def tag_data(s: TaggerSettings) -> TagData:
    """The tokenizer and the training and validation samplers of the settings."""
    words = read_words(s.dict)
    dictionary = Dictionary(words)
    sentences, sources = training_sentences(s, words, dictionary)
    bits = dictionary if s.dict_features else None
    tokenizer = char_tokenizer([*words, *("".join(x) for x in sentences)], s.min_count)
    held = set(range(0, len(sentences), s.val_every)) if s.val_every else set()
    train = [x for i, x in enumerate(sentences) if i not in held]
    val = [x for i, x in enumerate(sentences) if i in held] or train
    rows = [tagged_rows(tokenizer, part, s.max_len, bits) for part in (train, val)]
    return TagData(tokenizer, *(TagRows(r, tokenizer, words, s.max_len, s.dict_share, bits,
                                        s.oov_rate) for r in rows), sources)


def train_tagger(config: str | Path, overrides: list[str] = (), resume: bool = False,
                 stop_after: int | None = None, progress: bool = True) -> Path:
    """Train the tagger of a config file (`corpus.load_config`); returns the run directory."""
    run, s = load_config(config, overrides)
    t = run.train
    world = distributed.setup(pick_device(t.device))
    if world.size > 1:
        raise LmforgeError("lmforge segment-train runs in one process; run it without torchrun")
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = Path(t.out_dir)
    if not resume and (run_dir / META).exists():
        raise LmforgeError(f"{run_dir} already holds a tagger run: add --resume to go on, or "
                           "set train.out_dir to a new directory")
    data = tag_data(s)
    torch.manual_seed(t.seed)
    model = build_model(run.model, data.tokenizer.vocab_size, s.max_len, t.seed)
    task = ObjectiveModel(model, TokenCls(len(TAGS), N_BITS if s.dict_features else 0))
    task.to(world.device)
    gen = torch.Generator().manual_seed(t.seed)
    saved = restore(task, gen, run_dir, None, world) if resume else None
    precision = Precision(t.dtype, world.device)
    t.dtype = precision.dtype
    optimizer = make_optimizer(task, t, {n for n, p in task.named_parameters() if p.dim() >= 2})
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        precision.load_state_dict(saved.get("scaler", {}))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / META, json.dumps(
        {"format": FORMAT, "tags": TAGS, "max_len": s.max_len, "n_bits": task.objective.n_bits,
         "model": model.config.to_dict(),
         "tagger": asdict(s), "train": asdict(t), "sources": data.sources},
        indent=2, ensure_ascii=False) + "\n")
    step = saved["step"] if saved else 0
    tr = Trainer(run, world, run_dir, task.objective, data.tokenizer, task, task, precision,
                 optimizer, data.train, data.val, gen, MetricsLog(run_dir, step if resume
                                                                  else None),
                 None, None, step, saved["best_val"] if saved else math.inf)
    task.train()
    run_steps(tr, stop_after, progress)
    return run_dir


@dataclass
class Tagger:
    """A trained tagger: model, heads (the tag head, and the dictionary features' map when
    it was trained with them, then with its `dictionary`), tokenizer and window length."""

    model: Transformer
    heads: nn.ModuleDict
    tokenizer: CharTokenizer
    max_len: int
    dictionary: Dictionary | None

    @torch.inference_mode()
    def tag(self, texts: list[str], batch_size: int = 256) -> list[str]:
        """The constrained-best B/M/E/S string of each text (each at most max_len long)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [""] * len(texts)
        pad = self.tokenizer.special.pad
        for lo in range(0, len(order), batch_size):
            index = [i for i in order[lo:lo + batch_size] if texts[i]]
            if not index:
                continue
            rows = [char_ids(self.tokenizer, texts[i]) for i in index]
            bits = [match_bits(texts[i], self.dictionary) if self.dictionary else []
                    for i in index]
            lengths = torch.tensor([len(r) for r in rows])
            logits = tag_logits(self.model, self.heads, pad_rows(rows, None, bits, pad))
            for i, tags in zip(index, viterbi(logits.log_softmax(-1), lengths), strict=True):
                out[i] = tags
        return out

    def segment(self, lines: list[str]) -> list[list[str]]:
        """The words of each line; whitespace separates words and is dropped."""
        pieces = [line.split() for line in lines]
        windows = [piece[a:b] for ps in pieces for piece in ps
                   for a, b in spans(piece, self.max_len)]
        tags = iter(self.tag(windows))
        out = []
        for ps in pieces:
            words: list[str] = []
            for piece in ps:
                for a, b in spans(piece, self.max_len):
                    words += words_of(piece[a:b], next(tags))
            out.append(words)
        return out

    def segment_lines(self, lines: Iterable[str], chunk: int = 512) -> Iterator[str]:
        """Each line's words joined by single spaces, `chunk` lines per model pass."""
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            if len(batch) == chunk:
                yield from (" ".join(w) for w in self.segment(batch))
                batch = []
        if batch:
            yield from (" ".join(w) for w in self.segment(batch))


def load_tagger(run_dir: str | Path) -> Tagger:
    """The tagger of a run directory written by `train_tagger` (its best/ checkpoint, else
    the latest), with a clear error for anything else."""
    d = Path(run_dir)
    if not (d / META).is_file():
        raise LmforgeError(f"--model {d}: not a segmentation tagger run (no {META}); train one "
                           "with `lmforge segment-train --config configs/msr-tagger.toml`, "
                           "or segment by dictionary with --dict WORDS")
    meta = json.loads((d / META).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise LmforgeError(f"{d / META} has format {meta.get('format')!r}; this lmforge "
                           f"reads {FORMAT!r}")
    checkpoint = resolve_run(d)
    if checkpoint is None:
        raise LmforgeError(f"--model {d}: the run has no checkpoint yet (best/ or "
                           "checkpoints/step-N/); let training reach its first evaluation")
    config, weights, tokenizer = load_checkpoint(checkpoint)
    model = Transformer(config)
    model.load_state_dict(weights)
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)["heads"]
    settings = meta["tagger"]
    heads = nn.ModuleDict(TokenCls(len(meta["tags"]), meta["n_bits"]).heads(config))
    heads.load_state_dict({k: v.float() for k, v in state.items()})
    if meta["n_bits"] and not Path(settings["dict"]).is_file():
        raise LmforgeError(f"--model {d}: the tagger reads its word list {settings['dict']} "
                           f"(tagger.dict in {META}) for its dictionary features; it is missing")
    dictionary = Dictionary.load(settings["dict"]) if meta["n_bits"] else None
    return Tagger(model.eval(), heads.eval(), tokenizer, meta["max_len"], dictionary)
