"""One evaluation for every model kind: an n-gram ARPA file or a neural model (built-in
name, .gguf, Hugging Face or lmforge checkpoint or run directory), on the same text.

Each record holds the kind's own cross-entropy and perplexity (per word for n-grams, per
token for neural models) and the tokenization-independent bits per byte and per character
of the whole text, which put the kinds on one scale.

N-gram models score each line as a sentence, `<s> w1 … wk </s>`. Their perplexity follows
SRILM: the denominator counts words plus one `</s>` per sentence, minus out-of-vocabulary
words, whose probabilities are left out; `perplexity_with_oov` is KenLM's `perplexity()`
(OOVs scored as `<unk>`). Bits per byte and per character use every token's probability,
OOVs included as `<unk>` (leaving them out would make a smaller vocabulary look better).
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

from lmforge.metrics import TextMetrics

DEFAULT_CTX = 1024  # tokens per window when --ctx is not given (capped by the window)


def is_arpa(spec: str) -> bool:
    """True when `spec` names a file whose first meaningful line is `\\data\\`."""
    path = Path(spec)
    if not path.is_file():
        return False
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    return line.strip() == "\\data\\"
    except (OSError, UnicodeDecodeError):
        return False
    return False


def evaluate_ngram(spec: str, text: str, progress: bool = False) -> dict:
    from lmforge.ngram.arpa import read_arpa
    from lmforge.ngram.vocab import tokenize

    model = read_arpa(spec, progress)
    score = model.score_corpus(tokenize(text.splitlines()))
    kept = score.log10p[~score.oov]
    srilm = TextMetrics.from_nll(-float(kept.sum()) * math.log(10), len(kept), 1, 1)
    everything = TextMetrics.from_nll(-float(score.log10p.sum()) * math.log(10),
                                      score.tokens, len(text.encode("utf-8")), len(text))
    return {"kind": f"{model.order}-gram", **everything.to_dict(),
            "scored": srilm.tokens, "oovs": score.oovs, "sentences": score.sentences,
            "cross_entropy": srilm.cross_entropy, "perplexity": srilm.perplexity,
            "perplexity_with_oov": everything.perplexity}


def evaluate_neural(spec: str, text: str, ctx: int | None, dtype: str = "fp32",
                    progress: bool = False, adapter: str | None = None,
                    stride: int | None = None, rope_scaling: str | None = None) -> dict:
    from lmforge.api import load
    from lmforge.eval.perplexity import evaluate

    lm = load(spec, dtype=dtype, adapter=adapter, rope_scaling=rope_scaling)
    ctx = ctx or min(DEFAULT_CTX, lm.model.config.max_seq_len)
    ids = lm.tokenizer.encode(text, parse_special=False)
    result = evaluate(lm.model, ids, len(text.encode("utf-8")), ctx, progress=progress,
                      stride=stride)
    bits_per_char = result.nll / (math.log(2) * len(text))
    return {"kind": "neural", **result.to_dict(), "chars": len(text),
            "bits_per_char": bits_per_char}


def evaluate_model(spec: str, text: str, ctx: int | None = None, dtype: str = "fp32",
                   progress: bool = False, adapter: str | None = None,
                   stride: int | None = None, rope_scaling: str | None = None) -> dict:
    """The record of one model on `text` (see the module docstring); `ctx` (None: the
    model's window, at most DEFAULT_CTX), `stride` and `rope_scaling` apply to neural models
    (`eval.perplexity`, `model.rope_scaling`)."""
    if is_arpa(spec):
        return {"model": spec, **evaluate_ngram(spec, text, progress)}
    record = evaluate_neural(spec, text, ctx, dtype, progress, adapter, stride, rope_scaling)
    if rope_scaling is None:
        return {"model": spec, **record}
    return {"model": f"{spec} {rope_scaling}", **record, "rope_scaling": rope_scaling}


def format_record(r: dict) -> str:
    """The human-readable report of one record."""
    unit = "word" if r["kind"].endswith("-gram") else "token"
    lines = [f"{r['kind']} model {r['model']}",
             f"tokens {r['tokens']} (scored {r['scored']}), bytes {r['bytes']}, "
             f"chars {r['chars']}"]
    if "oovs" in r:
        lines.append(f"OOVs {r['oovs']} (left out of perplexity, as SRILM; with them as "
                     f"<unk>, as KenLM: {r['perplexity_with_oov']:.4f})")
    lines += [f"cross-entropy {r['cross_entropy']:.4f} nats/{unit}",
              f"perplexity    {r['perplexity']:.4f}",
              f"bits per byte {r['bits_per_byte']:.4f}",
              f"bits per char {r['bits_per_char']:.4f}"]
    return "\n".join(lines)


def format_table(records: list[dict]) -> str:
    """Several records side by side; bits per byte is the column that compares them."""
    head = ("model", "kind", "tokens", "OOVs", "CE (nats)", "perplexity", "bits/byte",
            "bits/char")
    rows = [(r["model"], r["kind"], str(r["tokens"]), str(r.get("oovs", "-")),
             f"{r['cross_entropy']:.4f}", f"{r['perplexity']:.2f}", f"{r['bits_per_byte']:.4f}",
             f"{r['bits_per_char']:.4f}") for r in records]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    return "\n".join("  ".join(x.ljust(w) if i < 2 else x.rjust(w)
                               for i, (x, w) in enumerate(zip(row, widths, strict=True)))
                     for row in [head, *rows])
