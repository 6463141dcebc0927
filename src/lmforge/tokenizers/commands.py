"""`lmforge tokenizer train` and `lmforge tokenize`: train a tokenizer, look at its pieces.

    lmforge tokenizer train --type bpe --vocab-size 8000 --input train.txt --out tok \\
        --special "<|endoftext|>" --eos "<|endoftext|>"
    lmforge tokenize --tokenizer tok "Hello world"      # Hello(…) world(…)
    lmforge tokenize --tokenizer smollm2 --json "Hello world"

Only argparse is imported here; the trainers load inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from lmforge.errors import LmforgeError

TYPES = ("bpe", "unigram", "wordpiece", "char", "whitespace")
# alternating backgrounds (ANSI 46 cyan, 43 yellow) with black text mark the token boundaries
_COLOURS = ("\x1b[30;46m", "\x1b[30;43m")
_RESET = "\x1b[0m"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `tokenizer train` and `tokenize` to the `lmforge` parser."""
    t = sub.add_parser("tokenizer", help="train a tokenizer")
    ts = t.add_subparsers(dest="tokenizer_command", required=True)
    tr = ts.add_parser("train", help="learn a tokenizer from text files",
                       description="Learn a tokenizer and save it as a tokenizer directory "
                                   "(tokenizer.json + tokenizer_config.json; WordPiece also "
                                   "writes vocab.txt) that `prepare --tokenizer DIR` takes.")
    tr.add_argument("--type", required=True, choices=TYPES)
    tr.add_argument("--vocab-size", type=int, required=True,
                    help="tokens in all, special tokens included")
    tr.add_argument("--input", required=True, nargs="+", help="text files or directories")
    tr.add_argument("--out", required=True, help="output tokenizer directory")
    tr.add_argument("--special", nargs="+", action="extend", default=[], metavar="TOKEN",
                    help="special tokens, ids 0.. in this order (WordPiece adds BERT's)")
    tr.add_argument("--eos", default=None, metavar="TOKEN",
                    help="end-of-text token (added to the special tokens); `prepare` puts it "
                         "between documents")
    tr.add_argument("--pre", default="gpt2",
                    help="BPE pre-tokenizer: gpt2, smollm (digits apart), llama3, qwen2, …")
    tr.set_defaults(func=cmd_train)

    k = sub.add_parser("tokenize", help="show the tokens of a text with their ids")
    k.add_argument("--tokenizer", required=True,
                   help="a tokenizer directory or a model (built-in name, .gguf, Hugging Face "
                        "or lmforge directory)")
    k.add_argument("text", help="the text; special-token strings in it are parsed")
    k.add_argument("--json", action="store_true", help="print {ids, pieces} as JSON")
    k.set_defaults(func=cmd_tokenize)


def read_lines(inputs: list[str]) -> Iterator[str]:
    """The lines (newlines kept) of every input file, directories as their *.txt files."""
    from lmforge.data.prepare import expand_inputs

    for path in expand_inputs(inputs):
        with open(path, encoding="utf-8") as f:
            try:
                yield from f
            except UnicodeDecodeError as e:
                raise LmforgeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                                   "convert it to UTF-8 first") from None


def train(kind: str, lines: Iterator[str], vocab_size: int, special: list[str],
          eos: str | None, pre: str):
    """The trained tokenizer of `kind`, from the CLI's options."""
    if vocab_size < 1:
        raise LmforgeError(f"--vocab-size must be positive, got {vocab_size}")
    if kind == "bpe":
        from lmforge.tokenizers.bpe_train import train_bpe

        return train_bpe(lines, vocab_size, special=special, eos=eos, pre=pre)
    if kind == "wordpiece":
        from lmforge.tokenizers.wordpiece_train import BERT_SPECIAL, train_wordpiece

        return train_wordpiece(lines, vocab_size, special=[*BERT_SPECIAL, *special], eos=eos)
    if kind == "whitespace":
        from lmforge.tokenizers.whitespace import WhitespaceTokenizer

        return WhitespaceTokenizer.train(lines, vocab_size, special=special, eos=eos)
    if kind == "char":
        from lmforge.tokenizers.training import train_char

        return train_char(lines, vocab_size, special=special, eos=eos)
    return _train_unigram(lines, vocab_size, special, eos)


def _train_unigram(lines: Iterator[str], vocab_size: int, special: list[str], eos: str | None):
    try:
        from lmforge.tokenizers.unigram import train_unigram
    except ImportError:
        raise LmforgeError("this lmforge has no Unigram trainer yet "
                           "(lmforge.tokenizers.unigram.train_unigram)") from None
    if special:
        raise LmforgeError("the Unigram trainer has fixed special tokens (<unk>, <s>, </s>); "
                           "drop --special, or rename the end token with --eos")
    return train_unigram(list(lines), vocab_size, progress=True,
                         **({"eos": eos} if eos else {}))


def cmd_train(args: argparse.Namespace) -> None:
    tok = train(args.type, read_lines(args.input), args.vocab_size, args.special, args.eos,
                args.pre)
    tok.save(args.out)
    print(f"wrote a {args.type} tokenizer of {tok.vocab_size:,} tokens to {args.out}")


def show_piece(piece: bytes) -> str:
    """A token's text for display: invalid UTF-8 (part of a character) as \\xNN and control
    characters escaped ("\\n"), so every token stays visible on one line."""
    text = piece.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def cmd_tokenize(args: argparse.Namespace) -> None:
    from lmforge.data.prepare import resolve_tokenizer

    if args.tokenizer == "char":
        raise LmforgeError("--tokenizer char names no saved tokenizer; train one with "
                           "`lmforge tokenizer train --type char` and give its directory")
    tok = resolve_tokenizer(args.tokenizer, [])
    ids = tok.encode(args.text, parse_special=True)
    pieces = [show_piece(tok.decode_bytes([i])) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
    elif sys.stdout.isatty():
        print("".join(f"{_COLOURS[n % 2]}{p}{_RESET}" for n, p in enumerate(pieces)))
        print(f"{len(ids)} tokens: {ids}")
    else:
        print("".join(f"{p}({i})" for p, i in zip(pieces, ids, strict=True)))
