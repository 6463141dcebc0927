"""Tokenizer training time, encoding speed and bytes per token: lmforge against `tokenizers`
and sentencepiece at the same vocabulary size.

    python benchmarks/tokenizer_train.py [--vocab-size 8000] [--reps 1] [--encode-reps 3]

Corpora: ../shared/data/zh-corpus/train.txt (4.7 MB of Chinese, ~250k distinct GPT-2
pre-tokens, long ones: the hard case) and ../shared/data/ptb/ptb.train.txt (5.1 MB of
lower-cased English with a 10k-word vocabulary: the easy case); held-out text is each
corpus's validation file. Rows: byte-level BPE (ours vs `tokenizers` with the same GPT-2
pre-tokenizer; sentencepiece BPE), WordPiece (ours vs `tokenizers`' WordPieceTrainer, both
with BERT pre-tokenization), Unigram (sentencepiece; ours when lmforge.tokenizers.unigram
exists). Every trainer gets the same lines in the same process; training repetitions
alternate the order of the competitors, and each figure is the median of --reps.
Encoding: the held-out text encoded whole, median of --encode-reps alternating runs after a
warm-up. `tokenizers` and sentencepiece may use both cores when training. Prints a table
with ours / theirs ratios and writes benchmarks/results/tokenizer_train.json.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import sentencepiece as spm
from common import finish, machine
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from lmforge.tokenizers.bpe_train import train_bpe
from lmforge.tokenizers.wordpiece_train import BERT_SPECIAL, train_wordpiece

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CORPORA = {"zh-corpus": ("zh-corpus/train.txt", "zh-corpus/val.txt"),
           "ptb": ("ptb/ptb.train.txt", "ptb/ptb.valid.txt")}
RESULTS = Path(__file__).resolve().parent / "results" / "tokenizer_train.json"


def hf_bpe(lines: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def hf_wordpiece(lines: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(BERT_SPECIAL), show_progress=False))
    return tok


def sentencepiece(kind: str) -> Callable[[list[str], int], spm.SentencePieceProcessor]:
    def train(lines: list[str], vocab_size: int) -> spm.SentencePieceProcessor:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type=kind,
            vocab_size=vocab_size, num_threads=2, minloglevel=2)
        return spm.SentencePieceProcessor(model_proto=model.getvalue())
    return train


def ours_unigram() -> Callable | None:
    try:
        from lmforge.tokenizers.unigram import train_unigram
    except ImportError:
        print("(no lmforge.tokenizers.unigram yet: the lmforge Unigram row is skipped)")
        return None
    return lambda lines, n: train_unigram(lines, n, progress=False)


def encoder(tok) -> Callable[[str], list[int]]:
    """One `text -> ids` call for any of the three libraries."""
    if isinstance(tok, Tokenizer):
        return lambda text: tok.encode(text).ids
    if isinstance(tok, spm.SentencePieceProcessor):
        return lambda text: tok.encode(text)
    return lambda text: tok.encode(text, parse_special=False)


def timed(fn: Callable, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def bench_corpus(name: str, vocab_size: int, reps: int, encode_reps: int) -> dict:
    train_path, held_path = CORPORA[name]
    lines = (DATA / train_path).read_text(encoding="utf-8").splitlines(keepends=True)
    held = (DATA / held_path).read_text(encoding="utf-8")
    pairs: dict[str, list[tuple[str, Callable]]] = {
        "bpe": [("lmforge", lambda ls, n: train_bpe(ls, n, progress=False)),
                ("tokenizers", hf_bpe), ("sentencepiece", sentencepiece("bpe"))],
        "wordpiece": [("lmforge", lambda ls, n: train_wordpiece(ls, n, progress=False)),
                      ("tokenizers", hf_wordpiece)],
        "unigram": [("sentencepiece", sentencepiece("unigram"))],
    }
    if (unigram := ours_unigram()) is not None:
        pairs["unigram"].insert(0, ("lmforge", unigram))
    rows = []
    for algo, competitors in pairs.items():
        times: dict[str, list[float]] = {who: [] for who, _ in competitors}
        trained = {}
        for rep in range(reps):
            for who, fn in (competitors if rep % 2 == 0 else competitors[::-1]):
                seconds, trained[who] = timed(fn, lines, vocab_size)
                times[who].append(seconds)
                print(f"  {name} {algo} {who}: trained in {seconds:.1f} s", flush=True)
        enc = {who: encoder(tok) for who, tok in trained.items()}
        enc_times: dict[str, list[float]] = {who: [] for who in enc}
        for rep in range(encode_reps + 1):  # the first repetition is the warm-up
            for who in (list(enc) if rep % 2 == 0 else list(enc)[::-1]):
                seconds, _ = timed(enc[who], held)
                if rep:
                    enc_times[who].append(seconds)
        n_bytes = len(held.encode("utf-8"))
        for who in enc:
            rows.append({"corpus": name, "algorithm": algo, "library": who,
                         "vocab_size": vocab_size, "train_s": statistics.median(times[who]),
                         "encode_mb_per_s": n_bytes / 1e6 / statistics.median(enc_times[who]),
                         "bytes_per_token": n_bytes / len(enc[who](held))})
    return {"corpus": name, "rows": rows, "ratios": ratios(rows)}


def ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    """ours / theirs for each algorithm and competitor: train time (>1 = we are slower),
    encode speed and bytes per token (>1 = we are faster / compress more)."""
    out = {}
    for ours in (r for r in rows if r["library"] == "lmforge"):
        for theirs in (r for r in rows if r["algorithm"] == ours["algorithm"]
                       and r["library"] != "lmforge"):
            out[f"{ours['algorithm']}_vs_{theirs['library']}"] = {
                k: ours[k] / theirs[k] for k in ("train_s", "encode_mb_per_s", "bytes_per_token")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--reps", type=int, default=1, help="training repetitions")
    parser.add_argument("--encode-reps", type=int, default=3)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    args = parser.parse_args()
    # `tokenizers` and sentencepiece train on every core, ours on one
    record = {"benchmark": "tokenizer_train", **machine(os.cpu_count(), args.reps),
              "vocab_size": args.vocab_size}
    record["results"] = [bench_corpus(c, args.vocab_size, args.reps, args.encode_reps)
                         for c in args.corpora]
    print(f"\n{'corpus':10}{'algorithm':10}{'library':15}{'train s':>9}{'enc MB/s':>10}"
          f"{'bytes/tok':>10}")
    for res in record["results"]:
        for r in res["rows"]:
            print(f"{r['corpus']:10}{r['algorithm']:10}{r['library']:15}{r['train_s']:9.1f}"
                  f"{r['encode_mb_per_s']:10.2f}{r['bytes_per_token']:10.3f}")
        for key, rat in res["ratios"].items():
            print(f"  {res['corpus']} {key}: train time x{rat['train_s']:.2f}, encode speed "
                  f"x{rat['encode_mb_per_s']:.2f}, bytes/token x{rat['bytes_per_token']:.3f}")
    finish(record, RESULTS)


if __name__ == "__main__":
    main()
