"""The Unigram LM tokenizer (Kudo 2018), sentencepiece's default algorithm.

A text is a sequence of pieces drawn independently: P(x) = Π p(x_i). Among all the ways to
spell a text with vocabulary pieces, encoding picks the most probable one (Viterbi over
the lattice of piece occurrences), or samples one for subword regularisation.

    >>> tok = train_unigram(open("corpus.txt"), 8000)
    >>> tok.encode("Hello world")                       # the best segmentation
    >>> tok.encode("Hello world", sample_alpha=0.1, seed=1)  # a sampled one

Design choices, all sentencepiece's:
- Whitespace: text is normalized (NFKC; leading, trailing and repeated spaces removed),
  then every space becomes "▁" and a "▁" is prepended (`add_dummy_prefix`), so
  "Hello world" is spelled "▁Hello▁world"; decoding maps "▁" back to spaces and drops the
  first. A piece holds "▁" only at its start, so each "▁"-word is encoded on its own.
- Viterbi: best(j) = max over pieces x = text[i:j] of best(i) + log p(x), earliest start
  on ties. A character no piece covers becomes the unknown token, scored
  min log p − 10, and consecutive unknowns are fused into one; with `byte_fallback` it
  becomes the byte tokens <0x00>..<0xFF> of its UTF-8 instead. `unigram_viterbi.py` runs it
  fast (a trie, word and part caches, cut points no piece spans) with the same ids.
- Sampling (`sample_alpha=θ`): forward-filtering backward-sampling over the lattice with
  piece scores θ·log p, i.e. a segmentation drawn with probability ∝ P(x)^θ.
- Files: `tokenizer.json` with a Hugging Face "Unigram" model, NFKC + whitespace
  normalizer, the Metaspace pre-tokenizer and a ByteFallback decoder, so `tokenizers`
  gives the same ids; special tokens (<unk>, <s>, </s>) are special added tokens.

Training lives in `unigram_train.py` (EM, pruning) over `lattice.py` (numpy lattices).
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizers import hf_files
from lmforge.tokenizers.added import AddedToken, AddedVocab
from lmforge.tokenizers.base import ListVocab, SpecialTokens, Tokenizer
from lmforge.tokenizers.unigram_viterbi import WS, ViterbiEncoder

_SPACES = re.compile(" {2,}")
_WORD = re.compile(f"{WS}[^{WS}]*|[^{WS}]+")
_BYTE = re.compile(r"<0x([0-9A-F]{2})>")
_CACHE_LIMIT = 1 << 16
_MISSING = object()
UNK_PENALTY = 10.0  # sentencepiece's kUnkPenalty: an unknown character scores min − 10
_WIDE = [(c, unicodedata.normalize("NFKD", c)) for c in "，：；！？（）％＋－＝～\u3000"]


def nfkc_normalize(text: str) -> str:
    """Unicode NFKC, faster on CJK text: ASCII is left alone (it is NFKC), and the common
    full-width punctuation is replaced by its NFKD first. That changes nothing, since
    NFKC(s) = NFC(NFKD(s)) and NFKD decomposes each character on its own, but a Chinese
    line whose only compatibility characters are these then passes NFKC's quick check."""
    if text.isascii():
        return text
    for wide, narrow in _WIDE:
        if wide in text:
            text = text.replace(wide, narrow)
    return unicodedata.normalize("NFKC", text)


def normalize(text: str, nfkc: bool, remove_extra_whitespaces: bool,
              add_dummy_prefix: bool) -> str:
    """sentencepiece's normalization with spaces escaped: "  a  b" → "▁a▁b"."""
    if nfkc:
        text = nfkc_normalize(text)
    if remove_extra_whitespaces:
        text = _SPACES.sub(" ", text).strip(" ")
    if text and add_dummy_prefix:
        text = " " + text
    return text.replace(" ", WS)


class UnigramTokenizer(ListVocab, Tokenizer):
    """Pieces with log-probability scores; Viterbi or sampled encoding."""

    def __init__(self, pieces: Sequence[tuple[str, float]], *, unk: str = "<unk>",
                 bos: str | None = "<s>", eos: str | None = "</s>", pad: str | None = None,
                 byte_fallback: bool = False, nfkc: bool = True,
                 remove_extra_whitespaces: bool = True, add_dummy_prefix: bool = True,
                 add_bos: bool = False, chat_template: str | None = None):
        """`pieces` by id; the role tokens among them become special tokens; with
        `byte_fallback` the pieces <0x00>..<0xFF> are the byte tokens."""
        self.tokens = [p for p, _ in pieces]
        self.scores = [float(s) for _, s in pieces]
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        roles = {"unk": unk, "bos": bos, "eos": eos, "pad": pad}
        missing = [t for t in roles.values() if t is not None and t not in self._ids]
        if unk is None or missing or len(self._ids) != len(self.tokens):
            raise LmforgeError(f"a Unigram vocabulary needs distinct pieces including its "
                               f"unknown token and role tokens; missing {missing or [unk]}")
        self.byte_fallback, self.nfkc = byte_fallback, nfkc
        self.remove_extra_whitespaces, self.add_dummy_prefix = remove_extra_whitespaces, \
            add_dummy_prefix
        special_ids = sorted({self._ids[t] for t in roles.values() if t is not None})
        self._byte_ids = self._find_bytes() if byte_fallback else []
        self._build_table(set(special_ids) | set(self._byte_ids))
        self._bytes = [t.replace(WS, " ").encode("utf-8") for t in self.tokens]
        for b, i in enumerate(self._byte_ids):
            self._bytes[i] = bytes([b])
        pieces = {p: hit for p, hit in self._table.items() if hit is not None}
        self._cache = ViterbiEncoder(pieces, self._unk_score, self._finish,
                                     None if byte_fallback else self._ids[unk], _CACHE_LIMIT)
        special = SpecialTokens(**{r: self._ids[t] for r, t in roles.items() if t is not None},
                                add_bos=add_bos)
        added = AddedVocab(AddedToken(self.tokens[i], i) for i in special_ids)
        super().__init__(special, added, chat_template)

    def _find_bytes(self) -> list[int]:
        ids = {int(m.group(1), 16): i for i, t in enumerate(self.tokens)
               if (m := _BYTE.fullmatch(t))}
        if len(ids) != 256:
            raise LmforgeError(f"byte_fallback needs the 256 pieces <0x00>..<0xFF>; the "
                               f"vocabulary has {len(ids)}")
        return [ids[b] for b in range(256)]

    def _build_table(self, not_pieces: set[int]) -> None:
        """Piece → (id, score), and each proper prefix → None, so matching stops early."""
        table: dict[str, tuple[int, float] | None] = {}
        normal = [i for i in range(len(self.tokens)) if i not in not_pieces]
        for i in normal:
            piece = self.tokens[i]
            table[piece] = (i, self.scores[i])
            for k in range(1, len(piece)):
                table.setdefault(piece[:k], None)
        self._table = table
        self._max_len = max((len(self.tokens[i]) for i in normal), default=1)
        self._unk_score = min((self.scores[i] for i in normal), default=0.0) - UNK_PENALTY

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, *, parse_special: bool = True, add_bos: bool | None = None,
               sample_alpha: float | None = None, seed: int | None = None) -> list[int]:
        """Ids of `text`: the Viterbi segmentation, or with `sample_alpha` (θ > 0) one
        sampled with probability ∝ P(segmentation)^θ from a generator seeded by `seed`."""
        if sample_alpha is None:
            return super().encode(text, parse_special=parse_special, add_bos=add_bos)
        if sample_alpha <= 0:
            raise LmforgeError(f"sample_alpha must be > 0 (got {sample_alpha}); smaller "
                               "values sample more varied segmentations")
        rng = random.Random(seed)
        ids: list[int] = []
        for piece, token_id in self.added.split(text, parse_special=parse_special):
            if token_id is not None:
                ids.append(token_id)
                continue
            for word in _WORD.findall(self._normalize(piece)):
                ids += self._finish(word, self._sample(word, sample_alpha, rng))
        if self.special.add_bos if add_bos is None else add_bos:
            ids.insert(0, self._required("bos"))
        if self.special.add_eos:
            ids.append(self._required("eos"))
        return ids

    def _normalize(self, text: str) -> str:
        return normalize(text, self.nfkc, self.remove_extra_whitespaces, self.add_dummy_prefix)

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._cache.encode(self._normalize(text))

    def _edges(self, word: str) -> list[list[tuple[int, int, float]]]:
        """incoming[j] = [(start, id, score)] of every piece (or unknown) ending at j."""
        n, table = len(word), self._table
        incoming: list[list[tuple[int, int, float]]] = [[] for _ in range(n + 1)]
        for i in range(n):
            single = False
            for j in range(i + 1, min(n, i + self._max_len) + 1):
                hit = table.get(word[i:j], _MISSING)
                if hit is _MISSING:
                    break
                if hit is not None:
                    single = single or j == i + 1
                    incoming[j].append((i, hit[0], hit[1]))
            if not single:
                incoming[i + 1].append((i, -1, self._unk_score))
        return incoming

    def _sample(self, word: str, theta: float, rng: random.Random) -> list[tuple[int, int]]:
        """Forward filtering, backward sampling: alpha(j) = logsumexp alpha(i) + θ·s(i, j),
        then from the end, edge (i, j) with probability exp(alpha(i) + θ·s − alpha(j))."""
        incoming = self._edges(word)
        alpha = [0.0] * (len(word) + 1)
        for j in range(1, len(word) + 1):
            terms = [alpha[i] + theta * s for i, _, s in incoming[j]]
            top = max(terms)
            alpha[j] = top + math.log(sum(math.exp(t - top) for t in terms))
        path, j = [], len(word)
        while j > 0:
            r, acc = rng.random(), 0.0
            for edge in incoming[j]:
                acc += math.exp(alpha[edge[0]] + theta * edge[2] - alpha[j])
                if r < acc:
                    break
            path.append((edge[0], edge[1]))  # past the loop: rounding left r ≥ Σ, take last
            j = edge[0]
        return path[::-1]

    def _finish(self, word: str, path: list[tuple[int, int]]) -> list[int]:
        """Ids of a path: a run of unknown characters becomes one unknown token, or with
        byte fallback each one its UTF-8 byte tokens."""
        ids: list[int] = []
        after_unk = False
        for start, token_id in path:
            if token_id >= 0:
                ids.append(token_id)
            elif self.byte_fallback:
                ids += [self._byte_ids[b] for b in word[start].encode("utf-8")]
            elif not after_unk:
                ids.append(self.special.unk)  # type: ignore[arg-type]
            after_unk = token_id < 0
        return ids

    # -- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False) -> bytes:
        """Pieces joined with "▁" as spaces, byte tokens as their byte, the dummy prefix's
        space dropped."""
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self.tokens)):
            raise LmforgeError(f"cannot decode ids outside 0..{len(self.tokens) - 1} "
                               f"(got {min(ids)}..{max(ids)})")
        skip = self.added.special_ids if skip_special else frozenset()
        out = b"".join(self._bytes[i] for i in ids if i not in skip)
        return out[1:] if self.add_dummy_prefix and out.startswith(b" ") else out

    # -- saving and loading -----------------------------------------------------------------

    def _role(self, role: str) -> str | None:
        i = getattr(self.special, role)
        return None if i is None else self.tokens[i]

    def to_tokenizer_json(self) -> dict:
        """A Hugging Face `tokenizer.json` with a Unigram model (ids = vocabulary order)."""
        steps = [{"type": "NFKC"}] if self.nfkc else []
        if self.remove_extra_whitespaces:
            steps += [{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
                      {"type": "Replace", "pattern": {"Regex": r"\A | \z"}, "content": ""}]
        decoders = [{"type": "Replace", "pattern": {"String": WS}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}]
        if self.add_dummy_prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": hf_files.added_tokens_json(self.added),
            "normalizer": {"type": "Sequence", "normalizers": steps} if steps else None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": WS, "split": True,
                              "prepend_scheme": "always" if self.add_dummy_prefix
                              else "never"},
            "post_processor": hf_files.post_processor_json(self, byte_level=False),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "Unigram", "unk_id": self.special.unk,
                      "vocab": [[t, s] for t, s in zip(self.tokens, self.scores, strict=True)],
                      "byte_fallback": self.byte_fallback},
        }

    def save(self, directory: str | Path) -> None:
        hf_files.write_dir(directory, self.to_tokenizer_json(), hf_files.config_json(self))

    @classmethod
    def from_tokenizer_json(cls, obj: dict, config: dict | None = None) -> UnigramTokenizer:
        """Build from a parsed `tokenizer.json` with a Unigram model, as `save` writes it."""
        config, model = config or {}, obj.get("model", {})
        if model.get("type") != "Unigram" or model.get("unk_id") is None:
            raise LmforgeError(f"tokenizer.json holds a {model.get('type')!r} model without "
                               "an unk_id; UnigramTokenizer reads Unigram models with one")
        pieces = [(p, float(s)) for p, s in model["vocab"]]
        ids = {p: i for i, (p, _) in enumerate(pieces)}
        special = hf_files.read_special(config, obj, ids)
        names = {r: None if (i := getattr(special, r)) is None else pieces[i][0]
                 for r in ("bos", "eos", "pad")}
        pre = obj.get("pre_tokenizer") or {}
        if pre.get("type") != "Metaspace" or pre.get("replacement") != WS:
            raise LmforgeError(f"tokenizer.json's pre-tokenizer {pre.get('type')!r} is not "
                               "Metaspace with '▁'; lmforge's Unigram reads that one only")
        nfkc, extra = _read_normalizer(obj.get("normalizer"))
        return cls(pieces, unk=pieces[int(model["unk_id"])][0], **names,
                   byte_fallback=bool(model.get("byte_fallback")), nfkc=nfkc,
                   remove_extra_whitespaces=extra,
                   add_dummy_prefix=pre.get("prepend_scheme", "always") != "never",
                   add_bos=special.add_bos, chat_template=hf_files.read_chat_template(config))


def _read_normalizer(normalizer: dict | None) -> tuple[bool, bool]:
    """(NFKC, remove extra whitespace) from a normalizer that `to_tokenizer_json` wrote."""
    steps = [] if normalizer is None else normalizer.get("normalizers", [normalizer])
    nfkc = bool(steps) and steps[0].get("type") == "NFKC"
    rest = [s.get("pattern", {}).get("Regex") for s in steps[int(nfkc):]]
    if rest not in ([], [" {2,}", r"\A | \z"]):
        raise LmforgeError(f"tokenizer.json's normalizer {normalizer} is not supported; "
                           "lmforge's Unigram reads NFKC and its own whitespace rules only")
    return nfkc, bool(rest)


def train_unigram(texts: Iterable[str], vocab_size: int, *, progress: bool = True,
                  **options) -> UnigramTokenizer:
    """Train a Unigram tokenizer of `vocab_size` tokens (special and byte tokens included)
    on `texts` (lines); `options` are `UnigramOptions` fields, sentencepiece's defaults."""
    from lmforge.tokenizers.unigram_train import UnigramOptions, train_pieces

    opts = UnigramOptions.from_kwargs(options)
    learned = train_pieces(texts, vocab_size, opts, progress=progress)
    meta = [(t, 0.0) for t in opts.specials()]
    if opts.byte_fallback:
        meta += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    return UnigramTokenizer(meta + learned, unk=opts.unk, bos=opts.bos, eos=opts.eos,
                            pad=opts.pad, byte_fallback=opts.byte_fallback, nfkc=opts.nfkc,
                            remove_extra_whitespaces=opts.remove_extra_whitespaces,
                            add_dummy_prefix=opts.add_dummy_prefix)
