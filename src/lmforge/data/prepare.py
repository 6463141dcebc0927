"""`lmforge prepare`: tokenise text into memory-mapped token shards for training.

    lmforge prepare --tokenizer char --input ../shared/data/tinyshakespeare/train.txt \\
        --val ../shared/data/tinyshakespeare/val.txt --out data/shakespeare-char

A data directory holds
    train.bin, val.bin   the token ids, little-endian uint16 (vocabulary ≤ 65,536) or uint32
    meta.json            {"format": "lmforge-data/1", tokenizer, vocab_size, dtype, tokens …}
    tokenizer/           the tokenizer directory, so training and sampling need nothing else

Inputs are files or directories (every *.txt below them), read in chunks of lines, so a
corpus larger than memory streams through. Between documents (input files) the tokenizer's
EOS id is inserted when it has one. `--val FILE` keeps a given split (such as nanoGPT's);
`--val-fraction F` takes the last F of the token stream instead. Every file is written
under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.interop.gguf import read_gguf_metadata
from lmforge.interop.load import resolve_model
from lmforge.io import atomic_write_text
from lmforge.tokenizers import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

FORMAT = "lmforge-data/1"
CHUNK_CHARS = 1 << 20


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, directories as their *.txt files (sorted); missing paths are errors."""
    files: list[Path] = []
    for name in inputs:
        p = Path(name)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.txt") if q.is_file())
            if not found:
                raise LmforgeError(f"--input {p}: the directory has no .txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise LmforgeError(f"--input {p}: no such file or directory")
    return files


def read_chunks(path: Path) -> Iterator[str]:
    """The text of `path` in pieces of about CHUNK_CHARS, cut after a newline."""
    with open(path, encoding="utf-8", newline="") as f:
        buf: list[str] = []
        size = 0
        for line in f:
            buf.append(line)
            size += len(line)
            if size >= CHUNK_CHARS:
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)


def resolve_tokenizer(spec: str, files: list[Path]) -> Tokenizer:
    """`char` (built from the inputs' characters), a tokenizer directory, or any model spec."""
    if spec == "char":
        chars: set[str] = set()
        for path in files:
            for chunk in read_chunks(path):
                chars.update(chunk)
        return CharTokenizer(sorted(chars))
    if Path(spec).is_dir() and not (Path(spec) / "config.json").is_file():
        return load_tokenizer(spec)
    source = resolve_model(spec)  # a model: read only its tokenizer, not its weights
    if source.kind == "gguf":
        return BPETokenizer.from_gguf_metadata(read_gguf_metadata(source.path))
    return load_tokenizer(source.path / "tokenizer" if source.kind == "lmforge" else source.path)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclass
class Shard:
    """A token file being written under a temporary name."""

    path: Path
    dtype: np.dtype
    count: int = 0

    def __post_init__(self) -> None:
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.file = open(self.tmp, "wb")  # closed in finish()

    def write(self, ids: list[int]) -> None:
        self.file.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self.count += len(ids)

    def finish(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)


def encode_files(tok: Tokenizer, files: list[Path], shard: Shard, bar: tqdm) -> None:
    """Append the ids of every file to `shard`, EOS between documents."""
    eos = tok.special.eos
    for i, path in enumerate(files):
        if i and eos is not None:
            shard.write([eos])
        for chunk in read_chunks(path):
            shard.write(tok.encode(chunk, parse_special=False))
            bar.update(len(chunk.encode("utf-8")))


def split_tail(out: Path, dtype: np.dtype, train: Shard, fraction: float) -> Shard:
    """Move the last `fraction` of the train tokens into a val shard."""
    tokens = np.fromfile(train.path, dtype=dtype)
    n_val = int(round(len(tokens) * fraction))
    if not 0 < n_val < len(tokens):
        raise LmforgeError(f"--val-fraction {fraction} leaves an empty split of "
                           f"{len(tokens)} tokens; choose a fraction between 0 and 1")
    val = Shard(out / "val.bin", dtype)
    val.write(tokens[-n_val:].tolist())
    val.finish()
    tokens[:-n_val].tofile(train.tmp)
    os.replace(train.tmp, train.path)
    train.count = len(tokens) - n_val
    return val


def prepare(tokenizer: str, inputs: list[str], out: str | Path, val: str | None = None,
            val_fraction: float | None = None, progress: bool = True) -> dict:
    """Tokenise `inputs` (and `val`) into `out`; return the metadata written to meta.json."""
    if val is not None and val_fraction is not None:
        raise LmforgeError("give either --val FILE or --val-fraction F, not both")
    files = expand_inputs(inputs)
    val_files = expand_inputs([val]) if val else []
    tok = resolve_tokenizer(tokenizer, files + val_files)
    dtype = token_dtype(tok.vocab_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in files + val_files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenize",
              disable=not progress) as bar:
        train = Shard(out / "train.bin", dtype)
        encode_files(tok, files, train, bar)
        train.finish()
        shards = {"train": train}
        if val_files:
            shards["val"] = Shard(out / "val.bin", dtype)
            encode_files(tok, val_files, shards["val"], bar)
            shards["val"].finish()
        elif val_fraction is not None:
            shards["val"] = split_tail(out, dtype, train, val_fraction)
    tok.save(out / "tokenizer")
    meta = {"format": FORMAT, "tokenizer": tokenizer, "vocab_size": tok.vocab_size,
            "dtype": dtype.name, "tokens": {k: s.count for k, s in shards.items()},
            "sources": {"train": [str(p) for p in files], "val": [str(p) for p in val_files]},
            "split": "file" if val_files else ("tail" if val_fraction else "none"),
            "val_fraction": val_fraction}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def load_tokens(directory: str | Path, split: str) -> np.memmap:
    """The token ids of one split, memory-mapped read-only."""
    d = Path(directory)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise LmforgeError(f"{d} is not a prepared data directory (no meta.json); "
                           "create one with `lmforge prepare`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise LmforgeError(f"{meta_path} has format {meta.get('format')!r}; this lmforge "
                           f"reads {FORMAT!r}")
    if split not in meta["tokens"]:
        raise LmforgeError(f"{d} has no {split!r} split; it has {sorted(meta['tokens'])}")
    return np.memmap(d / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
