"""Pre-tokenization: cut text into pieces that BPE merges never cross.

A pre-tokenizer is a sequence of regexes applied one after the other, as llama.cpp does
(`unicode_regex_split`) and as a Hugging Face `Sequence` of `Split(..., "isolated")` steps
does: each regex cuts every piece from the step before into its matches and the gaps
between them, both kept. Byte-level BPE (GPT-2, Radford et al. 2019) then maps each piece's
UTF-8 bytes to printable characters; that mapping lives in `bpe.py`.

    >>> get_pre_tokenizer("smollm").split("in 2024  yes")
    ['in', ' ', '2', '0', '2', '4', ' ', ' yes']

The known types are keyed by GGUF `tokenizer.ggml.pre` names; a `tokenizer.json` pre_tokenizer
is read into the same pattern list (`from_hf_json`) and written back (`to_hf_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

from lmforge.errors import LmforgeError

# GPT-2's pattern as Hugging Face's ByteLevel(use_regex=True) writes it; the trailing `\s+`
# (absent in GPT-2's encoder.py) only catches whitespace the gaps would keep anyway.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
DIGIT = r"\p{N}"  # Digits(individual_digits=True): every digit its own piece
DIGITS = r"\p{N}+"  # Digits(individual_digits=False)
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF `tokenizer.ggml.pre` name -> regexes, as llama.cpp's llm_tokenizer_bpe lists them.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt2": (GPT2,),
    "gpt-2": (GPT2,),  # llama.cpp's spelling (its converter writes it; "gpt2" it refuses)
    "default": (GPT2,),  # Hugging Face's reading; llama.cpp adds three punctuation/digit passes
    "smollm": (DIGIT, GPT2),  # SmolLM's tokenizer.json: Sequence[Digits(individual), ByteLevel]
    "starcoder": (DIGIT, GPT2),
    "llama-bpe": (LLAMA3,),
    "llama3": (LLAMA3,),
    "qwen2": (QWEN2,),
    "deepseek-r1-qwen": (QWEN2,),
}
# llama.cpp matches a whole piece that is itself a token before merging for these types, as
# Llama 3's tokenizer.json says with `"ignore_merges": true`.
IGNORE_MERGES = frozenset({"llama-bpe", "llama3"})


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # a PRE_TOKENIZERS key, or "custom" for patterns read from a tokenizer.json
    patterns: tuple[str, ...]
    _compiled: tuple[regex.Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(regex.compile(p) for p in self.patterns))

    def split(self, text: str) -> list[str]:
        pieces = [text]
        for pattern in self._compiled:
            pieces = [part for piece in pieces for part in _split_isolated(pattern, piece)]
        return pieces


def _split_isolated(pattern: regex.Pattern, text: str) -> list[str]:
    """Matches of `pattern` and the non-empty gaps between them, in order."""
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(text):
        start, end = m.span()
        if start == end:  # an empty match cuts nothing
            continue
        if start > pos:
            out.append(text[pos:start])
        out.append(m.group())
        pos = end
    if pos < len(text):
        out.append(text[pos:])
    return out


def get_pre_tokenizer(name: str) -> PreTokenizer:
    """The pre-tokenizer a GGUF's `tokenizer.ggml.pre` names."""
    if name not in PRE_TOKENIZERS:
        raise LmforgeError(
            f"unknown pre-tokenizer type {name!r} (GGUF tokenizer.ggml.pre); lmforge knows "
            f"{', '.join(sorted(PRE_TOKENIZERS))}. Add its regexes (llama.cpp's "
            "llm_tokenizer_bpe lists them) to PRE_TOKENIZERS in lmforge/tokenizers/pretokenize.py")
    return PreTokenizer(name, PRE_TOKENIZERS[name])


def _from_patterns(patterns: tuple[str, ...]) -> PreTokenizer:
    name = next((n for n, p in PRE_TOKENIZERS.items() if p == patterns), "custom")
    return PreTokenizer(name, patterns)


def from_hf_json(obj: dict | None) -> PreTokenizer:
    """Read a `tokenizer.json` pre_tokenizer of Digits / Split / ByteLevel steps."""
    steps = [] if obj is None else obj["pretokenizers"] if obj["type"] == "Sequence" else [obj]
    patterns: list[str] = []
    for i, step in enumerate(steps):
        kind = step["type"]
        if kind == "Digits":
            patterns.append(DIGIT if step.get("individual_digits") else DIGITS)
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            pat = step["pattern"]
            patterns.append(pat["Regex"] if "Regex" in pat else regex.escape(pat["String"]))
        elif kind == "ByteLevel" and i == len(steps) - 1 and not step.get("add_prefix_space"):
            patterns += [GPT2] if step.get("use_regex", True) else []
        else:
            raise LmforgeError(
                f"unsupported pre-tokenizer step {step} in tokenizer.json: lmforge reads "
                "Digits, Split(behavior=Isolated) and a final ByteLevel(add_prefix_space=false)")
    if not steps or steps[-1]["type"] != "ByteLevel":
        raise LmforgeError("tokenizer.json's pre_tokenizer does not end in ByteLevel, so this is "
                           "not a byte-level BPE tokenizer, the only BPE kind lmforge reads")
    return _from_patterns(tuple(patterns))


def to_hf_json(pre: PreTokenizer) -> dict:
    """The `tokenizer.json` pre_tokenizer that splits text as `pre` does."""
    steps: list[dict] = []
    for i, p in enumerate(pre.patterns):
        if p == GPT2 and i == len(pre.patterns) - 1:
            break  # the final ByteLevel step below applies it
        if p in (DIGIT, DIGITS):
            steps.append({"type": "Digits", "individual_digits": p == DIGIT})
        else:
            steps.append({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated",
                          "invert": False})
    steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": bool(pre.patterns) and pre.patterns[-1] == GPT2})
    return steps[0] if len(steps) == 1 else {"type": "Sequence", "pretokenizers": steps}
