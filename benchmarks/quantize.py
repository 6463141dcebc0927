"""What each weight format costs and buys on SmolLM2: size, memory, perplexity, task accuracy
and speed, side by side with llama.cpp on the same machine.

    python benchmarks/quantize.py --threads 2 [--variants fp32 int8 ...] [--limit 100]
        [--reps 3] [--compile] [--llama-bin build/llama.cpp/bin] [--json FILE]
        [--parts quality speed memory]

Variants: fp32 and bf16 (the GGUF dequantized), int8 (per channel), int4-g32 by round to
nearest and by GPTQ (calibrated on WikiText-2 validation text), fp8-e4m3 (per channel) and
w8a8, each a checkpoint written by `lmforge quantize` from the fp32 model into build/quantize
(int4-g32-rtn-head also with `--head`: the embedding in int8, the tied head over it),
and q4_1-native, the GGUF's own Q4_1 blocks in int4 layers (`--dtype q`). SmolLM2's weights
come from a Q4_1 file, which is exactly an int4-g32 grid: int4-g32 reproduces them (both
methods), so the methods are compared at int4-g64, which the file's grid does not fit.
Activations are fp32 except for bf16 (the packed int8/int4 kernels round them to bf16).

Quality and memory, one child process per variant (so that each one's memory is its own):
seconds to load, resident memory after loading and its peak (VmRSS, VmHWM), the kernel each
projection runs, WikiText-2 test perplexity (the first --ppl-chars characters, windows of
1,024 tokens), and HellaSwag and ARC-Easy normalised accuracy on their first --limit
examples (zero-shot, `lmforge eval`'s harness formats). File size: the bytes on disk of
what the variant loads.

Memory (`--parts memory`, no decoding), --reps child processes per variant (the median
one kept, with every run's resident memory): resident memory before loading (Python, torch
and lmforge imported: the baseline), after loading, at its peak and mapped from files, the
bytes of the model's parameters and buffers by part (`tensor_parts`: the weights
the kernels read, stored codes held beside them, fp32 scales and zeros, the kernels' bf16
[scale; zero] tables, the embedding, float weights, norms, the rest), what the resident
memory holds beyond baseline and tensors, and the resident memory after `malloc_trim(0)`
hands glibc's free heap pages back (how much of that rest is freed memory still mapped), and
after the model is deleted and the heap trimmed again (what loading leaves in the process:
modules imported and libraries initialised on first use).

Speed, in one process holding every variant, alternating repetitions after a warm-up
(the medians of --reps): prefill of 512 tokens (tokens/s), decode at batch 1 and 8
((time for 129 new tokens − time for 1) / 128), and with --compile the same decodes with
compiled steps. llama.cpp (`llama-bench` and `llama-batched-bench`, built by
tools/build_llama_server.sh) runs the GGUF at Q4_1 (the packaged file) and Q8_0 (exported
by `lmforge convert --to gguf`) with the same threads, its repetitions interleaved with ours.

The int4 weight-streaming floor: the bytes a batch-1 decode step must read (every
projection's packed codes, scales and zeros, plus the head) over the fastest rate this
machine streams weights in the same run (`decode.floor`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import finish, load_average, machine
from decode import floor, ours_generate, ours_prefill, timed
from torch import nn

from lmforge.api import load
from lmforge.compress.embedding import QuantEmbedding
from lmforge.compress.linear import QuantLinear
from lmforge.compress.quantize import quantized_layers
from lmforge.eval.perplexity import evaluate
from lmforge.eval.tasks.runner import evaluate_tasks
from lmforge.interop.registry import model_path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
WIKI = DATA / "wikitext-2"
BUILD = ROOT / "build" / "quantize"
QUANTIZED = {  # variant: `lmforge quantize` arguments
    "int8": ["--scheme", "int8"],
    "w8a8": ["--scheme", "w8a8"],
    "int4-g32-rtn": ["--scheme", "int4-g32"],
    "int4-g32-rtn-head": ["--scheme", "int4-g32", "--head"],
    "int4-g32-gptq": ["--scheme", "int4-g32", "--method", "gptq",
                      "--calib", str(WIKI / "valid.txt"), "--calib-samples", "16"],
    "int4-g64-rtn": ["--scheme", "int4-g64"],
    "int4-g64-gptq": ["--scheme", "int4-g64", "--method", "gptq",
                      "--calib", str(WIKI / "valid.txt"), "--calib-samples", "16"],
    "fp8-e4m3": ["--scheme", "fp8-e4m3"],
}
VARIANTS = ["fp32", "bf16", "int8", "int4-g32-rtn", "int4-g32-rtn-head", "int4-g32-gptq",
            "int4-g64-rtn", "int4-g64-gptq", "q4_1-native", "fp8-e4m3", "w8a8"]
LLAMA_TYPES = {"Q4_1": None, "Q8_0": "q8_0"}  # None: the packaged file itself
TASKS = ["hellaswag", "arc_easy"]
LMFORGE = str(Path(sys.executable).parent / "lmforge")


def spec_of(variant: str) -> tuple[str, str]:
    """(model spec, dtype) that `lmforge.load` takes for a variant."""
    if variant in ("fp32", "bf16"):
        return "smollm2", variant
    if variant == "q4_1-native":
        return "smollm2", "q"
    return str(BUILD / variant), "fp32"


def file_bytes(variant: str) -> int | None:
    """Bytes on disk of a quantized checkpoint's tensors or of the GGUF `--dtype q` reads;
    None for fp32 and bf16, which load from the Q4_1 GGUF (their size is `weights_mb`)."""
    spec, dtype = spec_of(variant)
    if spec == "smollm2":
        return model_path("smollm2").stat().st_size if dtype == "q" else None
    return sum(p.stat().st_size for p in Path(spec).rglob("*.safetensors"))


def prepare(variants: list[str], llama: bool) -> dict[str, Path]:
    """Write the quantized checkpoints and the Q8_0 GGUF that are not there yet; the GGUF
    paths llama.cpp runs."""
    BUILD.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        if variant in QUANTIZED and not (BUILD / variant / "config.json").exists():
            subprocess.run([LMFORGE, "quantize", "--model",
                            "smollm2", *QUANTIZED[variant], "--out", str(BUILD / variant)],
                           check=True)
    ggufs = {}
    for name, qtype in (LLAMA_TYPES.items() if llama else ()):
        path = model_path("smollm2") if qtype is None else BUILD / f"smollm2-{qtype}.gguf"
        if not path.exists():
            subprocess.run([LMFORGE, "convert", "--model", "smollm2",
                            "--to", "gguf", "--type", qtype, "--out", str(path)], check=True)
        ggufs[name] = path
    return ggufs


def memory_mb() -> dict[str, float]:
    """Resident memory now, at its peak, and the part of it mapped from files (libraries, a
    safetensors file its tensors still view), from /proc/self/status (MB)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    return {key: int(fields[name].split()[0]) / 1024 for key, name in (
        ("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"), ("rss_file_mb", "RssFile"))}


def quality(variant: str, threads: int, limit: int, ppl_chars: int) -> dict:
    """Load, memory, perplexity and accuracy of one variant (run in a child process)."""
    torch.set_num_threads(threads)
    spec, dtype = spec_of(variant)
    start = time.perf_counter()
    lm = load(spec, dtype=dtype)
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in
               (*lm.model.parameters(), *lm.model.buffers())}
    out = {"load_s": time.perf_counter() - start, **memory_mb(),
           "weights_mb": sum(tensors.values()) / 1e6,
           "kernels": sorted({m.kernel for m in quantized_layers(lm.model).values()})}
    text = (WIKI / "test.txt").read_text(encoding="utf-8")[:ppl_chars]
    ids = lm.tokenizer.encode(text, parse_special=False)
    out["wikitext2_ppl"] = evaluate(lm.model, ids, len(text.encode()), ctx=1024).perplexity
    report, _ = evaluate_tasks(lm, TASKS, limit=limit, progress=False)
    for task in TASKS:
        out[f"{task}_acc_norm"] = report["tasks"][task]["acc_norm"]["value"]
        out[f"{task}_stderr"] = report["tasks"][task]["acc_norm"]["stderr"]
    out["peak_rss_mb"] = memory_mb()["peak_rss_mb"]
    return out


def part_of(module_name: str, name: str, module: nn.Module) -> str:
    """Which part of the model a parameter or buffer belongs to (`tensor_parts`)."""
    if isinstance(module, (QuantEmbedding, nn.Embedding)):
        return "embedding"
    if isinstance(module, QuantLinear):
        if name == "int4_packed" or name == "codes" and "int4_packed" not in module._buffers:
            return "kernel_weights"  # what the product reads
        return {"codes": "stored_codes", "scale": "scales_zeros", "zero": "scales_zeros",
                "scales_zeros": "kernel_scales_zeros"}.get(name, "bias")
    if "norm" in module_name:
        return "norms"
    return "float_weights" if name == "weight" else "other"  # other: RoPE tables


def tensor_parts(model: nn.Module) -> dict[str, float]:
    """MB of the model's parameters and buffers by part, each storage counted once."""
    parts: dict[str, float] = defaultdict(float)
    seen = set()
    for module_name, module in model.named_modules():
        for name, t in (*module.named_parameters(recurse=False),
                        *module.named_buffers(recurse=False)):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                parts[part_of(module_name, name, module)] += t.numel() * t.element_size() / 1e6
    return dict(parts)


def trimmed_rss_mb() -> float | None:
    """Resident MB after glibc's malloc_trim(0) returns free heap pages; None off glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        return None
    return memory_mb()["rss_mb"]


def memory(variant: str, threads: int) -> dict:
    """Baseline, resident and peak memory of one variant after loading, and the model's
    bytes by part (run in a child process: the baseline is its memory before the load)."""
    torch.set_num_threads(threads)
    baseline = memory_mb()["rss_mb"]
    spec, dtype = spec_of(variant)
    start = time.perf_counter()
    lm = load(spec, dtype=dtype)
    out = {"load_s": time.perf_counter() - start, "baseline_rss_mb": baseline, **memory_mb(),
           "parts_mb": tensor_parts(lm.model)}
    out["beyond_tensors_mb"] = out["rss_mb"] - baseline - sum(out["parts_mb"].values())
    out["rss_after_trim_mb"] = trimmed_rss_mb()
    del lm
    gc.collect()
    # what loading leaves behind once the model is gone: modules imported and libraries
    # initialised on first use (the baseline a second model would start from)
    out["rss_after_unload_trim_mb"] = trimmed_rss_mb()
    return out


def memory_row(variant: str, args: argparse.Namespace) -> dict:
    """The run with the median resident memory of --reps fresh processes (the heap's layout,
    so its free pages, differ from run to run), with every run's figure."""
    runs = sorted((run_child("memory", variant, args) for _ in range(args.reps)),
                  key=lambda r: r["rss_mb"])
    return {**runs[len(runs) // 2], "rss_mb_runs": [r["rss_mb"] for r in runs]}


def run_child(part: str, variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--worker-part", part, "--threads",
           str(args.threads), "--limit", str(args.limit), "--ppl-chars", str(args.ppl_chars)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def llama_decode(bin_dir: Path, gguf: Path, threads: int) -> dict[str, float]:
    """One repetition of llama.cpp: prefill 512 and decode 128 at batch 1 (llama-bench),
    decode 128 at batch 8 after 32-token prompts (llama-batched-bench), tokens/s."""
    bench = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(threads),
                            "-p", "512", "-n", "128", "-r", "1", "-o", "json"],
                           check=True, capture_output=True, text=True)
    rows = json.loads(bench.stdout)
    out = {}
    for row in rows:
        key = "prefill_tokens_per_s" if row["n_prompt"] else "decode_b1_tokens_per_s"
        out[key] = row["avg_ts"]
    batched = subprocess.run([str(bin_dir / "llama-batched-bench"), "-m", str(gguf), "-t",
                              str(threads), "-c", "2048", "-npp", "32", "-ntg", "128",
                              "-npl", "8", "--output-format", "jsonl"],
                             check=True, capture_output=True, text=True)
    line = [x for x in batched.stdout.splitlines() if x.startswith("{")][-1]
    out["decode_b8_tokens_per_s"] = json.loads(line)["speed_tg"]
    return out


def speed(variants: list[str], ggufs: dict[str, Path], args: argparse.Namespace) -> dict:
    """Prefill and decode of every variant (and llama.cpp), repetitions interleaved."""
    tok = load("smollm2").tokenizer
    ids = tok.encode((WIKI / "test.txt").read_text(encoding="utf-8")[:20000],
                     parse_special=False)
    prompt, rows = ids[:512], [ids[1000 + 40 * i: 1032 + 40 * i] for i in range(8)]
    runners = {}
    for variant in variants:
        spec, dtype = spec_of(variant)
        runners[variant] = load(spec, dtype=dtype)
        if args.compile:
            runners[f"{variant}+compile"] = load(spec, dtype=dtype, compile=True)
    cases = {}
    for who, lm in runners.items():
        if not who.endswith("+compile"):
            cases[(who, "prefill")] = lambda lm=lm: ours_prefill(lm, prompt)
        for batch in (1, 8):
            for new in (1, 129):
                cases[(who, f"b{batch}_{new}")] = lambda lm=lm, b=batch, n=new: ours_generate(
                    lm, rows[:b], n)
    times: dict = {key: [] for key in cases}
    llama: dict = {f"llama.cpp-{name}": [] for name in ggufs}
    for rep in range(args.reps + 1):  # the first repetition is the warm-up
        order = list(cases.items())
        for key, fn in (order if rep % 2 == 0 else order[::-1]):
            t = timed(fn)
            if rep:
                times[key].append(t)
        for name, path in ggufs.items():
            result = llama_decode(args.llama_bin, path, args.threads)
            if rep:
                llama[f"llama.cpp-{name}"].append(result)
    med = {key: statistics.median(v) for key, v in times.items()}
    out = {}
    for who in runners:
        r = {}
        if (who, "prefill") in med:
            r["prefill_tokens_per_s"] = 512 / med[(who, "prefill")]
        for batch in (1, 8):
            r[f"decode_b{batch}_tokens_per_s"] = batch * 128 / (
                med[(who, f"b{batch}_129")] - med[(who, f"b{batch}_1")])
        out[who] = r
    for who, reps in llama.items():
        out[who] = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    return out


def int4_floor(reps: int) -> dict:
    """Bytes one batch-1 decode step of the int4-g32 model reads, and the tokens/s that
    reading them at the best rate this machine streams fp32 weights (`decode.floor`: one
    product over them all, the per-matrix sweep, or a plain read) allows."""
    lm = load(str(BUILD / "int4-g32-rtn"))
    read = [lm.model.head_weight()]  # the kernel reads its packed copy, not the stored codes
    for m in quantized_layers(lm.model).values():
        read += [m.int4_packed, m.scales_zeros, *([m.bias] if m.bias is not None else [])]
    total = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in read}.values())
    rates = floor(load("smollm2").model, reps)
    best = max(rates[k] for k in ("one_matrix_gb_per_s", "sweep_gb_per_s", "read_gb_per_s"))
    return {"bytes_per_token": total, "gb_per_s": best, "tokens_per_s": best * 1e9 / total}


def print_table(record: dict) -> None:
    quality_rows, speed_rows = record.get("quality", {}), record.get("speed", {})
    keys = ["file_mb", "weights_mb", "rss_mb", "peak_rss_mb", "wikitext2_ppl",
            "hellaswag_acc_norm", "arc_easy_acc_norm"]
    print(f"\n{'variant':22}" + "".join(f"{k:>20}" for k in keys))
    for variant, row in quality_rows.items():
        print(f"{variant:22}" + "".join(f"{row.get(k) or float('nan'):20.3f}" for k in keys))
    keys = ["baseline_rss_mb", "rss_mb", "peak_rss_mb", "rss_after_trim_mb", "tensors_mb"]
    print(f"\n{'variant':22}" + "".join(f"{k:>20}" for k in keys))
    for variant, row in record.get("memory", {}).items():
        row = {**row, "tensors_mb": sum(row["parts_mb"].values())}
        print(f"{variant:22}" + "".join(f"{row.get(k) or float('nan'):20.1f}" for k in keys))
    keys = ["prefill_tokens_per_s", "decode_b1_tokens_per_s", "decode_b8_tokens_per_s"]
    print(f"\n{'variant':22}" + "".join(f"{k:>24}" for k in keys))
    for who, row in speed_rows.items():
        print(f"{who:22}" + "".join(f"{row.get(k, float('nan')):24.1f}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--ppl-chars", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--parts", nargs="+", default=["quality", "speed"],
                        choices=["quality", "speed", "memory"])
    parser.add_argument("--llama-bin", type=Path, default=ROOT / "build" / "llama.cpp" / "bin")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-part", default="quality", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        row = memory(args.worker, args.threads) if args.worker_part == "memory" else \
            quality(args.worker, args.threads, args.limit, args.ppl_chars)
        print(json.dumps(row))
        return
    torch.set_num_threads(args.threads)
    llama = (args.llama_bin / "llama-bench").exists()
    ggufs = prepare(args.variants, llama and "speed" in args.parts)
    # a part run alone keeps the other part of an existing record, with its own machine
    record = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    record.update({"benchmark": "quantize", "limit": args.limit, "ppl_chars": args.ppl_chars,
                   "tasks": TASKS, "llama_cpp": llama})
    for part in args.parts:
        record[f"{part}_machine"] = machine(threads=args.threads, reps=args.reps)
    if "quality" in args.parts:
        record.setdefault("quality", {})  # rows of variants not run now are kept
        for variant in args.variants:
            row = run_child("quality", variant, args)
            size = file_bytes(variant)
            record["quality"][variant] = {"file_mb": size and size / 1e6, **row}
            print(variant, json.dumps(record["quality"][variant]), flush=True)
    if "memory" in args.parts:
        record.setdefault("memory", {})
        for variant in args.variants:
            record["memory"][variant] = memory_row(variant, args)
            print(variant, json.dumps(record["memory"][variant]), flush=True)
        record["memory_machine"]["load_after"] = load_average()
    if "speed" in args.parts:
        record["speed"] = speed(args.variants, ggufs, args)
        if "int4-g32-rtn" in args.variants:
            record["int4_floor"] = int4_floor(args.reps)
    print_table(record)
    finish(record, args.json)


if __name__ == "__main__":
    main()
