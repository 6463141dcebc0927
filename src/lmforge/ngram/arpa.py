"""ARPA back-off files (the format of SRILM and KenLM), written and read.

    \\data\\
    ngram 1=3
    ngram 2=2

    \\1-grams:
    log10 p<TAB>w<TAB>log10 b        (the back-off column on every order but the highest)
    …
    \\end\\

Written like lmplz: `<s>` has log10 p = 0 (it is never predicted), and every lower-order
line carries its back-off weight, 0 when the n-gram is no context. Files ending in `.gz` are
gzip-compressed. Reading needs every n-gram's prefix to be listed (true of lmplz and SRILM
files); a vocabulary without `<unk>` gets it with log10 p = −100, as KenLM does.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.io import atomic_write
from lmforge.ngram.counts import lookup
from lmforge.ngram.model import NgramModel
from lmforge.ngram.vocab import Vocabulary

FLOAT = "{:.7g}"
Entries = list[dict[tuple[str, ...], tuple[float, float]]]


def _open(path: str | Path) -> io.TextIOBase:
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def ngram_texts(model: NgramModel, n: int, below: list[str]) -> list[str]:
    """The words of every n-gram of order n as text, given those of order n-1."""
    words = model.vocab.words
    prefix, word = np.divmod(model.keys[n - 1], len(words))
    if n == 1:
        return [words[w] for w in word.tolist()]
    return [f"{below[p]} {words[w]}" for p, w in zip(prefix.tolist(), word.tolist(),
                                                      strict=True)]


def write_arpa(model: NgramModel, path: str | Path, progress: bool = False) -> None:
    """Write the model atomically; `.gz` paths are compressed."""
    gz = str(path).endswith(".gz")

    def write(tmp: str) -> None:
        # level 6: gzip's default; 9 takes twice as long for 2% smaller files
        opened = (gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) if gz
                  else open(tmp, "w", encoding="utf-8"))
        with opened as f:
            f.write("\\data\\\n")
            f.writelines(f"ngram {n}={size}\n" for n, size in enumerate(model.sizes, 1))
            text: list[str] = []
            for n in tqdm(range(1, model.order + 1), desc="write arpa", unit="order",
                          disable=not progress):
                text = ngram_texts(model, n, text)
                f.write(f"\n\\{n}-grams:\n")
                # map/join run in C: twice as fast as an f-string per line
                columns = [list(map(FLOAT.format, model.logp[n - 1].tolist())), text]
                if n < model.order:
                    columns.append(list(map(FLOAT.format, model.logbo[n - 1].tolist())))
                f.write("\n".join(map("\t".join, zip(*columns, strict=True))))
                f.write("\n")
            f.write("\n\\end\\\n")

    atomic_write(path, write)


def _sections(path: str | Path, progress: bool = False) -> Iterator[list[str]]:
    """The n-gram lines of each order in turn, checked against the header's counts (one
    order's lines at a time, to bound memory)."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: no such ARPA file")
    with _open(path) as f:
        head, _, body = f.read().partition("\\1-grams:")
    sizes = [int(line.split("=")[1]) for line in head.splitlines()
             if line.startswith("ngram ")]
    if "\\data\\" not in head or not sizes or "\\end\\" not in body:
        raise LmforgeError(f"{path}: not an ARPA file (expected \\data\\, ngram counts, "
                           "n-gram sections and \\end\\)")
    parts = body.partition("\\end\\")[0].split("-grams:")
    del body
    if len(parts) != len(sizes):
        raise LmforgeError(f"{path}: the header announces {len(sizes)} orders but the file "
                           f"holds {len(parts)}")
    for n in tqdm(range(len(parts)), desc="read arpa", unit="order", disable=not progress):
        lines = parts[n].strip().split("\n")
        parts[n] = ""
        if n + 1 < len(parts):
            lines.pop()  # the next section's "\\n" header
        lines = [line for line in lines if line.strip()]
        if len(lines) != sizes[n]:
            raise LmforgeError(f"{path}: the header announces {sizes[n]:,} {n + 1}-grams but "
                               f"the file holds {len(lines):,}")
        yield lines


def _parse(lines: list[str], n: int, path: str | Path) -> tuple[list[list[str]], np.ndarray]:
    """Split n-gram lines into (words, [[log10 p, log10 b]])."""
    cols = [line.split("\t") for line in lines]
    try:
        values = np.array([(c[0], c[2] if len(c) > 2 else 0) for c in cols], np.float64)
        words = [c[1].split() for c in cols]
    except (IndexError, ValueError) as exc:
        raise LmforgeError(f"{path}: malformed {n}-gram line ({exc}); expected "
                           "'log10p<TAB>words[<TAB>backoff]'") from None
    if any(len(w) != n for w in words):
        raise LmforgeError(f"{path}: a line of the {n}-grams section has a different order")
    return words, values.reshape(len(cols), 2)


def read_entries(path: str | Path, progress: bool = False) -> Entries:
    """Every order's n-grams as {words: (log10 p, log10 b)}; b = 0 where absent."""
    out = []
    for n, lines in enumerate(_sections(path, progress), start=1):
        words, values = _parse(lines, n, path)
        out.append({tuple(w): (float(p), float(b)) for w, (p, b) in zip(words, values,
                                                                         strict=True)})
    return out


def read_arpa(path: str | Path, progress: bool = False) -> NgramModel:
    """Load an ARPA file into the trie arrays of `NgramModel`."""
    sections = _sections(path, progress)
    unigrams, values1 = _parse(next(sections), 1, path)
    vocab = Vocabulary(w for (w,) in unigrams)
    V = len(vocab)
    # words missing from the 1-grams (<unk>, say) get KenLM's log10 p = -100
    logp1, logbo1 = np.full(V, -100.0), np.zeros(V)
    rows = np.array([vocab.ids[w] for (w,) in unigrams], np.int64)
    logp1[rows], logbo1[rows] = values1[:, 0], values1[:, 1]
    keys, logp, logbo = [np.arange(V, dtype=np.int64)], [logp1], [logbo1]
    for n, lines in enumerate(sections, start=2):
        words, values = _parse(lines, n, path)
        get = vocab.ids.get
        ids = np.array([get(w, -1) for g in words for w in g], np.int64).reshape(len(words), n)
        if (ids < 0).any():
            raise LmforgeError(f"{path}: a {n}-gram uses a word missing from the 1-grams")
        row = ids[:, 0]
        for j in range(1, n - 1):
            row = lookup(keys[j], row * V + ids[:, j])
            if (row < 0).any():
                raise LmforgeError(f"{path}: some {n}-grams have no prefix ({n - 1}-gram) "
                                   "entry; the file is not a proper back-off model")
        key = row * V + ids[:, -1]
        order = np.argsort(key)
        keys.append(key[order])
        logp.append(values[order, 0])
        logbo.append(values[order, 1])
    return NgramModel(vocab, keys, logp, logbo)
