"""Forward maximum matching speed of lmforge against jieba on the SIGHAN 2005 MSR test text.

    python benchmarks/segment.py [--repeat 6] [--reps 5]

Both sides use the MSR training word list: lmforge as a `Dictionary`, jieba through
`jieba.Tokenizer(dictionary=...)` over a temporary file of "word 1" lines, cut with
`HMM=False` (a DAG of dictionary words and a dynamic programme over it, in pure Python).
The text is the MSR test text repeated --repeat times (6: about 3.4 MB of UTF-8), given to
both line by line, each line's words joined by spaces. Repetitions alternate their order
after a warm-up; each figure is the median. Characters per second count the characters of
the lines without newlines. Also reported: backward and bidirectional matching, dictionary
build times, the tries' memory, and the F1 of each side's output on the test set.
Writes benchmarks/results/segment.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import jieba

from lmforge.hardware import cpu_name
from lmforge.io import atomic_write_text
from lmforge.segment import Dictionary, score_lines, segment_lines

ROOT = Path(__file__).resolve().parents[1]
MSR = ROOT / ".." / "shared" / "data" / "icwb2-msr"
RESULT = ROOT / "benchmarks" / "results" / "segment.json"


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def jieba_tokenizer(words: list[str], folder: str) -> jieba.Tokenizer:
    path = Path(folder) / "msr_dict.txt"
    path.write_text("".join(f"{w} 1\n" for w in words), encoding="utf-8")
    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer(dictionary=str(path))
    tok.tmp_dir = folder  # its prefix-dictionary cache goes here, not to the shared /tmp
    tok.initialize()
    return tok


def trie_megabytes(words: list[str]) -> float:
    tracemalloc.start()
    d = Dictionary(words)
    d.forward, d.backward  # noqa: B018  (build both tries)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size / 1e6


def run(repeat: int, reps: int) -> dict:
    words = [w for w in (MSR / "msr_training_words.utf8").read_text(encoding="utf-8")
             .splitlines() if w]
    test = (MSR / "msr_test.utf8").read_text(encoding="utf-8").splitlines()
    gold = (MSR / "msr_test_gold.utf8").read_text(encoding="utf-8").splitlines()
    lines = test * repeat
    chars = sum(map(len, lines))
    build_ours, d = timed(lambda: Dictionary(words))
    build_ours += timed(lambda: (d.forward, d.backward))[0]
    with tempfile.TemporaryDirectory() as folder:
        build_jieba, tok = timed(lambda: jieba_tokenizer(words, folder))
        cases = {
            "lmforge_fmm": lambda ls: list(segment_lines(ls, d, "fmm")),
            "jieba_hmm_false": lambda ls: [" ".join(tok.cut(s, HMM=False)) for s in ls],
            "lmforge_bmm": lambda ls: list(segment_lines(ls, d, "bmm")),
            "lmforge_bimm": lambda ls: list(segment_lines(ls, d, "bimm")),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for rep in range(reps + 1):  # the first repetition is the warm-up
            order = list(cases) if rep % 2 == 0 else list(cases)[::-1]
            for key in order:
                t, _ = timed(lambda f=cases[key]: f(lines))
                if rep:
                    times[key].append(t)
        f1 = {k: score_lines(gold, fn(test)).f1 for k, fn in cases.items()}
    speed = {k: chars / statistics.median(v) for k, v in times.items()}
    return {"benchmark": "segment", "cpu": cpu_name(), "python": platform.python_version(),
            "jieba": jieba.__version__, "text_chars": chars,
            "text_bytes": sum(len(s.encode()) + 1 for s in lines), "reps": reps,
            "chars_per_s": speed, "ratio_fmm_over_jieba":
                speed["lmforge_fmm"] / speed["jieba_hmm_false"],
            "f1_msr": f1, "build_s": {"lmforge": build_ours, "jieba": build_jieba},
            "lmforge_tries_mb": trie_megabytes(words)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=6, help="copies of the MSR test text")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per case")
    parser.add_argument("--json", type=Path, default=RESULT, help="where to write the record")
    args = parser.parse_args()
    record = run(args.repeat, args.reps)
    print(f"{record['text_chars']:,} characters ({record['text_bytes'] / 1e6:.1f} MB), "
          f"median of {args.reps}")
    print(f"{'':18}{'chars/s':>12}{'F1 (MSR)':>10}")
    for k, v in record["chars_per_s"].items():
        print(f"{k:18}{v:12,.0f}{record['f1_msr'][k]:10.4f}")
    print(f"lmforge fmm / jieba: {record['ratio_fmm_over_jieba']:.2f}x")
    print(json.dumps(record))
    atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
