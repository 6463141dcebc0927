"""`lmforge segment` and `lmforge segment-score`: Chinese word segmentation from the shell.

    lmforge segment --dict words.txt --mode bimm --input text.txt --output text.seg
    lmforge segment-train --config configs/msr-tagger.toml
    lmforge segment --model runs/msr-tagger --input text.txt --output text.seg
    lmforge segment-score --gold gold.txt --pred text.seg --dict words.txt --json

Only argparse is imported here; the segmentation modules load inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from lmforge.errors import LmforgeError

MODE_NAMES = ("fmm", "bmm", "bimm")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `segment` and `segment-score` to the `lmforge` subcommands."""
    s = sub.add_parser(
        "segment", help="segment Chinese text into words: dictionary maximum matching "
                        "(--dict) or a trained B/M/E/S tagger (--model)",
        description="Streams the input line by line and writes one line per input line: its "
                    "words separated by single spaces. Whitespace in the input separates "
                    "words and is otherwise dropped; no other character is changed. With "
                    "--model, a tagger run's constrained Viterbi tags give the words. fmm: "
                    "forward maximum matching, bmm: backward, bimm: both, keeping the one "
                    "with fewer words, then fewer single characters, then fewer unknown "
                    "words, else bmm.")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--dict",
                     help="a word list (one word per line) or a jieba-style dict.txt "
                          "('word freq [tag]' per line), UTF-8")
    how.add_argument("--model", metavar="RUN_DIR",
                     help="a B/M/E/S tagger run written by `lmforge segment-train` "
                          "(statistical segmentation; --mode is not used)")
    s.add_argument("--mode", default="fmm", choices=MODE_NAMES,
                   help="matching direction (default fmm)")
    s.add_argument("--input", default=None, help="UTF-8 text file (default: standard input)")
    s.add_argument("--output", default=None,
                   help="write here, atomically (default: standard output)")
    s.set_defaults(func=cmd_segment)

    t = sub.add_parser(
        "segment-train", help="train a B/M/E/S character tagger for word segmentation",
        description="Trains an lmforge encoder to tag each character B/M/E/S with the "
                    "trainer's loop (run directory, metrics.jsonl, loss.png, checkpoints, "
                    "best/). The config has [model], [tagger] and [train] tables: see "
                    "configs/msr-tagger.toml and docs/segmentation.md.")
    t.add_argument("--config", required=True, help="the tagger's TOML config")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. train.max_steps=500 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="pause after step N (resume later with --resume)")
    t.set_defaults(func=cmd_segment_train)

    c = sub.add_parser(
        "segment-score", help="word precision, recall and F1 of a segmentation",
        description="Compares word spans line by line (SIGHAN bakeoff scoring). Lines whose "
                    "characters differ between the two files are skipped and reported.")
    c.add_argument("--gold", required=True, help="gold segmentation, words separated by spaces")
    c.add_argument("--pred", required=True, help="predicted segmentation of the same lines")
    c.add_argument("--dict", default=None,
                   help="the training word list: also report the recall of gold words "
                        "missing from it (out-of-vocabulary recall)")
    c.add_argument("--json", action="store_true", help="print one JSON record")
    c.set_defaults(func=cmd_segment_score)


def cmd_segment(args: argparse.Namespace) -> None:
    from lmforge.io import atomic_write

    if args.input is not None and not Path(args.input).is_file():
        raise LmforgeError(f"--input {args.input}: no such file (omit --input to read stdin)")
    segment = _segmenter(args)
    lines = _file_lines(Path(args.input)) if args.input else _stdin_lines()
    if args.output is None:
        _write(segment(lines), sys.stdout)
        return
    atomic_write(args.output, lambda tmp: _write_file(segment(lines), tmp))


def _segmenter(args: argparse.Namespace) -> Callable[[Iterable[str]], Iterator[str]]:
    """Lines in, space-separated words out: the tagger of --model, or matching on --dict."""
    if args.model is not None:
        from lmforge.segment.tagger import load_tagger

        return load_tagger(args.model).segment_lines
    from lmforge.segment.dictionary import Dictionary
    from lmforge.segment.maxmatch import matcher, segment_lines

    dictionary = Dictionary.load(args.dict)
    matcher(args.mode)("", dictionary)  # build the tries now, not under the progress bar
    return lambda lines: segment_lines(lines, dictionary, args.mode)


def _write(lines: Iterator[str], out: TextIO) -> None:
    for words in lines:
        out.write(words + "\n")


def _write_file(lines: Iterator[str], tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8") as out:
        _write(lines, out)


def cmd_segment_train(args: argparse.Namespace) -> None:
    from lmforge.segment.tagger import train_tagger

    run_dir = train_tagger(args.config, args.set, args.resume, args.stop_after)
    print(f"run directory: {run_dir} (segment with: lmforge segment --model {run_dir})")


def _file_lines(path: Path) -> Iterator[str]:
    """The decoded lines of `path` (a leading BOM dropped), with a progress bar in bytes."""
    from tqdm import tqdm

    with path.open("rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                    desc="segment", file=sys.stderr) as bar:
        for n, raw in enumerate(f, 1):
            bar.update(len(raw))
            try:
                yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise LmforgeError(f"--input {path}, line {n}: not UTF-8 ({exc}); convert "
                                   "the file, e.g. with iconv -f GBK -t UTF-8") from None


def _stdin_lines() -> Iterator[str]:
    try:
        yield from sys.stdin
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"standard input is not UTF-8 text ({exc})") from None


def cmd_segment_score(args: argparse.Namespace) -> None:
    from lmforge.segment.oov import oov_recall_files
    from lmforge.segment.score import score_files

    s = score_files(args.gold, args.pred)
    oov = oov_recall_files(args.gold, args.pred, args.dict) if args.dict else None
    if args.json:
        extra = {"oov": oov.to_dict()} if oov else {}
        print(json.dumps({"gold": args.gold, "pred": args.pred, **s.to_dict(), **extra}))
        return
    if oov:
        print(f"out-of-vocabulary recall {oov.recall:.4f} ({oov.correct} of {oov.total} gold "
              f"words not in --dict)")
    print(f"precision {s.precision:.4f}  recall {s.recall:.4f}  F1 {s.f1:.4f}\n"
          f"lines {s.lines}: scored {s.lines - s.skipped}, skipped {s.skipped}\n"
          f"words: gold {s.gold_words}, predicted {s.pred_words}, correct {s.correct}")
    if s.skipped:
        shown = ", ".join(map(str, s.skipped_lines[:20]))
        more = f" and {s.skipped - 20} more" if s.skipped > 20 else ""
        print(f"skipped lines (their characters differ between --gold and --pred): "
              f"{shown}{more}")
