"""Unigram tokenizer training and encoding: lmforge against sentencepiece, vocabulary 8,000.

    python benchmarks/unigram.py [--reps 1] [--encode-reps 3] [--corpora ptb zh]

For each corpus both trainers learn a Unigram vocabulary of 8,000 tokens from the training
text (sentencepiece with its defaults and one thread), alternating which goes first; then
both encode the held-out text (cold: lmforge's word cache is cleared before every run;
sentencepiece with one thread), alternating, median of --encode-reps. Bytes per token is
UTF-8 bytes of the held-out text / tokens (lmforge reads "<unk>" in the text as text, as
sentencepiece does). Ends with one JSON record, also written to
benchmarks/results/unigram.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from lmforge.io import atomic_write_text
from lmforge.tokenizers.unigram import train_unigram

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CORPORA = {"ptb": (DATA / "ptb" / "ptb.train.txt", DATA / "ptb" / "ptb.test.txt"),
           "zh": (DATA / "zh-corpus" / "train.txt", DATA / "zh-corpus" / "val.txt")}
RESULT = Path(__file__).resolve().parent / "results" / "unigram.json"
VOCAB = 8000


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def train_ours(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    return train_unigram(lines, VOCAB, progress=False)


def train_sp(path: Path, prefix: str) -> spm.SentencePieceProcessor:
    spm.SentencePieceTrainer.train(input=str(path), model_prefix=prefix, vocab_size=VOCAB,
                                   model_type="unigram", num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def encode_ours(tok, lines: list[str]) -> int:
    tok._cache.clear()  # cold: no word seen before
    return sum(len(tok.encode(t, parse_special=False)) for t in lines)


def encode_sp(sp: spm.SentencePieceProcessor, lines: list[str]) -> int:
    return sum(map(len, sp.encode(lines, num_threads=1)))


def bench_corpus(name: str, reps: int, encode_reps: int, tmp: str) -> dict:
    train_path, test_path = CORPORA[name]
    times: dict[str, list[float]] = {"lmforge": [], "sentencepiece": []}
    models: dict[str, object] = {}
    for rep in range(reps):
        pair = [("lmforge", lambda: train_ours(train_path)),
                ("sentencepiece", lambda: train_sp(train_path, f"{tmp}/{name}"))]
        for who, fn in (pair if rep % 2 == 0 else pair[::-1]):
            t, models[who] = timed(fn)
            times[who].append(t)
            print(f"{name}: {who} trained in {t:.1f} s", flush=True)
    held = test_path.read_text(encoding="utf-8").splitlines()
    n_bytes, n_chars = sum(len(t.encode()) for t in held), sum(map(len, held))
    enc: dict[str, list[float]] = {"lmforge": [], "sentencepiece": []}
    tokens = {}
    for rep in range(encode_reps):
        pair = [("lmforge", lambda: encode_ours(models["lmforge"], held)),
                ("sentencepiece", lambda: encode_sp(models["sentencepiece"], held))]
        for who, fn in (pair if rep % 2 == 0 else pair[::-1]):
            t, tokens[who] = timed(fn)
            enc[who].append(t)
    out: dict = {"corpus": name, "train_file": train_path.name, "test_file": test_path.name,
                 "test_bytes": n_bytes}
    for who in times:
        out[who] = {"train_s": statistics.median(times[who]),
                    "encode_chars_per_s": n_chars / statistics.median(enc[who]),
                    "bytes_per_token": n_bytes / tokens[who]}
    out["ratio"] = {k: out["lmforge"][k] / out["sentencepiece"][k] for k in out["lmforge"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1, help="training runs per trainer")
    parser.add_argument("--encode-reps", type=int, default=3)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    args = parser.parse_args()
    record = {"benchmark": "unigram", "vocab_size": VOCAB, "machine": platform.processor()
              or platform.machine(), "sentencepiece": spm.__version__, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.corpora:
            res = bench_corpus(name, args.reps, args.encode_reps, tmp)
            record["results"].append(res)
            print(f"\n== {name}")
            print(f"{'':22}{'lmforge':>12}{'sentencepiece':>15}{'ratio':>8}")
            for k, ratio in res["ratio"].items():
                print(f"{k:22}{res['lmforge'][k]:12.3f}{res['sentencepiece'][k]:15.3f}"
                      f"{ratio:8.3f}")
    print(json.dumps(record))
    atomic_write_text(RESULT, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
