"""Throughput and latency of `lmforge serve` with continuous batching against itself without
(--max-batch 1), and time to first token at the fifth chat turn with and without prefix reuse.

    python benchmarks/serve.py --threads 2 [--clients 1 4 16 32] [--tokens 32] [--reps 1]

Three servers run in this process on loopback ports (SmolLM2, same weights and threads):
batched (max batch 32), unbatched (max batch 1) and batched without prefix reuse. For each
number of concurrent clients, every client streams one chat answer of exactly --tokens
tokens (min_tokens = max_tokens) to a distinct prompt; the batched and unbatched runs
alternate (order flipped each repetition). Figures: generated tokens/s over the wall time of
the run, p50/p99 time to first token and inter-token latency over all clients (medians over
repetitions). The chat benchmark sends five turns (each re-sending the history of ~40-token
questions and answers) and times the first token of the fifth. Writes
benchmarks/results/serve.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import KEY, start_server  # noqa: E402

from lmforge.api import load  # noqa: E402
from lmforge.io import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TOPICS = ["rivers", "planets", "bread", "chess", "volcanoes", "bees", "trains", "clouds"]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else 0.0


async def one_stream(http: httpx.AsyncClient, url: str, messages: list[dict], tokens: int
                     ) -> tuple[float, list[float], str]:
    """(time to first token, inter-token gaps, text) of one streamed chat answer."""
    body = {"model": "smollm2", "messages": messages, "max_tokens": tokens,
            "min_tokens": tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    stamps, text = [], ""
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    stamps.append(time.perf_counter())
                    text += delta
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return (stamps[0] - t0 if stamps else float("nan")), gaps, text


async def load_run(url: str, clients: int, tokens: int) -> dict:
    async with httpx.AsyncClient(headers=HEADERS, timeout=3600) as http:
        t0 = time.perf_counter()
        runs = await asyncio.gather(*[one_stream(
            http, url, [{"role": "user", "content": f"Client {i}: tell me about "
                         f"{TOPICS[i % len(TOPICS)]}."}], tokens) for i in range(clients)])
        wall = time.perf_counter() - t0
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
            ttft, _, text = await one_stream(http, url, messages, 40)
            messages.append({"role": "assistant", "content": text})
    return ttft


def median_of(records: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in records) for k in records[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load("smollm2", dtype=args.dtype)
    common = {"ctx": 1024, "max_queue": 256}
    gb = 3.2 if args.dtype == "fp32" else 1.6  # 64 slots of 1,024 positions: 32 + 32 cached
    servers = {"batched": start_server([lm], max_batch=32, kv_cache_gb=gb, **common)[0],
               "unbatched": start_server([lm], max_batch=1, kv_cache_gb=1.0, **common)[0],
               "no_reuse": start_server([lm], max_batch=32, kv_cache_gb=1.0,
                                        prefix_reuse=False, **common)[0]}
    asyncio.run(load_run(servers["batched"].url, 2, 4))  # warm-up
    asyncio.run(load_run(servers["unbatched"].url, 1, 4))
    results: dict = {"load": {}, "chat": {}}
    for clients in args.clients:
        runs: dict[str, list[dict]] = {"batched": [], "unbatched": []}
        for rep in range(args.reps):
            order = ["batched", "unbatched"] if rep % 2 == 0 else ["unbatched", "batched"]
            for who in order:
                runs[who].append(asyncio.run(load_run(servers[who].url, clients, args.tokens)))
        results["load"][clients] = {who: median_of(r) for who, r in runs.items()}
        b, u = results["load"][clients]["batched"], results["load"][clients]["unbatched"]
        print(f"{clients:>3} clients: batched {b['tokens_per_s']:7.1f} tok/s "
              f"(TTFT p50 {b['ttft_p50_s']:.2f} s, ITL p50 {b['itl_p50_s'] * 1e3:.0f} ms) | "
              f"max-batch 1 {u['tokens_per_s']:7.1f} tok/s (TTFT p50 {u['ttft_p50_s']:.2f} s) "
              f"| ratio {b['tokens_per_s'] / u['tokens_per_s']:.2f}x", flush=True)
    chat = {"reuse": [], "no_reuse": []}
    for rep in range(args.reps):
        order = ["reuse", "no_reuse"] if rep % 2 == 0 else ["no_reuse", "reuse"]
        for who in order:
            url = servers["batched" if who == "reuse" else "no_reuse"].url
            chat[who].append(asyncio.run(fifth_turn_ttft(url, f"{who} {rep}")))
    results["chat"] = {k: statistics.median(v) for k, v in chat.items()}
    print(f"fifth-turn TTFT: reuse {results['chat']['reuse']:.3f} s, without "
          f"{results['chat']['no_reuse']:.3f} s "
          f"({results['chat']['no_reuse'] / results['chat']['reuse']:.2f}x)")
    load_ = results["load"]
    if 1 in load_ and 32 in load_:
        results["scaling_32_vs_1"] = (load_[32]["batched"]["tokens_per_s"]
                                      / load_[1]["batched"]["tokens_per_s"])
        print(f"aggregate tokens/s, 32 clients / 1 client: {results['scaling_32_vs_1']:.2f}x")
    record = {"benchmark": "serve", "threads": args.threads, "dtype": args.dtype,
              "tokens_per_client": args.tokens, "reps": args.reps,
              "torch": torch.__version__, **results}
    atomic_write_text(RESULTS, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
