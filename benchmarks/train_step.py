"""Training speed of lmforge's decoder against transformers' GPT2LMHeadModel of the same shape.

    python benchmarks/train_step.py --threads 2 [--dtypes fp32 bf16] [--reps 5]
        [--json benchmarks/results/train_step.json]

Both models: GPT-2 layout (learned positions, LayerNorm, GELU-tanh, biases, tied
embeddings), the same random batch, SDPA attention, fused AdamW, the same autocast. One
repetition is forward + backward + optimizer step; repetitions alternate between the two
after a warm-up; each figure is the median. Prints tokens/s, the ratio and a JSON record
that names the CPU, threads, repetitions and the load before and after (`common.machine`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import finish, machine

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.objectives.causal_lm import causal_lm_loss

SHAPE = dict(vocab_size=8192, d_model=256, n_layer=4, n_head=8, max_seq_len=256)


def ours() -> torch.nn.Module:
    config = ModelConfig(**SHAPE, d_ff=4 * SHAPE["d_model"], norm="layernorm", mlp="gelu_tanh",
                         position="learned", bias=True, norm_eps=1e-5)
    model = Transformer(config)
    model.init_weights(seed=0)
    return model


def theirs() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["max_seq_len"],
                        n_embd=SHAPE["d_model"], n_layer=SHAPE["n_layer"],
                        n_head=SHAPE["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, attn_implementation="sdpa", bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config)


def step_fn(model, optimizer, x, y, bf16: bool, hf: bool):
    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = model(x).logits if hf else model(x)
            loss = causal_lm_loss(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bench(dtype: str, reps: int, batch: int, block: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, SHAPE["vocab_size"], (batch, block + 1), generator=gen)
    x, y = data[:, :-1], data[:, 1:]
    steps = {}
    for name, model, hf in (("lmforge", ours(), False), ("transformers", theirs(), True)):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        steps[name] = step_fn(model, opt, x, y, dtype == "bf16", hf)
    times = {name: [] for name in steps}
    for rep in range(reps + 1):
        order = list(steps) if rep % 2 == 0 else list(steps)[::-1]
        for name in order:
            t0 = time.perf_counter()
            steps[name]()
            if rep:
                times[name].append(time.perf_counter() - t0)
    tokens = batch * block
    rates = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    return {"dtype": dtype, **rates, "ratio": rates["lmforge"] / rates["transformers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="also write the record here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {"benchmark": "train_step", **machine(args.threads, args.reps), "shape": SHAPE,
              "batch": args.batch, "block": args.block, "results": []}
    print(f"{'dtype':6}{'lmforge tok/s':>16}{'transformers tok/s':>20}{'ratio':>8}")
    for dtype in args.dtypes:
        r = bench(dtype, args.reps, args.batch, args.block)
        record["results"].append(r)
        print(f"{dtype:6}{r['lmforge']:16,.0f}{r['transformers']:20,.0f}{r['ratio']:8.2f}")
    finish(record, args.json)


if __name__ == "__main__":
    main()
