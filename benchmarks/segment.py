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

    python benchmarks/segment.py --tagger runs/msr-tagger [RUN_DIR …] [--quality-only]

adds statistical segmenters (`lmforge segment --model RUN_DIR`, a B/M/E/S tagger) and, for
every method, precision, recall, F1 and out-of-vocabulary recall (gold words not in the
training word list) on the MSR test set; the tagger's characters/s (torch threads and CPU
recorded) and its training run (steps, dtype, threads, wall time from tagger.json's writing
to the last checkpoint's). `--quality-only` keeps the speed figures of the existing record.
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
import torch

from lmforge.hardware import cpu_name
from lmforge.io import atomic_write_text
from lmforge.segment import Dictionary, score_lines, segment_lines
from lmforge.segment.oov import oov_recall
from lmforge.segment.tagger import load_tagger

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


def read_msr() -> tuple[list[str], list[str], list[str]]:
    """The training word list, the test text and its gold segmentation."""
    words = [w for w in (MSR / "msr_training_words.utf8").read_text(encoding="utf-8")
             .splitlines() if w]
    test = (MSR / "msr_test.utf8").read_text(encoding="utf-8").splitlines()
    gold = (MSR / "msr_test_gold.utf8").read_text(encoding="utf-8").splitlines()
    return words, test, gold


def quality(gold: list[str], pred: list[str], words: set[str]) -> dict:
    s, oov = score_lines(gold, pred), oov_recall(gold, pred, words)
    return {"precision": s.precision, "recall": s.recall, "f1": s.f1,
            "oov_recall": oov.recall, "oov_correct": oov.correct, "oov_total": oov.total,
            "scored_lines": s.lines - s.skipped}


def tagger_run(run_dir: Path) -> dict:
    """What the run directory says about its training."""
    meta = json.loads((run_dir / "tagger.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    best = min(evals, key=lambda r: r["val_loss"])
    last = max((run_dir / "checkpoints").glob("step-*"), key=lambda p: p.stat().st_mtime)
    return {"model": meta["model"], "tagger": meta["tagger"], "sources": meta["sources"],
            "dtype": meta["train"]["dtype"], "threads": meta["train"]["threads"],
            "batch_size": meta["train"]["batch_size"], "steps": evals[-1]["step"],
            "max_steps": meta["train"]["max_steps"], "best_step": best["step"],
            "best_val_loss": best["val_loss"], "best_val_acc": best.get("val_acc"),
            "wall_s": last.stat().st_mtime - (run_dir / "tagger.json").stat().st_mtime}


def run_tagger(run_dir: Path, test: list[str], gold: list[str], words: set[str]) -> dict:
    tagger = load_tagger(run_dir)
    params = sum(p.numel() for p in tagger.model.parameters()) + \
        sum(p.numel() for p in tagger.heads.parameters())
    seconds, pred = timed(lambda: list(tagger.segment_lines(test)))
    return {"run_dir": str(run_dir), "params": params, "torch_threads": torch.get_num_threads(),
            "chars_per_s": sum(map(len, test)) / seconds, "quality": quality(gold, pred, words),
            "train": tagger_run(run_dir)}


def run_quality(record: dict, taggers: list[Path]) -> dict:
    """Precision, recall, F1 and OOV recall of every method on the MSR test set."""
    words, test, gold = read_msr()
    vocab = set(words)
    d = Dictionary(words)
    with tempfile.TemporaryDirectory() as folder:
        tok = jieba_tokenizer(words, folder)
        preds = {f"lmforge_{m}": list(segment_lines(test, d, m)) for m in ("fmm", "bmm", "bimm")}
        preds["jieba_hmm_false"] = [" ".join(tok.cut(s, HMM=False)) for s in test]
    record["quality_msr"] = {k: quality(gold, p, vocab) for k, p in preds.items()}
    record["taggers"] = {}
    for run_dir in taggers:
        t = record["taggers"][run_dir.name] = run_tagger(run_dir, test, gold, vocab)
        record["quality_msr"][f"tagger:{run_dir.name}"] = t["quality"]
    record["quality_cpu"] = cpu_name()
    return record


def run(repeat: int, reps: int) -> dict:
    words, test, gold = read_msr()
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
    parser.add_argument("--tagger", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                        help="also score these B/M/E/S tagger runs (lmforge segment-train)")
    parser.add_argument("--quality-only", action="store_true",
                        help="keep the record's speed figures; recompute only the quality table")
    args = parser.parse_args()
    if args.quality_only:
        record = run_quality(json.loads(args.json.read_text()), args.tagger)
        print_quality(record)
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
        return
    record = run_quality(run(args.repeat, args.reps), args.tagger)
    print_quality(record)
    print(f"{record['text_chars']:,} characters ({record['text_bytes'] / 1e6:.1f} MB), "
          f"median of {args.reps}")
    print(f"{'':18}{'chars/s':>12}{'F1 (MSR)':>10}")
    for k, v in record["chars_per_s"].items():
        print(f"{k:18}{v:12,.0f}{record['f1_msr'][k]:10.4f}")
    print(f"lmforge fmm / jieba: {record['ratio_fmm_over_jieba']:.2f}x")
    print(json.dumps(record))
    atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")


def print_quality(record: dict) -> None:
    print(f"{'MSR test':28}{'P':>8}{'R':>8}{'F1':>8}{'R_oov':>8}")
    for k, q in record["quality_msr"].items():
        print(f"{k:28}{q['precision']:8.4f}{q['recall']:8.4f}{q['f1']:8.4f}"
              f"{q['oov_recall']:8.4f}")
    for name, t in record["taggers"].items():
        print(f"{name}: {t['params']:,} parameters, {t['chars_per_s']:,.0f} characters/s "
              f"({t['torch_threads']} threads); trained {t['train']['steps']} steps in "
              f"{t['train']['wall_s']:.0f} s ({t['train']['dtype']})")


if __name__ == "__main__":
    main()
