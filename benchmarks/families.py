"""Each Transformer family trained briefly with its objective, against the unigram baseline.

    python benchmarks/families.py --steps 200 --threads 2 [--dtype fp32] [--configs decoder …]

For every family config (configs/shakespeare-char.toml, prefix-shakespeare.toml,
encoder-mlm-nsp.toml, t5-span.toml; Tiny Shakespeare characters, prepared into
data/shakespeare-char when missing) this trains `--steps` steps (warm-up 10% of them, one
evaluation at the end) and compares the objective's validation loss on the predicted tokens
(MLM loss for BERT, without NSP) with the unigram entropy of the validation token stream,
H₁ = −Σ_v p(v) ln p(v) in nats per token: the loss of the best model that ignores context.
Learning means well below it. It also prints a sample from each trained model: a
continuation (decoder, prefix), [MASK] predictions (encoder), sentinel fills (T5). The JSON
record goes to benchmarks/results/families.json; a run of some families (`--configs`)
replaces only their entries, so families can be trained for different numbers of steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.data.prepare import load_tokens, prepare
from lmforge.generate.fill import fill_masks, fill_spans
from lmforge.interop.checkpoint import load_checkpoint
from lmforge.model.transformer import Transformer
from lmforge.train.config import load_run_config
from lmforge.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "shakespeare-char"
SHAKESPEARE = ROOT / ".." / "shared" / "data" / "tinyshakespeare"
CONFIGS = {"decoder": "shakespeare-char.toml", "prefix": "prefix-shakespeare.toml",
           "encoder": "encoder-mlm-nsp.toml", "encoder_decoder": "t5-span.toml"}
PROMPT = "ROMEO:\nWhat light through yonder window breaks?\n"
MASKED = "ROMEO:\nI [MASK]ill not [MASK]e, for I [MASK]ove her [MASK]ore than [MASK]ife.\n"
SPANS = "KING HENRY:\nNow <extra_id_0> my lords, <extra_id_1> the field.\n"


def unigram_entropy(tokens: np.ndarray) -> float:
    """H₁ = −Σ p ln p of the token frequencies, nats per token."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    p = counts[counts > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())


@torch.no_grad()
def continuation(model: Transformer, tok, prompt: str, n: int, prefix: bool) -> str:
    """Sampled continuation (temperature 0.8, seed 0); a prefix model reads the prompt as
    its bidirectional prefix."""
    gen = torch.Generator().manual_seed(0)
    ids = tok.encode(prompt)
    p = torch.tensor([len(ids)]) if prefix else None
    for _ in range(n):
        window = torch.tensor([ids[-model.config.max_seq_len:]])
        logits = model(window, prefix=None if p is None else p.clamp(max=window.shape[1]))
        probs = (logits[0, -1, : tok.vocab_size] / 0.8).softmax(-1)
        ids.append(int(torch.multinomial(probs, 1, generator=gen)))
    return tok.decode(ids[len(tok.encode(prompt)):])


def sample(family: str, run_dir: Path) -> str:
    config, weights, tok = load_checkpoint(run_dir)
    model = Transformer(config)
    model.load_state_dict(weights)
    model.eval()
    if family == "encoder":
        return fill_masks(model, tok, MASKED)
    if family == "encoder_decoder":
        filled, spans = fill_spans(model, tok, SPANS)
        return f"{filled!r} (spans {spans})"
    return continuation(model, tok, PROMPT, 120, prefix=family == "prefix")


def run_family(family: str, steps: int, threads: int, dtype: str, out: Path) -> dict:
    sets = [f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.dtype='{dtype}'",
            f"train.warmup_steps={max(1, steps // 10)}", f"train.threads={threads}",
            f"train.out_dir='{out / family}'", f"data.dir='{DATA}'"]
    run = load_run_config(ROOT / "configs" / CONFIGS[family], sets)
    t0 = time.perf_counter()
    run_dir = train(run)
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "val_loss" in r][-1]
    loss = last.get("val_mlm", last["val_loss"])
    h1 = unigram_entropy(load_tokens(DATA, "val"))
    return {"family": family, "config": f"configs/{CONFIGS[family]}",
            "objective": run.train.objective or "causal_lm", "steps": steps,
            "val_loss": round(loss, 4), "unigram_entropy": round(h1, 4),
            "ratio": round(loss / h1, 3), "seconds": round(seconds, 1),
            "tokens_per_s": round(steps * run.train.batch_size * run.train.block_size / seconds),
            **{k: round(v, 4) for k, v in last.items() if k in ("val_nsp", "val_nsp_acc")},
            "sample": sample(family, run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="for every config (bf16 is slow on CPUs without AVX-512 BF16)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-families")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "families.json")
    args = parser.parse_args()
    if not (DATA / "meta.json").is_file():
        prepare("char", [str(SHAKESPEARE / "train.txt")], DATA, val=str(SHAKESPEARE / "val.txt"))
    record = {"benchmark": "families", "threads": args.threads, "dtype": args.dtype,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "results": []}
    if args.json.is_file():  # a run of some families replaces only their entries
        record["results"] = [r for r in json.loads(args.json.read_text())["results"]
                             if r["family"] not in args.configs]
    for family in args.configs:
        res = run_family(family, args.steps, args.threads, args.dtype, args.out)
        record["results"].append(res)
        print(f"{family:16s} {res['objective']:16s} val {res['val_loss']:.3f} nats/token vs "
              f"unigram {res['unigram_entropy']:.3f} ({res['ratio']:.2f}×), "
              f"{res['seconds']:.0f} s\n  sample: {res['sample']!r}")
    print(json.dumps(record))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    from lmforge.io import atomic_write_text

    atomic_write_text(args.json, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
