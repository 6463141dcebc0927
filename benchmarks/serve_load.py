"""The load client of benchmarks/serve.py: N concurrent clients each stream one greedy chat
answer of exactly T tokens from an OpenAI-compatible server, and the run's figures come back
as one JSON line, with the client's own CPU time.

    python benchmarks/serve_load.py URL KIND CLIENTS TOKENS    # KIND: lmforge or llama

serve.py runs it as a separate process, so the client shares neither an interpreter lock
nor a process with the server it measures (lmforge's servers live in serve.py's process),
and its CPU time is its own: on a machine with few cores that time is taken from the
servers, and the record reports it beside their figures. Imports only httpx (light).

Figures: generated tokens/s over the wall time of the run, p50/p99 time to first token and
inter-token latency over all clients; `client_cpu_s` is this process's CPU time (user +
system) from before the first request to after the last answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

KEY = "test-key"  # the key tests/serve_helpers.py starts lmforge's servers with
HEADERS = {"Authorization": f"Bearer {KEY}"}
TOPICS = ["rivers", "planets", "bread", "chess", "volcanoes", "bees", "trains", "clouds"]
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
    """`clients` distinct prompts at once; raises when an answer's usage is not `tokens`."""
    cpu0 = time.process_time()
    async with httpx.AsyncClient(headers=HEADERS, timeout=3600) as http:
        t0 = time.perf_counter()
        runs = await asyncio.gather(*[one_stream(
            http, url, kind, [{"role": "user", "content": f"Client {i}: tell me about "
                               f"{TOPICS[i % len(TOPICS)]}."}], tokens) for i in range(clients)])
        wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if any(r[3] != tokens for r in runs):
        raise RuntimeError(f"{url} did not generate exactly {tokens} tokens per answer: "
                           f"{sorted({r[3] for r in runs})} (-1: no usage chunk)")
    ttft = [r[0] for r in runs]
    gaps = [g for r in runs for g in r[1]]
    return {"tokens_per_s": clients * tokens / wall, "wall_s": wall,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "itl_p50_s": percentile(gaps, 50), "itl_p99_s": percentile(gaps, 99),
            "client_cpu_s": cpu, "client_cpu_share": cpu / wall}


def main() -> None:
    url, kind, clients, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(load_run(url, kind, clients, tokens))))


if __name__ == "__main__":
    main()
