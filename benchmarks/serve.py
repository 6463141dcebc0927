"""Throughput and latency of `lmforge serve` with continuous batching against itself without
(--max-batch 1) and against llama.cpp's `llama-server`, and time to first token at the
fifth chat turn with and without prefix reuse.

    python benchmarks/serve.py --threads 2 [--clients 1 4 16 32] [--tokens 32] [--reps 1]
        [--llama-server build/llama.cpp/bin/llama-server | --no-llama-server]
        [--llama-threads 2 1]

Three lmforge servers run in this process on loopback ports (SmolLM2, same weights and
threads): batched (max batch 32), unbatched (max batch 1) and batched without prefix reuse.
llama-server (built by tools/build_llama_server.sh; used when present) runs as a child
process on the same GGUF with the same threads (-t/-tb; --llama-threads runs one server per
given count instead), 32 parallel slots (-np 32) of the same context (-c 32 × 1,024) and
continuous batching (-cb). For each number of concurrent clients, every client streams
one greedy chat answer of exactly --tokens tokens (lmforge: min_tokens = max_tokens;
llama-server: ignore_eos) to a distinct prompt, and the servers take turns (the order
rotates each repetition); the token counts reported in each answer's usage are checked.
Figures: generated tokens/s over the wall time of the run, p50/p99 time
to first token and inter-token latency over all clients (medians over repetitions). The
chat benchmark sends five turns (each re-sending the history of ~40-token questions and
answers) and times the first token of the fifth. Writes benchmarks/results/serve.json and
prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import KEY, free_port, start_server  # noqa: E402

from lmforge.api import load  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.interop.registry import model_path  # noqa: E402
from lmforge.io import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
LLAMA_SERVER = ROOT / "build" / "llama.cpp" / "bin" / "llama-server"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TOPICS = ["rivers", "planets", "bread", "chess", "volcanoes", "bees", "trains", "clouds"]
CTX, SLOTS = 1024, 32
# body fields that make an answer exactly max_tokens long on each kind of server
EXACT = {"lmforge": lambda n: {"min_tokens": n}, "llama": lambda n: {"ignore_eos": True}}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else 0.0


async def one_stream(http: httpx.AsyncClient, url: str, kind: str, messages: list[dict],
                     tokens: int) -> tuple[float, list[float], str, int]:
    """(time to first token, inter-token gaps, text, completion tokens from the usage chunk)
    of one streamed greedy chat answer."""
    body = {"model": "smollm2", "messages": messages, "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **EXACT[kind](tokens)}
    t0 = time.perf_counter()
    stamps, text, used = [], "", -1
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if delta:
                stamps.append(time.perf_counter())
                text += delta
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return (stamps[0] - t0 if stamps else float("nan")), gaps, text, used


async def load_run(url: str, kind: str, clients: int, tokens: int) -> dict:
    async with httpx.AsyncClient(headers=HEADERS, timeout=3600) as http:
        t0 = time.perf_counter()
        runs = await asyncio.gather(*[one_stream(
            http, url, kind, [{"role": "user", "content": f"Client {i}: tell me about "
                               f"{TOPICS[i % len(TOPICS)]}."}], tokens) for i in range(clients)])
        wall = time.perf_counter() - t0
    if any(r[3] != tokens for r in runs):
        raise RuntimeError(f"{url} did not generate exactly {tokens} tokens per answer: "
                           f"{sorted({r[3] for r in runs})} (-1: no usage chunk)")
    ttft = [r[0] for r in runs]
    gaps = [g for r in runs for g in r[1]]
    return {"tokens_per_s": clients * tokens / wall, "ttft_p50_s": percentile(ttft, 50),
            "ttft_p99_s": percentile(ttft, 99), "itl_p50_s": percentile(gaps, 50),
            "itl_p99_s": percentile(gaps, 99)}


async def fifth_turn_ttft(url: str, tag: str) -> float:
    messages: list[dict] = []
    async with httpx.AsyncClient(headers=HEADERS, timeout=3600) as http:
        for turn in range(5):
            messages.append({"role": "user", "content": f"({tag}) Question {turn}: describe "
                             f"{TOPICS[turn]} in a few sentences, with one example each."})
            ttft, _, text, _ = await one_stream(http, url, "lmforge", messages, 40)
            messages.append({"role": "assistant", "content": text})
    return ttft


def median_of(records: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in records) for k in records[0]}


def find_llama_server(arg: str | None, skip: bool) -> Path | None:
    """The llama-server binary to compare against: --llama-server, else the one
    tools/build_llama_server.sh builds, else None (the comparison is left out)."""
    if skip:
        return None
    path = Path(arg) if arg else LLAMA_SERVER
    if path.is_file():
        return path
    if arg:
        raise LmforgeError(f"--llama-server {arg}: no such file; build it with "
                           "tools/build_llama_server.sh or leave the option out")
    print(f"no llama-server at {path}: the llama.cpp comparison is left out "
          "(build it with tools/build_llama_server.sh)", flush=True)
    return None


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll GET /health until 200 (llama-server answers 503 while it loads the model)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}:\n"
                               + log.read_text(errors="replace")[-3000:])
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"llama-server did not become healthy in {timeout:.0f} s; log: {log}")


@contextlib.contextmanager
def llama_server(binary: Path, threads: int) -> Iterator[tuple[str, str]]:
    """Run llama-server on SmolLM2's GGUF on a free loopback port; yields (url, version).

    -c is the whole KV cache, shared by the -np slots, so SLOTS × CTX gives each slot the
    context lmforge's slots have."""
    port = free_port()
    cmd = [str(binary), "-m", str(model_path("smollm2")), "--host", "127.0.0.1",
           "--port", str(port), "-t", str(threads), "-tb", str(threads), "-np", str(SLOTS),
           "-c", str(SLOTS * CTX), "-cb"]
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             check=False)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "llama-server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(f"http://127.0.0.1:{port}", proc, log)
            yield f"http://127.0.0.1:{port}", (version.stdout + version.stderr).strip()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def start_ours(args: argparse.Namespace) -> dict[str, str]:
    lm = load("smollm2", dtype=args.dtype)
    common = {"ctx": CTX, "max_queue": 256}
    gb = 3.2 if args.dtype == "fp32" else 1.6  # 64 slots of 1,024 positions: 32 + 32 cached
    return {"batched": start_server([lm], max_batch=SLOTS, kv_cache_gb=gb, **common)[0].url,
            "unbatched": start_server([lm], max_batch=1, kv_cache_gb=1.0, **common)[0].url,
            "no_reuse": start_server([lm], max_batch=SLOTS, kv_cache_gb=1.0,
                                     prefix_reuse=False, **common)[0].url}


def print_row(clients: int, row: dict) -> None:
    b, u = row["batched"], row["unbatched"]
    line = (f"{clients:>3} clients: batched {b['tokens_per_s']:7.1f} tok/s "
            f"(TTFT p50 {b['ttft_p50_s']:.2f} s, ITL p50 {b['itl_p50_s'] * 1e3:.0f} ms) | "
            f"max-batch 1 {u['tokens_per_s']:7.1f} tok/s (TTFT p50 {u['ttft_p50_s']:.2f} s) "
            f"| ratio {b['tokens_per_s'] / u['tokens_per_s']:.2f}x")
    for who in [k for k in row if k.startswith("llama_server")]:
        ls = row[who]
        line += (f"\n      {who} {ls['tokens_per_s']:7.1f} tok/s (TTFT p50 "
                 f"{ls['ttft_p50_s']:.2f} s, ITL p50 {ls['itl_p50_s'] * 1e3:.0f} ms) | "
                 f"ours/{who} {b['tokens_per_s'] / ls['tokens_per_s']:.2f}x")
    print(line, flush=True)


def run_load(targets: dict[str, tuple[str, str]], args: argparse.Namespace) -> dict:
    """Every client count against every target (url, kind), rotating the order per rep."""
    for url, kind in targets.values():  # warm-up
        asyncio.run(load_run(url, kind, 2, 4))
    names, results = list(targets), {}
    for clients in args.clients:
        runs: dict[str, list[dict]] = {who: [] for who in names}
        for rep in range(args.reps):
            for who in names[rep % len(names):] + names[:rep % len(names)]:
                url, kind = targets[who]
                runs[who].append(asyncio.run(load_run(url, kind, clients, args.tokens)))
        results[clients] = {who: median_of(r) for who, r in runs.items()}
        print_row(clients, results[clients])
    return results


def vs_llama(load_: dict, who: str) -> dict:
    """Ratios lmforge (batched) / llama-server `who` per client count: > 1 means ours is
    higher (better for tokens/s, worse for latencies)."""
    keys = ["tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s"]
    return {c: {k: row["batched"][k] / row[who][k] for k in keys} for c, row in load_.items()}


def run_chat(servers: dict[str, str], reps: int) -> dict:
    chat: dict[str, list[float]] = {"reuse": [], "no_reuse": []}
    for rep in range(reps):
        order = ["reuse", "no_reuse"] if rep % 2 == 0 else ["no_reuse", "reuse"]
        for who in order:
            url = servers["batched" if who == "reuse" else "no_reuse"]
            chat[who].append(asyncio.run(fifth_turn_ttft(url, f"{who} {rep}")))
    out = {k: statistics.median(v) for k, v in chat.items()}
    print(f"fifth-turn TTFT: reuse {out['reuse']:.3f} s, without {out['no_reuse']:.3f} s "
          f"({out['no_reuse'] / out['reuse']:.2f}x)")
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--llama-server", metavar="PATH",
                        help=f"llama-server binary (default: {LLAMA_SERVER} when it exists)")
    parser.add_argument("--no-llama-server", action="store_true",
                        help="leave the llama.cpp comparison out")
    parser.add_argument("--llama-threads", type=int, nargs="+", metavar="N",
                        help="one llama-server per thread count (default: --threads)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    binary = find_llama_server(args.llama_server, args.no_llama_server)
    torch.set_num_threads(args.threads)
    servers = start_ours(args)
    targets = {"batched": (servers["batched"], "lmforge"),
               "unbatched": (servers["unbatched"], "lmforge")}
    record: dict = {"benchmark": "serve", "threads": args.threads, "dtype": args.dtype,
                    "tokens_per_client": args.tokens, "reps": args.reps,
                    "torch": torch.__version__}
    llama_threads = (args.llama_threads or [args.threads]) if binary is not None else []
    llamas = [f"llama_server_t{n}" for n in llama_threads]
    with contextlib.ExitStack() as stack:
        for who, n in zip(llamas, llama_threads, strict=True):
            url, record["llama_server"] = stack.enter_context(llama_server(binary, n))
            targets[who] = (url, "llama")
        load_ = run_load(targets, args)
    record["load"] = load_
    if llamas:
        record["ours_over_llama_server"] = {who: vs_llama(load_, who) for who in llamas}
    record["chat"] = run_chat(servers, args.reps)
    if 1 in load_ and 32 in load_:
        record["scaling_32_vs_1"] = load_[32]["batched"]["tokens_per_s"] / load_[1][
            "batched"]["tokens_per_s"]
        print(f"aggregate tokens/s, 32 clients / 1 client: {record['scaling_32_vs_1']:.2f}x")
    atomic_write_text(RESULTS, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
