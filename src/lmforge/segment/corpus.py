"""The tagger's config file and its training sentences.

    [model]                      # ModelConfig fields (family "encoder"; vocab from the data)
    d_model = 192
    n_layer = 3
    n_head = 4
    [tagger]                     # TaggerSettings; paths relative to the config file
    dict = "../../shared/data/icwb2-msr/msr_training_words.utf8"
    gold = []                    # segmented files: words separated by spaces, one sentence a line
    raw = [{path = "../../shared/data/cmrc2018/passages.jsonl", field = "text"}]
    [train]                      # the trainer's settings (train/config.py)
    out_dir = "../runs/msr-tagger"

Sentences come from `gold` files as segmented there, and from `raw` text (plain lines, a
JSONL field or a CSV column) segmented by bidirectional maximum matching with `dict`: silver
labels, for when no segmented corpus is at hand (the MSR training corpus itself is not in
`../shared/data/icwb2-msr`, only its word list). Raw text is put in full-width form first
(`windows.fullwidth`), as the MSR text writes digits and Latin letters.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from lmforge import strict
from lmforge.errors import LmforgeError
from lmforge.segment.dictionary import Dictionary
from lmforge.segment.maxmatch import segment
from lmforge.segment.score import read_lines
from lmforge.segment.windows import fullwidth
from lmforge.train.config import RunConfig, TrainSettings, read_config


@dataclass
class TaggerSettings:
    dict: str  # the word list: dictionary rows and silver labels
    gold: list[str] = field(default_factory=list)  # segmented files
    raw: list[dict] = field(default_factory=list)  # {path, field}: field "" for plain lines
    max_len: int = 64  # characters per window
    dict_share: float = 0.5  # share of training rows drawn from the dictionary
    val_every: int = 20  # every n-th sentence is held out for validation (0: none)
    min_count: int = 2  # characters seen fewer times are [UNK]
    dict_features: bool = True  # add each character's dictionary matches to its embedding
    oov_rate: float = 0.15  # dictionary rows: share of words shown as out-of-vocabulary

    def validate(self) -> None:
        if self.max_len < 2:
            raise LmforgeError("tagger.max_len must be at least 2 characters")
        if not (0 <= self.dict_share <= 1 and 0 <= self.oov_rate <= 1):
            raise LmforgeError("tagger.dict_share and tagger.oov_rate must be between 0 and 1")
        if self.dict_share < 1 and not (self.gold or self.raw):
            raise LmforgeError("the tagger has no sentences: give tagger.gold (segmented "
                               "files) or tagger.raw (text to label by maximum matching), "
                               "or train on dictionary rows alone with dict_share = 1")
        if self.val_every < 0 or self.min_count < 1:
            raise LmforgeError("tagger.val_every must be >= 0 and tagger.min_count >= 1")
        for source in self.raw:
            if not isinstance(source, dict) or set(source) - {"path", "field"} \
                    or "path" not in source:
                raise LmforgeError(f"tagger.raw entry {source!r}: write "
                                   "{path = \"FILE\", field = \"text\"} (field \"\" or absent: "
                                   "plain lines)")


def _resolve(path: str, base: Path) -> str:
    """Absolute, so that tagger.json names files that load from any directory."""
    p = Path(path).expanduser()
    return str((p if p.is_absolute() else base / p).resolve())


def load_config(path: str | Path, overrides: list[str] = ()) -> tuple[RunConfig, TaggerSettings]:
    """The [model], [tagger] and [train] tables of a tagger config, `--set` applied, paths
    made relative to the config file's directory."""
    path = Path(path)
    raw = read_config(path, overrides)
    unknown = sorted(set(raw) - {"model", "tagger", "train"})
    if unknown:
        raise LmforgeError(f"{path}: unknown table(s) {unknown}; use [model], [tagger], [train]")
    if "tagger" not in raw:
        raise LmforgeError(f"{path}: no [tagger] table; it needs at least dict = \"WORDS\"")
    s = strict.from_dict(TaggerSettings, raw["tagger"], "tagger setting")
    s.validate()
    base = path.parent
    s.dict = _resolve(s.dict, base)
    s.gold = [_resolve(g, base) for g in s.gold]
    s.raw = [{"path": _resolve(r["path"], base), "field": r.get("field", "")} for r in s.raw]
    t = strict.from_dict(TrainSettings, raw.get("train", {}), "train setting")
    t.validate()
    t.out_dir = _resolve(t.out_dir, base)
    t.block_size = s.max_len  # tokens per row: the trainer's tokens/s counts these
    return RunConfig(raw.get("model", {}), Path(s.dict).parent, t, path), s


def raw_texts(path: str, column: str) -> list[str]:
    """Plain lines (column ""), a JSONL field, or a CSV column."""
    if not Path(path).is_file():
        raise LmforgeError(f"tagger.raw {path}: no such file")
    if not column:
        return [line.strip() for line in read_lines(path, "tagger.raw")]
    if path.endswith(".jsonl"):
        rows = [json.loads(line) for line in read_lines(path, "tagger.raw") if line.strip()]
    elif path.endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise LmforgeError(f"tagger.raw {path}: a field is read from .jsonl or .csv files; "
                           "for plain text leave field out")
    missing = [i for i, r in enumerate(rows) if not isinstance(r.get(column), str)]
    if missing:
        raise LmforgeError(f"tagger.raw {path}: row {missing[0] + 1} has no text field "
                           f"{column!r}")
    return [r[column] for r in rows]


def training_sentences(s: TaggerSettings, words: list[str], dictionary: Dictionary
                       ) -> tuple[list[list[str]], dict]:
    """The segmented sentences and a record of their sources."""
    sentences: list[list[str]] = []
    sources: dict = {"dict": {"path": s.dict, "words": len(words)}, "gold": {}, "raw": {}}
    for g in s.gold:
        lines = [line.split() for line in read_lines(g, "tagger.gold")]
        sources["gold"][g] = len(lines)
        sentences += lines
    for r in s.raw:
        texts = [fullwidth(t) for t in raw_texts(r["path"], r["field"])]
        sentences += [segment(t, dictionary, "bimm") for t in texts]
        sources["raw"][r["path"]] = {"field": r["field"], "texts": len(texts),
                                    "chars": sum(map(len, texts))}
    return [x for x in sentences if x], sources
