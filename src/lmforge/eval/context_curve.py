"""Perplexity by context length: how much a model gains from (or loses past) more context.

For each context length N in a list, the text is read in sliding windows of N tokens
advancing by ⌈N/2⌉ (`eval.perplexity.sliding_windows`), so every scored token sees between
N/2 and N − 1 tokens before it. Every point scores the same tokens, those from position
max(N) − 1 on, so the points differ only in the context the model is given:

    PPL(N) = exp( (1/|S|) Σ_{t ∈ S} −log p(x_t | x_{t−c_t} … x_{t−1}) ),   N/2 ≤ c_t < N

A model within its trained window improves with N and levels off; past it (no RoPE
scaling) perplexity rises sharply, which RoPE scaling (`model/rope_scaling.py`) is meant
to prevent. Several curves (models × scalings) are written as one JSON and drawn on one
PNG, with the trained windows marked.

    lmforge eval --model smollm2 --input ../shared/data/wikitext-2/test.txt --chars 120000 \\
        --ctx-curve 256,1024,4096,8192,16384 --rope-scaling none yarn:2 --plot curve.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.perplexity import sliding_nll
from lmforge.io import atomic_write, atomic_write_text
from lmforge.model.transformer import Transformer


def parse_ctxs(text: str) -> list[int]:
    """"64,128,256" → [64, 128, 256] (sorted, each at least 2)."""
    try:
        ctxs = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        ctxs = []
    if not ctxs or ctxs[0] < 2:
        raise LmforgeError(f"--ctx-curve {text!r} is not a comma-separated list of context "
                           "lengths of at least 2 tokens, such as 64,128,256")
    return ctxs


def context_curve(model: Transformer, ids: list[int], ctxs: list[int],
                  progress: bool = False) -> list[dict]:
    """One point {ctx, stride, scored, nll, cross_entropy, perplexity} per context length
    (the module docstring's formula); the text must be longer than the longest one."""
    start = max(ctxs) - 1
    if len(ids) <= start + 1:
        raise LmforgeError(f"the text has {len(ids)} tokens; a curve up to {max(ctxs)} "
                           f"tokens of context needs more (give a longer --input, or a "
                           "larger --chars)")
    points = []
    for ctx in ctxs:
        stride = (ctx + 1) // 2
        nll, scored = sliding_nll(model, ids, ctx, stride, start, progress)
        points.append({"ctx": ctx, "stride": stride, "scored": scored, "nll": nll,
                       "cross_entropy": nll / scored, "perplexity": math.exp(nll / scored)})
    return points


def plot_curves(curves: list[dict], path: str | Path) -> None:
    """Perplexity against context length (log-log), one line per curve; a dotted line at
    each curve's trained window (`curves`: records of `curve_record`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        xs = [p["ctx"] for p in curve["points"]]
        line, = ax.plot(xs, [p["perplexity"] for p in curve["points"]], marker="o", lw=1.5,
                        label=curve["label"])
        ax.axvline(curve["trained_ctx"], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens); dotted: trained window")
    ax.set_ylabel("perplexity (same tokens at every point)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def curve_record(spec: str, rope_scaling: str | None, dtype: str, text: str,
                 ctxs: list[int], progress: bool = False) -> dict:
    """Load `spec` (with `rope_scaling`) and measure its curve on `text`."""
    from lmforge.api import load

    lm = load(spec, dtype=dtype, rope_scaling=rope_scaling)
    ids = lm.tokenizer.encode(text, parse_special=False)
    config = lm.config
    label = spec if rope_scaling in (None, "none") else f"{spec} {rope_scaling}"
    return {"label": label, "model": spec, "rope_scaling": rope_scaling or "none",
            "dtype": dtype, "tokens": len(ids), "window": config.max_seq_len,
            "trained_ctx": config.rope_original_max_seq_len or config.max_seq_len,
            "points": context_curve(lm.model, ids, ctxs, progress)}


def cmd_ctx_curve(args: argparse.Namespace, text: str) -> None:
    """`lmforge eval --ctx-curve …`: a curve per --model × --rope-scaling; with --plot
    PATH.png, the PNG and PATH.json (every point of every curve)."""
    ctxs = parse_ctxs(args.ctx_curve)
    curves = [curve_record(m, s, args.dtype, text, ctxs, progress=True)
              for m in args.model for s in (args.rope_scaling or [None])]
    for curve in curves:
        print(curve["label"])
        for p in curve["points"]:
            print(f"  ctx {p['ctx']:>6}  perplexity {p['perplexity']:10.4f}  "
                  f"(scored {p['scored']})")
    if args.plot:
        plot = Path(args.plot)
        record = {"input": args.input, "chars": len(text), "curves": curves}
        atomic_write_text(plot.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
        plot_curves(curves, plot)
        print(f"wrote {plot} and {plot.with_suffix('.json')}")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """`lmforge eval`'s long-input flags (docs/long_context.md)."""
    p.add_argument("--stride", type=int, default=None,
                   help="sliding windows: each starts this many tokens after the previous "
                        "one and scores only tokens no earlier window scored (default: --ctx, "
                        "no overlap)")
    p.add_argument("--rope-scaling", nargs="+", default=None, metavar="METHOD:FACTOR",
                   help="run RoPE models past their trained window: linear:S, ntk:S or "
                        "yarn:S (S times the window), or none:S (plain RoPE over it, the "
                        "baseline); several compare")
    p.add_argument("--ctx-curve", default=None, metavar="N,N,…",
                   help="perplexity at each of these context lengths instead (the same "
                        "tokens at every point; docs/long_context.md)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="with --ctx-curve: draw the curves here, and write every point to "
                        "the same name with .json")
