"""Byte-level BPE: GPT-2's tokenizer (Radford et al. 2019) over Sennrich et al. (2016)'s merges.

Design choices:
- Byte level. A piece of text is UTF-8 encoded and each byte is spelled as one printable
  character (`BYTE_TO_CHAR`, GPT-2's `bytes_to_unicode`), so every string has an encoding and
  the vocabulary needs no unknown token when it holds all 256 single-byte tokens. Some do not
  (SmolLM2 lacks 21, e.g. 0x04 and the lead bytes 0xF1/0xF2 of planes 4-11); such a byte is
  dropped, as `tokenizers` and llama.cpp drop it.
- Merges. BPE learns an ordered list of merges ("Ġ t" → "Ġt"); encoding a piece starts from
  its byte tokens and repeatedly merges the adjacent pair with the lowest rank (leftmost on
  ties) until no adjacent pair has a merge. Ranks are kept per pair of token ids.
- Speed. The merge loop runs on a heap of candidate pairs over a linked list of symbols, so a
  piece of n bytes costs O(n log n) (a 10,000-space run stays fast); results are cached per
  piece, and ordinary text repeats its pieces a lot.
- Pre-tokenization (`pretokenize.py`) decides which pieces merges may never cross; added
  tokens (`added.py`) are cut out of the text before either.

Example, with SmolLM2's vocabulary: "Hello world" → pieces "Hello", " world" → bytes spelled
"Hello", "Ġworld" → merges down to one token each → [19556, 905].
"""

from __future__ import annotations

import heapq
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizers import hf_files
from lmforge.tokenizers.added import AddedToken, AddedVocab
from lmforge.tokenizers.base import SpecialTokens, Tokenizer
from lmforge.tokenizers.pretokenize import (
    IGNORE_MERGES,
    PreTokenizer,
    from_hf_json,
    get_pre_tokenizer,
    to_hf_json,
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → character table: printable Latin-1 bytes stand for themselves, the other
    68 (controls, space, soft hyphen) are moved to U+0100.. so no token holds whitespace."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_CACHE_LIMIT = 1 << 16  # pieces; cleared when full so a long-running server stays bounded


def spell(data: bytes) -> str:
    """The byte-level spelling of `data`: b" t" → "Ġt"."""
    return data.decode("latin-1").translate(BYTE_TO_CHAR)  # Latin-1: byte b → chr(b)


def unspell(token: str) -> bytes:
    """The bytes a byte-level token stands for; a token spelled in plain text (an added
    token) stands for its own UTF-8."""
    if all(c in CHAR_TO_BYTE for c in token):
        return bytes(CHAR_TO_BYTE[c] for c in token)
    return token.encode("utf-8")


class BPETokenizer(Tokenizer):
    """Byte-level BPE with added tokens, a pre-tokenizer and an optional chat template."""

    def __init__(self, tokens: Sequence[str], merges: Sequence[tuple[str, str]], *,
                 pre: PreTokenizer, added: Iterable[AddedToken] = (),
                 special: SpecialTokens | None = None, chat_template: str | None = None,
                 ignore_merges: bool = False, nfc: bool = False,
                 model_max_length: int | None = None):
        self.tokens = list(tokens)  # id → token text (byte-level spelling, or an added token)
        self.merges = [tuple(m) for m in merges]  # rank order
        self.pre = pre
        self.ignore_merges = ignore_merges  # a piece that is itself a token skips the merges
        self.nfc = nfc  # NFC-normalize text first (Qwen2's tokenizer.json normalizer)
        self.model_max_length = model_max_length
        self._ids = {t: i for i, t in reversed(list(enumerate(self.tokens)))}  # first id wins
        self._byte_ids = [self._ids.get(BYTE_TO_CHAR[b]) for b in range(256)]
        self._ranks = self._merge_table()
        self._bytes = [unspell(t) for t in self.tokens]
        added = AddedVocab(added)
        for t in added.tokens:
            self._check_id(t.id)
            self._bytes[t.id] = t.content.encode("utf-8")
        self._cache: dict[str, tuple[int, ...]] = {}
        super().__init__(special or SpecialTokens(), added, chat_template)

    def _merge_table(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(left id, right id) → (rank, merged id)."""
        table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            ids = self._ids.get(a), self._ids.get(b), self._ids.get(a + b)
            if None in ids:
                raise LmforgeError(f"merge {rank} ({a!r} {b!r}) uses a token that is not in the "
                                   "vocabulary; the tokenizer file is damaged or mismatched")
            table.setdefault((ids[0], ids[1]), (rank, ids[2]))
        return table

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def id_to_token(self, i: int) -> str:
        self._check_id(i)
        return self.tokens[i]

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def _check_id(self, i: int) -> None:
        if not 0 <= i < len(self.tokens):
            raise LmforgeError(f"token id {i} is out of range for a vocabulary of "
                               f"{len(self.tokens)} tokens")

    # -- encoding ---------------------------------------------------------------------------

    def _encode_ordinary(self, text: str) -> list[int]:
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        cache = self._cache
        ids: list[int] = []
        for piece in self.pre.split(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                piece_ids = cache[piece] = self._bpe(piece)
            ids += piece_ids
        return ids

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Merge the byte tokens of one piece, lowest rank first (leftmost on ties).

        Symbols form a linked list (`nxt`, `prv`; a merged-away symbol gets id -1); the heap
        holds (rank, position, left id, right id) of candidate pairs, and an entry is stale,
        so skipped, when either symbol has changed since it was pushed. A symbol only ever
        grows, so its id never returns to an old value and the check is exact.
        """
        try:
            data = piece.encode("utf-8")
        except UnicodeEncodeError as e:
            raise LmforgeError(f"the text holds a lone surrogate ({piece[e.start]!r}), which "
                               "is not Unicode text; fix the text's decoding") from None
        if self.ignore_merges and (whole := self._ids.get(spell(data))) is not None:
            return (whole,)
        ids = [self._byte_ids[b] for b in data]
        if None in ids:  # a byte with no token is dropped, as `tokenizers` and llama.cpp do
            ids = [i for i in ids if i is not None]
        n = len(ids)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        ranks = self._ranks
        heap = [(r[0], i, ids[i], ids[i + 1]) for i in range(n - 1)
                if (r := ranks.get((ids[i], ids[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            _, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] != a or j >= n or ids[j] != b:
                continue
            ids[i], ids[j] = ranks[a, b][1], -1
            nxt[i] = k = nxt[j]
            if k < n:
                prv[k] = i
                if (r := ranks.get((ids[i], ids[k]))) is not None:
                    heapq.heappush(heap, (r[0], i, ids[i], ids[k]))
            if (h := prv[i]) >= 0 and (r := ranks.get((ids[h], ids[i]))) is not None:
                heapq.heappush(heap, (r[0], h, ids[h], ids[i]))
        return tuple(t for t in ids if t >= 0)

    # -- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = False) -> bytes:
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self._bytes)):
            raise LmforgeError(f"cannot decode ids outside 0..{len(self._bytes) - 1} "
                               f"(got {min(ids)}..{max(ids)})")
        skip = self.added.special_ids if skip_special else frozenset()
        return b"".join(self._bytes[i] for i in ids if i not in skip)

    # -- loading and saving -----------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> BPETokenizer:
        """Build from GGUF metadata (key → plain Python value), as llama.cpp reads it."""
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise LmforgeError(f"GGUF tokenizer model {model!r} is not byte-level BPE ('gpt2'), "
                               "the only GGUF tokenizer kind lmforge reads so far")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise LmforgeError(f"GGUF metadata lacks {key}; the file has no usable tokenizer")
        tokens = list(meta["tokenizer.ggml.tokens"])
        # token types: 1 normal, 3 control (special), 4 user-defined (matched whole, not special)
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        pre_name = meta.get("tokenizer.ggml.pre", "default")

        def token_id(key: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}")
            return None if value is None or value < 0 else int(value)

        arch = meta.get("general.architecture")
        return cls(
            tokens, [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]],
            pre=get_pre_tokenizer(pre_name),
            added=[AddedToken(t, i, special=ty == 3)
                   for i, (t, ty) in enumerate(zip(tokens, types, strict=True)) if ty in (3, 4)],
            special=SpecialTokens(
                bos=token_id("bos_token_id"), eos=token_id("eos_token_id"),
                pad=token_id("padding_token_id"), unk=token_id("unknown_token_id"),
                add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False))),
            chat_template=meta.get("tokenizer.chat_template"),
            ignore_merges=pre_name in IGNORE_MERGES,
            model_max_length=meta.get(f"{arch}.context_length"))

    @classmethod
    def from_tokenizer_json(cls, obj: dict, config: dict | None = None) -> BPETokenizer:
        """Build from a parsed Hugging Face `tokenizer.json` (+ `tokenizer_config.json`)."""
        config = config or {}
        model = obj.get("model", {})
        if model.get("type") != "BPE":
            raise LmforgeError(f"tokenizer.json holds a {model.get('type')!r} model; "
                               "BPETokenizer reads byte-level BPE only")
        if model.get("byte_fallback") or model.get("continuing_subword_prefix") or \
                model.get("end_of_word_suffix") or model.get("dropout"):
            raise LmforgeError("tokenizer.json's BPE uses byte_fallback, subword prefixes/"
                               "suffixes or dropout, which byte-level BPE here does not support")
        added = hf_files.read_added_tokens(obj)
        tokens = hf_files.id_list(model["vocab"], added)
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                  for m in model["merges"]]
        special = hf_files.read_special(config, obj, {t: i for i, t in enumerate(tokens)})
        return cls(tokens, merges, pre=from_hf_json(obj.get("pre_tokenizer")), added=added,
                   special=special, chat_template=hf_files.read_chat_template(config),
                   ignore_merges=bool(model.get("ignore_merges")),
                   nfc=hf_files.read_nfc(obj.get("normalizer")),
                   model_max_length=hf_files.read_max_length(config))

    def to_tokenizer_json(self) -> dict:
        """This tokenizer as a Hugging Face `tokenizer.json` object."""
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": hf_files.added_tokens_json(self.added),
            "normalizer": {"type": "NFC"} if self.nfc else None,
            "pre_tokenizer": to_hf_json(self.pre),
            "post_processor": hf_files.post_processor_json(self, byte_level=True),
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "",
                      "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": self.ignore_merges,
                      "vocab": dict(sorted(self._ids.items(), key=lambda kv: kv[1])),
                      "merges": [list(m) for m in self.merges]},
        }

    def save(self, directory: str | Path) -> None:
        hf_files.write_dir(directory, self.to_tokenizer_json(),
                           hf_files.config_json(self, self.model_max_length))
