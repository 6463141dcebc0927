"""BM25 keyword search over a collection's chunks (`bm25s`), kept on disk beside the database.

    >>> index = load_or_build(store, "notes", bm25_dir("rag.db", "notes"))
    >>> index.search("eiffel tower", k=5)            # [(chunk id, BM25 score), …]

BM25 (Robertson & Zaragoza, 2009, "The Probabilistic Relevance Framework"), Lucene's variant
as `bm25s` computes it: score(q, d) = Σ_{t∈q} idf(t) · tf(t,d) / (tf(t,d) + k1·(1 − b +
b·|d|/avgdl)), idf(t) = ln(1 + (N − df(t) + 0.5)/(df(t) + 0.5)), k1 = 1.5, b = 0.75; Lucene
(since 8.0) drops the textbook's constant factor (k1 + 1), which does not change a ranking.

Terms: lowercased runs of letters and digits, English stop words dropped; Chinese has no spaces,
so each Han character is a term (a unigram index, robust to unknown words), or, given a word
list, the words of `lmforge.segment`'s bidirectional maximum matching.

The index is a cache of the collection: it is saved under `<db>.bm25/<collection>/` (for a
server URI, under ~/.cache/lmforge/bm25/) with a stamp, the hash of the collection's chunk ids
(an id hashes source, position, content and chunking, so any change to the collection changes
it) and of the term rule. A stale or missing index is rebuilt from the texts in the collection.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmforge.io import write_directory
from lmforge.rag.store import VectorStore, is_uri

HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TERM = re.compile(rf"[{HAN}]+|[^\W_{HAN}]+")
STAMP = "lmforge_bm25.json"


def make_tokenizer(zh_dict: str | None = None) -> tuple[Callable[[str], list[str]], str]:
    """(text → terms, a name of the rule for the stamp): Han characters one by one, or the
    words of `zh_dict` (a `lmforge segment` word list) by bidirectional maximum matching."""
    from bm25s.stopwords import STOPWORDS_EN

    stop = set(STOPWORDS_EN)
    if zh_dict is None:
        def split_han(run: str) -> list[str]:
            return list(run)
        name = "char"
    else:
        from lmforge.segment.dictionary import Dictionary
        from lmforge.segment.maxmatch import segment

        dictionary = Dictionary.load(zh_dict)

        def split_han(run: str) -> list[str]:
            return segment(run, dictionary, "bimm")
        digest = hashlib.sha256(Path(zh_dict).read_bytes()).hexdigest()[:16]
        name = f"bimm:{digest}"

    def terms(text: str) -> list[str]:
        out: list[str] = []
        for m in TERM.finditer(text.lower()):
            word = m.group()
            if re.match(rf"[{HAN}]", word):
                out.extend(split_han(word))
            elif word not in stop:
                out.append(word)
        return out

    return terms, name


def bm25_dir(db: str, collection: str) -> Path:
    if is_uri(db):
        host = re.sub(r"[^A-Za-z0-9.-]+", "_", db.split("://", 1)[1])
        return Path.home() / ".cache" / "lmforge" / "bm25" / host / collection
    return Path(db + ".bm25") / collection


def stamp_of(ids: list[str], rule: str) -> str:
    return hashlib.sha256(("\n".join(sorted(ids)) + "\n" + rule).encode()).hexdigest()


class BM25Index:
    """A bm25s index over chunk ids; `search` gives (id, score) best first, scores > 0."""

    def __init__(self, model, ids: list[str], terms: Callable[[str], list[str]]) -> None:
        self.model = model
        self.ids = ids
        self.terms = terms
        self.position = {x: i for i, x in enumerate(ids)}

    @classmethod
    def build(cls, ids: list[str], texts: list[str], terms: Callable[[str], list[str]]
              ) -> BM25Index:
        import bm25s

        if not texts:  # an empty collection: nothing to index, every search finds nothing
            return cls(None, [], terms)
        model = bm25s.BM25()
        model.index([terms(t) for t in texts], show_progress=False)
        return cls(model, ids, terms)

    def search(self, query: str, k: int, allowed: set[str] | None = None
               ) -> list[tuple[str, float]]:
        """Top k chunks for `query`; with `allowed`, only among those ids (a filter)."""
        q = self.terms(query)
        if not q or not self.ids:
            return []
        mask = None
        if allowed is not None:
            mask = np.zeros(len(self.ids), dtype=np.float32)
            mask[[self.position[x] for x in allowed if x in self.position]] = 1.0
        docs, scores = self.model.retrieve([q], k=min(k, len(self.ids)), show_progress=False,
                                           weight_mask=mask)
        return [(self.ids[d], float(s)) for d, s in zip(docs[0], scores[0], strict=True)
                if s > 0]

    def save(self, directory: Path, stamp: str) -> None:
        def write(tmp: Path) -> None:
            if self.model is not None:
                self.model.save(str(tmp), show_progress=False)
            (tmp / STAMP).write_text(json.dumps({"stamp": stamp, "ids": self.ids}),
                                     encoding="utf-8")

        write_directory(directory, write, force=True)


def load_or_build(store: VectorStore, collection: str, directory: Path,
                  zh_dict: str | None = None) -> BM25Index:
    """The saved index if its stamp matches the collection now, else a rebuilt (and saved) one."""
    import bm25s

    terms, rule = make_tokenizer(zh_dict)
    ids = [r["id"] for r in store.query(collection, "", ["id"])]
    stamp = stamp_of(ids, rule)
    saved = directory / STAMP
    if saved.is_file():
        meta = json.loads(saved.read_text(encoding="utf-8"))
        if meta.get("stamp") == stamp:
            model = (bm25s.BM25.load(str(directory), show_progress=False) if meta["ids"]
                     else None)
            return BM25Index(model, meta["ids"], terms)
    rows = list(store.query(collection, "", ["id", "text"]))
    index = BM25Index.build([r["id"] for r in rows], [r["text"] for r in rows], terms)
    index.save(directory, stamp)
    return index
