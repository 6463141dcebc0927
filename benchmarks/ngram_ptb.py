"""5-gram modified Kneser-Ney on Penn Treebank: perplexity, build time and memory of lmforge
against KenLM's lmplz, in one process.

    python benchmarks/ngram_ptb.py [--order 5] [--reps 3] [--lmplz build/kenlm/bin/lmplz]

Ours: `lmforge.ngram.train` (closed vocabulary: PTB's text already holds `<unk>` as a word)
on ptb.train.txt, then the ARPA file written; test perplexity on ptb.test.txt in SRILM's
convention (words + one </s> per sentence; PTB has no OOVs). Published: 141.2 for KN5
(Mikolov et al., 2011, "Empirical Evaluation and Combination of Advanced Language Modeling
Techniques", table 1).

lmplz (built by tools/build_lmplz.sh; skipped when absent) refuses `<unk>` in its input, so
both estimators also run on a copy of the text where `<unk>` is spelled `UNK`: lmplz's
model and ours (open vocabulary) must then give the same test perplexity, scored by the
kenlm module.

Both builds run as child processes, alternating ours (`lmforge ngram train`, Python start
included) and lmplz over --reps: the median wall time, and the peak RSS of each child from
os.wait4 (lmplz gets -S 1G for its sort buffers). Our estimate alone is also timed in
process. Ends with
one JSON record, also written to benchmarks/results/ngram_ptb.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kenlm

from lmforge.ngram import train, write_arpa
from lmforge.ngram.vocab import read_lines, tokenize

ROOT = Path(__file__).resolve().parents[1]
PTB = ROOT / ".." / "shared" / "data" / "ptb"
PUBLISHED = 141.2


def build_ours(train_lines: list[str], order: int, out: Path, closed: bool) -> dict:
    t0 = time.perf_counter()
    model = train(tokenize(train_lines), order, closed=closed)
    t1 = time.perf_counter()
    write_arpa(model, out)
    return {"model": model, "estimate_s": t1 - t0, "total_s": time.perf_counter() - t0}


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process (os.wait4 gives its own rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def ours_cmd(text: Path, order: int, out: Path, closed: bool) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", "ngram", "train", "--order", str(order),
            "--input", str(text), "--out", str(out)] + (["--closed-vocab"] if closed else [])


def lmplz_cmd(lmplz: Path, text: Path, order: int, out: Path, tmp: Path) -> list[str]:
    return [str(lmplz), "-o", str(order), "-S", "1G", "-T", str(tmp), "--text", str(text),
            "--arpa", str(out)]


def kenlm_perplexity(arpa: Path, lines: list[str]) -> float:
    """KenLM's corpus perplexity: 10^(−Σ score / Σ (words + 1))."""
    m = kenlm.Model(str(arpa))
    total = sum(m.score(line, bos=True, eos=True) for line in lines)
    return 10 ** (-total / sum(len(line.split()) + 1 for line in lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--order", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--lmplz", type=Path, default=ROOT / "build" / "kenlm" / "bin" / "lmplz")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "ngram_ptb.json")
    args = parser.parse_args()
    train_lines, test_lines = (read_lines(PTB / f"ptb.{s}.txt") for s in ("train", "test"))
    have_lmplz = args.lmplz.is_file()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sub_train = [line.replace("<unk>", "UNK") for line in train_lines]
        sub_test = [line.replace("<unk>", "UNK") for line in test_lines]
        (tmp / "train.txt").write_text("\n".join(sub_train) + "\n", encoding="utf-8")
        ours, theirs = [], []
        for _ in range(args.reps):
            ours.append(run_child(ours_cmd(PTB / "ptb.train.txt", args.order,
                                           tmp / "ours.arpa", closed=True)))
            if have_lmplz:
                theirs.append(run_child(lmplz_cmd(args.lmplz, tmp / "train.txt", args.order,
                                                  tmp / "lmplz.arpa", tmp)))
        built = build_ours(train_lines, args.order, tmp / "inproc.arpa", closed=True)
        score = built["model"].score_corpus(tokenize(test_lines))
        ppl = score.perplexity()
        record = {"benchmark": "ngram_ptb", "order": args.order, "smoothing": "mkn",
                  "cpu": platform.processor() or platform.machine(), "reps": args.reps,
                  "ngrams": built["model"].sizes, "test_tokens": score.tokens,
                  "oovs": score.oovs, "perplexity": ppl,
                  "perplexity_convention": "SRILM (PTB test has no OOVs, so KenLM's agrees)",
                  "published_kn5": PUBLISHED, "relative_to_published": ppl / PUBLISHED - 1,
                  "ours_estimate_in_process_s": built["estimate_s"],
                  "ours_build_and_write_in_process_s": built["total_s"],
                  "ours_cli_s": statistics.median(t for t, _ in ours),
                  "ours_cli_peak_rss_mb": max(m for _, m in ours)}
        if have_lmplz:
            run_child(ours_cmd(tmp / "train.txt", args.order, tmp / "ours_sub.arpa", False))
            record.update({
                "lmplz_s": statistics.median(t for t, _ in theirs),
                "lmplz_peak_rss_mb": max(m for _, m in theirs),
                "time_ratio_ours_over_lmplz": record["ours_cli_s"]
                / statistics.median(t for t, _ in theirs),
                "unk_as_word_lmplz_perplexity": kenlm_perplexity(tmp / "lmplz.arpa", sub_test),
                "unk_as_word_ours_perplexity": kenlm_perplexity(tmp / "ours_sub.arpa",
                                                                sub_test),
            })
    print(f"{args.order}-gram modified Kneser-Ney, PTB test perplexity {ppl:.2f} "
          f"(published KN5 {PUBLISHED}; {100 * record['relative_to_published']:+.2f}%)")
    print(f"ours: `lmforge ngram train` {record['ours_cli_s']:.1f} s, peak RSS "
          f"{record['ours_cli_peak_rss_mb']:.0f} MB (in process: estimate "
          f"{built['estimate_s']:.1f} s, with the ARPA file {built['total_s']:.1f} s)")
    if have_lmplz:
        print(f"lmplz: {record['lmplz_s']:.1f} s, peak RSS {record['lmplz_peak_rss_mb']:.0f} "
              f"MB; ours/lmplz time {record['time_ratio_ours_over_lmplz']:.2f}x; "
              "with <unk> as a word: "
              f"lmplz {record['unk_as_word_lmplz_perplexity']:.4f}, ours "
              f"{record['unk_as_word_ours_perplexity']:.4f}")
    print(json.dumps(record))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
