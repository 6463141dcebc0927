"""WordPiece: BERT's tokenizer (Devlin et al. 2019) over Wu et al. (2016)'s subword vocabulary.

Encoding a text is two stages, as in BERT's `tokenization.py` and Hugging Face `tokenizers`:
1. Basic tokenization (`BertNormalizer` + `BertPreTokenizer`): drop NUL, U+FFFD and control
   characters, turn every whitespace character into a space, put spaces around CJK
   ideographs, strip accents (NFD, then drop nonspacing marks) and lower-case, then split at
   whitespace and cut every punctuation character (Unicode P*, plus all ASCII symbols such
   as "$" and "^") into a word of its own.
2. WordPiece on each word: greedy longest-match-first. Take the longest vocabulary entry that
   starts the word, then the longest "##"-prefixed entry that starts the rest, and so on. A
   word with a part no entry matches, or one longer than `max_input_chars_per_word`, becomes
   a single [UNK].

Example, MiniLM's uncased vocabulary: "Unaffable!" → words "unaffable", "!" → "una",
"##ffa", "##ble", "!" → [14477, 20961, 3468, 999]. Greedy matching takes the longest start
("una"), not the morphological one ("un"); "unbelievable" is one entry, so one token.

Design choices:
- Character classes come from Python's `unicodedata` (Unicode 14 on Python 3.11). Unassigned
  code points (Cn) are kept, not dropped, as `tokenizers` keeps them (they become [UNK]);
  BERT's Python code drops them. `tokenizers` (0.23) uses older tables, so characters whose
  class is newer differ: 106 punctuation marks it does not split, 386 nonspacing marks it does
  not strip, 13 format characters it does not drop (measured against Python 3.11).
- Lower-casing maps each character on its own, as `tokenizers` does: a word-final "Σ"
  becomes "σ", not Python's context-dependent "ς". No NFC step (transformers' Python-only
  BertTokenizer adds one; it changes nothing when accents are stripped).
- `encode` gives the bare ids, so it composes (chat spans, streaming); `encode_pair` adds
  "[CLS] a [SEP] (b [SEP])" and the token type ids, what a BERT encoder takes.
- WordPiece is lossy (case, accents, spacing), so `decode(encode(s))` is not `s`: decoding
  joins words with spaces, glues "##" pieces on and undoes the spaces before ".,?!" and
  clitics ("n't", "'s"), as the `tokenizers` WordPiece decoder with `cleanup` does.
- Speed: ids are cached per whitespace-separated word; ASCII text is cleaned by one
  `str.translate`, other text by three regex substitutions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.io import atomic_write_text
from lmforge.tokenizers import hf_files
from lmforge.tokenizers.added import AddedToken, AddedVocab
from lmforge.tokenizers.base import ListVocab, SpecialTokens, Tokenizer

_CACHE_LIMIT = 1 << 16  # words; cleared when full so a long-running server stays bounded
# BERT's _is_chinese_char: the CJK Unified Ideographs blocks (not Hiragana, Katakana, Hangul)
_CJK = re.compile("[\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
                  "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\uf900-\ufaff\U0002f800-\U0002fa1f]")
_ASCII_CLEAN = {c: None for c in [*range(9), 11, 12, *range(14, 32), 127]} | \
    {ord("\t"): " ", ord("\n"): " ", ord("\r"): " "}
# HF's cleanup of decoded text: undo the spaces that splitting put before these
_CLEANUP = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"),
            (" 're", "'re")]


def _char_class(cps: list[int]) -> str:
    """The inside of a regex character class holding the code points, as ranges."""
    ranges: list[list[int]] = []
    for cp in cps:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@cache
def _unicode_patterns() -> tuple[re.Pattern, re.Pattern, re.Pattern, re.Pattern]:
    """(removed, whitespace, punctuation split, nonspacing mark) patterns, built once (~0.3 s)
    from one pass over the code points."""
    removed, space, punct, marks = [0, 0xFFFD], [9, 10, 13, 0x2028, 0x2029], [], []
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        if cat in ("Cc", "Cf", "Co", "Cs") and cp not in (9, 10, 13):
            removed.append(cp)
        elif cat == "Zs":
            space.append(cp)
        elif cat[0] == "P" or 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 \
                or 123 <= cp <= 126:  # BERT counts every ASCII symbol as punctuation
            punct.append(cp)
        elif cat == "Mn":
            marks.append(cp)
    p = _char_class(punct)
    return (re.compile(f"[{_char_class(sorted(removed))}]+"), re.compile(f"[{_char_class(space)}]"),
            re.compile(f"[{p}]|[^{p}]+"), re.compile(f"[{_char_class(marks)}]+"))


def clean_text(text: str, tokenize_chinese_chars: bool = True) -> str:
    """BertNormalizer's cleaning: control characters dropped, whitespace made " ", spaces
    put around CJK ideographs; `str.split()` of the result gives the whitespace words."""
    if text.isascii():
        return text.translate(_ASCII_CLEAN)
    removed, space, _, _ = _unicode_patterns()
    text = space.sub(" ", removed.sub("", text))
    return _CJK.sub(r" \g<0> ", text) if tokenize_chinese_chars else text


def split_word(word: str, *, lowercase: bool = True, strip_accents: bool = True) -> list[str]:
    """One whitespace word of `clean_text` normalized and cut at punctuation: the pieces that
    WordPiece spells ("Don't" → ["don", "'", "t"])."""
    _, _, punct, marks = _unicode_patterns()
    if strip_accents:  # before lower-casing, as `tokenizers` does
        word = marks.sub("", unicodedata.normalize("NFD", word))
    if lowercase:  # per character: keep "Σ" → "σ" out of Python's final-sigma rule
        word = word.replace("Σ", "σ").lower()
    return punct.findall(word)


class WordPieceTokenizer(ListVocab, Tokenizer):
    """BERT's basic tokenizer + greedy longest-match-first WordPiece, with [CLS]/[SEP]."""

    def __init__(self, tokens: Sequence[str], *, unk_token: str = "[UNK]",
                 cls_token: str | None = "[CLS]", sep_token: str | None = "[SEP]",
                 pad_token: str | None = "[PAD]", mask_token: str | None = "[MASK]",
                 eos_token: str | None = None,
                 lowercase: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                 prefix: str = "##", max_input_chars_per_word: int = 100,
                 added: Iterable[AddedToken] | None = None, chat_template: str | None = None,
                 model_max_length: int | None = None):
        """`tokens` by id; `strip_accents=None` follows `lowercase`, as in BERT. The role
        tokens present in `tokens` become special added tokens unless `added` is given."""
        if not tokens:
            raise LmforgeError("the WordPiece vocabulary is empty; check the vocab.txt or "
                               "tokenizer.json it was read from")
        self.tokens = list(tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}  # last wins, as HF's load_vocab
        if unk_token not in self._ids:
            raise LmforgeError(f"the WordPiece vocabulary has no unknown token {unk_token!r}, "
                               "which WordPiece needs for words it cannot spell; add it to "
                               "the vocabulary or name the right one (unk_token)")
        self.lowercase, self.tokenize_chinese_chars = lowercase, tokenize_chinese_chars
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.prefix, self.max_input_chars_per_word = prefix, max_input_chars_per_word
        self.model_max_length = model_max_length
        # continuation pieces keyed without their prefix, so matching needs no concatenation
        self._cont = {t[len(prefix):]: i for t, i in self._ids.items() if t.startswith(prefix)}
        self._max_len = max(map(len, self.tokens))
        role = {r: self._ids.get(t) if t else None
                for r, t in dict(unk=unk_token, cls=cls_token, sep=sep_token, pad=pad_token,
                                 mask=mask_token, eos=eos_token).items()}
        self.cls_id, self.sep_id, self.mask_id = role["cls"], role["sep"], role["mask"]
        if added is None:
            added = [AddedToken(self.tokens[i], i) for i in sorted({*role.values()} - {None})]
        self._cache: dict[str, tuple[int, ...]] = {}
        super().__init__(SpecialTokens(unk=role["unk"], pad=role["pad"], eos=role["eos"]),
                         AddedVocab(added), chat_template)

    # -- encoding ---------------------------------------------------------------------------

    def _encode_ordinary(self, text: str) -> list[int]:
        cache, ids = self._cache, []
        for word in clean_text(text, self.tokenize_chinese_chars).split():
            word_ids = cache.get(word)
            if word_ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                word_ids = cache[word] = self._encode_word(word)
            ids += word_ids
        return ids

    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids: list[int] = []
        for piece in split_word(word, lowercase=self.lowercase,
                                strip_accents=self.strip_accents):
            ids += self._wordpiece(piece)
        return tuple(ids)

    def _wordpiece(self, piece: str) -> list[int]:
        """Greedy longest-match-first (Wu et al. 2016, section 4.1; BERT's WordpieceTokenizer)."""
        n, unk = len(piece), [self.special.unk]
        if n > self.max_input_chars_per_word:
            return unk  # type: ignore[list-item]
        ids, start, table = [], 0, self._ids
        while start < n:
            end = min(n, start + self._max_len)  # no entry is longer than _max_len
            while end > start and (i := table.get(piece[start:end])) is None:
                end -= 1
            if end == start:
                return unk  # type: ignore[list-item]  # one unmatchable part spoils the word
            ids.append(i)
            start, table = end, self._cont
        return ids

    def encode_pair(self, a: str, b: str | None = None, *, parse_special: bool = True
                    ) -> tuple[list[int], list[int]]:
        """BERT's model input: ids of "[CLS] a [SEP]" or "[CLS] a [SEP] b [SEP]", and token
        type ids (0 for the first segment with its [CLS] and [SEP], 1 for the second)."""
        if self.cls_id is None or self.sep_id is None:
            raise LmforgeError("this WordPiece vocabulary has no [CLS] or [SEP] token, so it "
                               "cannot build BERT's model input; use encode for bare ids")
        ids = [self.cls_id, *self.encode(a, parse_special=parse_special), self.sep_id]
        types = [0] * len(ids)
        if b is not None:
            second = [*self.encode(b, parse_special=parse_special), self.sep_id]
            ids, types = ids + second, types + [1] * len(second)
        return ids, types

    # -- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False) -> bytes:
        """Words joined by spaces, "##" pieces glued on, HF's cleanup applied per token."""
        skip = self.added.special_ids if skip_special else frozenset()
        out = []
        for n, t in enumerate(self.id_to_token(i) for i in ids if i not in skip):
            if n:
                t = t[len(self.prefix):] if t.startswith(self.prefix) else " " + t
            for dirty, clean in _CLEANUP:
                t = t.replace(dirty, clean)
            out.append(t)
        return "".join(out).encode("utf-8")

    # -- loading and saving -----------------------------------------------------------------

    @classmethod
    def from_vocab_file(cls, path: str | Path, **options) -> WordPieceTokenizer:
        """Build from a `vocab.txt` (one token a line, id = line number); `options` are the
        constructor's (lowercase=..., unk_token=...)."""
        path = Path(path)
        if not path.is_file():
            raise LmforgeError(f"no WordPiece vocabulary at {path}; point to a vocab.txt "
                               "(one token per line) or a directory holding one")
        text = path.read_text(encoding="utf-8")
        tokens = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        return cls([] if text == "" else tokens, **options)

    @classmethod
    def from_vocab_dir(cls, directory: str | Path) -> WordPieceTokenizer:
        """`vocab.txt` with the options of an optional transformers `tokenizer_config.json`."""
        d = Path(directory)
        config = hf_files.read_json(d / "tokenizer_config.json") \
            if (d / "tokenizer_config.json").is_file() else {}
        options = {"lowercase": bool(config.get("do_lower_case", True)),
                   "strip_accents": config.get("strip_accents"),
                   "tokenize_chinese_chars": bool(config.get("tokenize_chinese_chars", True)),
                   "chat_template": hf_files.read_chat_template(config),
                   "model_max_length": hf_files.read_max_length(config)}
        for role in ("unk", "cls", "sep", "pad", "mask", "eos"):
            if isinstance(name := config.get(f"{role}_token"), str):
                options[f"{role}_token"] = name
        return cls.from_vocab_file(d / "vocab.txt", **options)

    @classmethod
    def from_tokenizer_json(cls, obj: dict, config: dict | None = None) -> WordPieceTokenizer:
        """Build from a parsed `tokenizer.json` with a WordPiece model (+ tokenizer_config)."""
        config, model = config or {}, obj.get("model", {})
        if model.get("type") != "WordPiece":
            raise LmforgeError(f"tokenizer.json holds a {model.get('type')!r} model; "
                               "WordPieceTokenizer reads WordPiece only")
        norm, pre = obj.get("normalizer") or {}, obj.get("pre_tokenizer") or {}
        if norm.get("type") != "BertNormalizer" or not norm.get("clean_text", True) or \
                pre.get("type") != "BertPreTokenizer":
            raise LmforgeError(f"tokenizer.json's normalizer {norm.get('type')!r} / "
                               f"pre-tokenizer {pre.get('type')!r} are not BERT's; lmforge's "
                               "WordPiece supports BertNormalizer (clean_text) + "
                               "BertPreTokenizer only")
        added = hf_files.read_added_tokens(obj)
        tokens = hf_files.id_list(model.get("vocab") or {}, added)
        ends = _template_specials(obj.get("post_processor"))
        roles = {f"{r}_token": config[f"{r}_token"]
                 for r in ("cls", "sep", "pad", "mask", "eos")
                 if isinstance(config.get(f"{r}_token"), str)}
        return cls(tokens, unk_token=model.get("unk_token", "[UNK]"),
                   **{"cls_token": ends[0], "sep_token": ends[1], **roles},
                   lowercase=bool(norm.get("lowercase", True)),
                   strip_accents=norm.get("strip_accents"),
                   tokenize_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
                   prefix=model.get("continuing_subword_prefix", "##"),
                   max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
                   added=added, chat_template=hf_files.read_chat_template(config),
                   model_max_length=hf_files.read_max_length(config))

    def to_tokenizer_json(self) -> dict:
        """This tokenizer as a `tokenizer.json`; its post-processor adds [CLS]/[SEP]."""
        cls_, sep = self.tokens[self.cls_id or 0], self.tokens[self.sep_id or 0]

        def seq(name: str, type_id: int) -> list[dict]:
            return [{"Sequence": {"id": name, "type_id": type_id}},
                    {"SpecialToken": {"id": sep, "type_id": type_id}}]
        post = None if self.cls_id is None or self.sep_id is None else {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": cls_, "type_id": 0}}, *seq("A", 0)],
            "pair": [{"SpecialToken": {"id": cls_, "type_id": 0}}, *seq("A", 0), *seq("B", 1)],
            "special_tokens": {t: {"id": t, "ids": [self._ids[t]], "tokens": [t]}
                               for t in (cls_, sep)}}
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": hf_files.added_tokens_json(self.added),
            "normalizer": {"type": "BertNormalizer", "clean_text": True,
                           "handle_chinese_chars": self.tokenize_chinese_chars,
                           "strip_accents": self.strip_accents, "lowercase": self.lowercase},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": post,
            "decoder": {"type": "WordPiece", "prefix": self.prefix, "cleanup": True},
            "model": {"type": "WordPiece", "unk_token": self.tokens[self.special.unk or 0],
                      "continuing_subword_prefix": self.prefix,
                      "max_input_chars_per_word": self.max_input_chars_per_word,
                      "vocab": {t: i for i, t in enumerate(self.tokens)}},
        }

    def save(self, directory: str | Path) -> None:
        """vocab.txt, tokenizer.json, and a tokenizer_config.json naming BertTokenizer."""
        d = Path(directory)
        atomic_write_text(d / "vocab.txt", "".join(t + "\n" for t in self.tokens))
        config = hf_files.config_json(self, self.model_max_length)
        config |= {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
                   "strip_accents": self.strip_accents,
                   "tokenize_chinese_chars": self.tokenize_chinese_chars}
        for role, i in (("cls", self.cls_id), ("sep", self.sep_id), ("mask", self.mask_id)):
            if i is not None:
                config[f"{role}_token"] = self.tokens[i]
        hf_files.write_dir(d, self.to_tokenizer_json(), config)


def _template_specials(post: dict | None) -> tuple[str, str]:
    """[CLS] and [SEP] as a TemplateProcessing post-processor names them ("[CLS] $A [SEP]")."""
    single = (post or {}).get("single") or []
    names = [s["SpecialToken"]["id"] for s in single if "SpecialToken" in s]
    return (names[0] if names else "[CLS]", names[-1] if len(names) > 1 else "[SEP]")
