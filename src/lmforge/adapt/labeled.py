"""Labelled text for sequence classification: reading a TSV, CSV or JSONL file's text and
label columns, mapping labels to class indices, tokenizing, and the samplers the trainer
draws batches from.

Columns: `text_column` ("" picks the first of sentence, review, text that the file has:
SST-2's `sentence\\tlabel` TSV and ChnSentiCorp's `label,review` CSV read with the
defaults) and `label_column` ("label"). Labels that are all integers 0 … K−1 are their own
class indices; other labels are names, numbered in sorted order; an evaluation file uses
the training file's numbering.

Texts are tokenized as the model was trained to read one sentence: an encoder's
`[CLS] text [SEP]` (`embed.sentence_ids`), a decoder's plain ids. Rows longer than
`max_len` keep their first tokens (and an encoder's closing [SEP]).

Samplers draw rows with replacement from the `torch.Generator` they are given, so the
trainer's saved generator state reproduces the batches after a resume (`data/batches.py`).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.batches import Batch
from lmforge.embed import pad_batch, sentence_ids
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.tokenizers import Tokenizer

TEXT_COLUMNS = ("sentence", "review", "text")
DELIMITERS = {".tsv": "\t", ".csv": ","}


@dataclass
class Labelled:
    """Texts and class indices, with the class names (index → name)."""

    texts: list[str]
    labels: list[int]
    names: list[str]


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise LmforgeError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        try:
            return [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as exc:
            raise LmforgeError(f"{path} is not JSON Lines: {exc}") from None
    if suffix not in DELIMITERS:
        raise LmforgeError(f"{path}: give a .tsv, .csv or .jsonl file of labelled texts")
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter=DELIMITERS[suffix]))


def text_column_of(path: Path, columns: list[str], text_column: str) -> str:
    if text_column:
        return text_column
    found = [c for c in TEXT_COLUMNS if c in columns]
    if not found:
        raise LmforgeError(f"{path} has the columns {columns} and none of {list(TEXT_COLUMNS)}; "
                           "name the text column with --set text_column=NAME")
    return found[0]


def label_names(raw: list[str]) -> list[str]:
    """Class names in index order: 0 … K−1 when every label is such an integer, else the
    sorted distinct labels."""
    values = sorted(set(raw))
    if all(v.isdigit() for v in values):
        k = max(int(v) for v in values) + 1
        if {int(v) for v in values} <= set(range(k)):
            return [str(i) for i in range(k)]
    return values


def read_labelled(path: str | Path, text_column: str = "", label_column: str = "label",
                  names: list[str] | None = None) -> Labelled:
    """The texts and labels of a TSV/CSV/JSONL file; `names`: the training file's classes."""
    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise LmforgeError(f"{path} holds no rows")
    columns = list(rows[0])
    text = text_column_of(path, columns, text_column)
    missing = [c for c in (text, label_column) if c not in columns]
    if missing:
        raise LmforgeError(f"{path} has no column {missing[0]!r} (its columns: {columns}); name "
                           "the columns with --set text_column=NAME --set label_column=NAME")
    raw = [str(r[label_column]).strip() for r in rows]
    names = names or label_names(raw)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise LmforgeError(f"{path} has labels {unknown[:5]} that the training data does not "
                           f"(its classes: {names})")
    if len(names) < 2:
        raise LmforgeError(f"{path} has a single class {names}; classification needs two")
    return Labelled([str(r[text]) for r in rows], [index[v] for v in raw], names)


def sample(data: Labelled, n: int, seed: int) -> Labelled:
    """`n` examples drawn without replacement with random.Random(seed) (all when n ≤ 0)."""
    if n <= 0 or n >= len(data.texts):
        return data
    index = sorted(random.Random(seed).sample(range(len(data.texts)), n))
    return Labelled([data.texts[i] for i in index], [data.labels[i] for i in index],
                    data.names)


@dataclass
class Encoded:
    """Token rows (with segment ids) and labels of a labelled set."""

    rows: list[list[int]]
    types: list[list[int]]
    labels: torch.Tensor  # (N,) int64

    def batch(self, index: list[int]) -> Batch:
        """Right-padded rows `index` as model inputs, with their labels."""
        ids, mask = pad_batch([self.rows[i] for i in index])
        types = pad_batch([self.types[i] for i in index])[0]
        return {"ids": ids, "attention_mask": mask, "token_types": types,
                "labels": self.labels[index]}


def truncate(row: list[int], max_len: int, keep_last: bool) -> list[int]:
    if len(row) <= max_len:
        return row
    return row[: max_len - 1] + row[-1:] if keep_last else row[:max_len]


def encode(tokenizer: Tokenizer, config: ModelConfig, data: Labelled, max_len: int) -> Encoded:
    """Tokenize every text as the model reads one sentence, truncated to `max_len`."""
    max_len = min(max_len, config.max_seq_len)
    rows, types = [], []
    for i, text in enumerate(data.texts):
        if config.causal:
            ids = tokenizer.encode(text, parse_special=False)
            tt = [0] * len(ids)
        else:
            ids, tt = sentence_ids(tokenizer, text)
        if not ids:
            raise LmforgeError(f"text {i} ({text!r}) gives no tokens; remove it from the data")
        rows.append(truncate(ids, max_len, not config.causal))
        types.append(truncate(tt, max_len, not config.causal))
    return Encoded(rows, types, torch.tensor(data.labels, dtype=torch.long))


class RowSampler:
    """Random token rows with replacement: sampler(gen, n) → a padded batch."""

    def __init__(self, data: Encoded) -> None:
        self.data = data

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        index = torch.randint(len(self.data.rows), (n,), generator=gen).tolist()
        return self.data.batch(index)


class FeatureSampler:
    """Random rows of precomputed pooled features (a probe on a frozen model)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __call__(self, gen: torch.Generator, n: int) -> Batch:
        index = torch.randint(len(self.labels), (n,), generator=gen)
        return {"features": self.features[index], "labels": self.labels[index]}


def task_data(task: str, eval_data: str = "", data_root: str | Path = "",
              text_column: str = "", label_column: str = "label"
              ) -> tuple[Labelled, Labelled]:
    """(train, evaluation) of a named task (sst2: train/dev, chnsenticorp: train/test, read
    by `eval/classify.py`'s loaders) or of a training file with `eval_data` beside it."""
    from lmforge.eval.classify import DATA, DATASETS

    if task in DATASETS:
        spec = DATASETS[task]
        root = Path(data_root or DATA) / task
        train, evaluation = (spec.load(s, root) for s in (spec.train_split, spec.eval_split))
        names = [str(i) for i in range(max(e.label for e in train) + 1)]
        return tuple(Labelled([e.text for e in split], [e.label for e in split], names)
                     for split in (train, evaluation))
    if not eval_data:
        raise LmforgeError(f"--task {task}: a file of labelled texts needs --eval-data FILE "
                           f"to score the probes on (or a named task: {', '.join(DATASETS)})")
    train = read_labelled(task, text_column, label_column)
    return train, read_labelled(eval_data, text_column, label_column, train.names)
