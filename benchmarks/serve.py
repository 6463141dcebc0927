"""Throughput and latency of `lmforge serve` against llama.cpp's `llama-server` computing in
the same arithmetic with the same threads, against itself without continuous batching
(--max-batch 1), and time to first token at the fifth chat turn with and without prefix
reuse.

    python benchmarks/serve.py --threads 2 [--dtypes fp32 bf16 q] [--int4 DIR] [--clients 1 4 16 32]
        [--tokens 32] [--reps 3] [--skip-baselines] [--json benchmarks/results/serve.json]
        [--llama-server build/llama.cpp/bin/llama-server | --no-llama-server]

Pairs, each measured with both servers up and taking turns: lmforge in fp32 against
llama-server on an F32 GGUF of the same weights, bf16 against a BF16 GGUF (both GGUFs
written from SmolLM2 by `lmforge convert --to gguf`, `interop/gguf_write.py`, into a
temporary directory); `q`, SmolLM2's Q4_1 weights loaded as they are into int4 layers
(`--dtype q`, `compress/gguf_native.py`), against llama-server on that same Q4_1 file; and
with --int4 DIR a quantized checkpoint (`lmforge quantize`) against the Q4_1 file too.
Both servers get the same threads (llama-server: -t and
-tb), 32 slots of 1,024 positions (llama-server: -np 32, -c 32 × 1,024, continuous
batching -cb) and greedy decoding of exactly --tokens tokens per answer (lmforge:
min_tokens = max_tokens; llama-server: ignore_eos; the usage counts are checked).

For each number of concurrent clients, every client streams one chat answer to a distinct
prompt; the servers alternate (the order reverses every repetition) for --reps repetitions
after a warm-up, and each figure is the median, the repetitions' tokens/s kept beside it.
The load client runs as a separate process (`serve_load.py`: it shares no interpreter
lock with lmforge's servers, which live in this process) and reports its own CPU time,
which on a machine with few cores is taken from the servers. Figures: generated tokens/s
over the wall time of the run, p50/p99 time to first token and inter-token latency. The
record names the CPU, threads, repetitions and the machine's load average before and after
every pair.

Baselines (the first pair only; --skip-baselines leaves them out): the same lmforge model
with --max-batch 1 joins the rotation, and the chat benchmark sends five turns (each
re-sending the history of ~40-token questions and answers) to servers with and without
prefix reuse and times the first token of the fifth.
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
from common import finish, load_average, machine
from serve_load import HEADERS, TOPICS, one_stream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import free_port, start_server  # noqa: E402

from lmforge.api import load  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.interop.gguf_write import export_gguf  # noqa: E402
from lmforge.interop.registry import model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
LLAMA_SERVER = ROOT / "build" / "llama.cpp" / "bin" / "llama-server"
LOAD_CLIENT = Path(__file__).resolve().parent / "serve_load.py"
CTX, SLOTS = 1024, 32
# our dtype → the GGUF type of the same arithmetic (None: the model's own Q4_1 file)
GGUF_TYPES = {"fp32": "f32", "bf16": "bf16", "q": None}


def gguf_for(dtype: str | None, tmp: Path) -> Path:
    """SmolLM2 as a GGUF of the arithmetic of `dtype` (written into `tmp`), or for the
    quantized contenders (`q`, a quantized checkpoint: dtype None) the model's own Q4_1 file."""
    if GGUF_TYPES.get(dtype) is None:
        return model_path("smollm2")
    path = tmp / f"smollm2-{GGUF_TYPES[dtype]}.gguf"
    export_gguf("smollm2", path, GGUF_TYPES[dtype])
    return path


def client(url: str, kind: str, clients: int, tokens: int) -> dict:
    """One load run by the separate client process."""
    out = subprocess.run([sys.executable, str(LOAD_CLIENT), url, kind, str(clients),
                          str(tokens)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"the load client failed against {url}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


async def fifth_turn_ttft(url: str, tag: str) -> float:
    messages: list[dict] = []
    async with httpx.AsyncClient(headers=HEADERS, timeout=3600) as http:
        for turn in range(5):
            messages.append({"role": "user", "content": f"({tag}) Question {turn}: describe "
                             f"{TOPICS[turn]} in a few sentences, with one example each."})
            ttft, _, text, _ = await one_stream(http, url, "lmforge", messages, 40)
            messages.append({"role": "assistant", "content": text})
    return ttft


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


def llama_command(binary: Path, gguf: Path, threads: int, port: int) -> list[str]:
    """-c is the whole KV cache, shared by the -np slots, so SLOTS × CTX gives each slot the
    context lmforge's slots have."""
    return [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(threads), "-tb", str(threads), "-np", str(SLOTS), "-c", str(SLOTS * CTX),
            "-cb"]


@contextlib.contextmanager
def llama_server(binary: Path, gguf: Path, threads: int) -> Iterator[str]:
    """Run llama-server on `gguf` on a free loopback port; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "llama-server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(llama_command(binary, gguf, threads, port), stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            _wait_healthy(f"http://127.0.0.1:{port}", proc, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextlib.contextmanager
def ours(lm, **settings) -> Iterator[str]:
    """An lmforge server for `lm` in this process; stopped (its KV cache let go) on exit."""
    info, server = start_server([lm], ctx=CTX, max_queue=256, **settings)
    try:
        yield info.url
    finally:
        server.should_exit = True
        for served in info.state.models.values():
            if served.scheduler is not None:
                served.scheduler.stop()


def kv_gb(lm, slots: int) -> float:
    """KV-cache memory for `slots` sequences of CTX positions in the model's dtype."""
    c = lm.model.config
    bytes_per = torch.tensor([], dtype=lm.model.dtype).element_size()
    return 2 * c.n_layer * c.n_kv_head * c.head_dim * CTX * bytes_per * slots / 1e9 * 1.05


def rotate(targets: dict[str, tuple[str, str]], args: argparse.Namespace) -> dict:
    """Every client count against every target (url, kind), the order reversed every rep."""
    for url, kind in targets.values():  # warm-up
        client(url, kind, 2, 4)
    names, results = list(targets), {}
    for clients in args.clients:
        runs: dict[str, list[dict]] = {who: [] for who in names}
        for rep in range(args.reps):
            for who in (names if rep % 2 == 0 else names[::-1]):
                runs[who].append(client(*targets[who], clients, args.tokens))
        results[clients] = {who: {**{k: statistics.median(r[k] for r in rs) for k in rs[0]},
                                  "tokens_per_s_reps": [r["tokens_per_s"] for r in rs]}
                            for who, rs in runs.items()}
        print_row(clients, results[clients])
    return results


def print_row(clients: int, row: dict) -> None:
    cells = [f"{who} {r['tokens_per_s']:7.1f} tok/s (TTFT p50 {r['ttft_p50_s']:.2f} s, ITL p50 "
             f"{r['itl_p50_s'] * 1e3:.0f} ms, client CPU {r['client_cpu_share']:.0%})"
             for who, r in row.items()]
    if "llama_server" in row:
        ratio = row["lmforge"]["tokens_per_s"] / row["llama_server"]["tokens_per_s"]
        cells.append(f"ours/llama-server {ratio:.2f}x")
    print(f"{clients:>3} clients: " + " | ".join(cells), flush=True)


def ratios(load_: dict, theirs: str) -> dict:
    """lmforge / `theirs` per client count: > 1 means ours is higher (better for tokens/s,
    worse for latencies)."""
    keys = ["tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s"]
    return {c: {k: row["lmforge"][k] / row[theirs][k] for k in keys} for c, row in load_.items()}


def run_chat(lm, reps: int) -> dict:
    chat: dict[str, list[float]] = {"reuse": [], "no_reuse": []}
    with ours(lm, max_batch=SLOTS, kv_cache_gb=kv_gb(lm, 2 * SLOTS)) as reuse, \
            ours(lm, max_batch=SLOTS, kv_cache_gb=kv_gb(lm, SLOTS), prefix_reuse=False) as no:
        for rep in range(reps):
            for who in (["reuse", "no_reuse"] if rep % 2 == 0 else ["no_reuse", "reuse"]):
                url = reuse if who == "reuse" else no
                chat[who].append(asyncio.run(fifth_turn_ttft(url, f"{who} {rep}")))
    out = {k: statistics.median(v) for k, v in chat.items()}
    print(f"fifth-turn TTFT: reuse {out['reuse']:.3f} s, without {out['no_reuse']:.3f} s "
          f"({out['no_reuse'] / out['reuse']:.2f}x)")
    return out


def run_pair(name: str, lm, gguf: Path | None, binary: Path | None, baselines: bool,
             args: argparse.Namespace) -> dict:
    """One pair: lmforge serving `lm` against llama-server on `gguf` (and the baselines)."""
    print(f"\n== {name}: lmforge {lm.model.dtype} against llama-server on {gguf and gguf.name}",
          flush=True)
    out: dict = {"gguf": gguf and gguf.name, "load_before": load_average()}
    with contextlib.ExitStack() as stack:
        targets = {"lmforge": (stack.enter_context(ours(
            lm, max_batch=SLOTS, kv_cache_gb=kv_gb(lm, 2 * SLOTS))), "lmforge")}
        if baselines:
            targets["max_batch_1"] = (stack.enter_context(ours(
                lm, max_batch=1, kv_cache_gb=kv_gb(lm, 2))), "lmforge")
        if binary is not None and gguf is not None:
            targets["llama_server"] = (stack.enter_context(
                llama_server(binary, gguf, args.threads)), "llama")
        out["load"] = rotate(targets, args)
    if "llama_server" in targets:
        out["ours_over_llama_server"] = ratios(out["load"], "llama_server")
    if baselines:
        out["chat"] = run_chat(lm, args.reps)
    out["load_after"] = load_average()
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=list(GGUF_TYPES))
    parser.add_argument("--int4", metavar="DIR", type=Path,
                        help="a quantized checkpoint (lmforge quantize) to pair with the Q4_1 GGUF")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-baselines", action="store_true",
                        help="leave out --max-batch 1 and the prefix-reuse chat turns")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the record goes")
    parser.add_argument("--llama-server", metavar="PATH",
                        help=f"llama-server binary (default: {LLAMA_SERVER} when it exists)")
    parser.add_argument("--no-llama-server", action="store_true",
                        help="leave the llama.cpp comparison out")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    binary = find_llama_server(args.llama_server, args.no_llama_server)
    torch.set_num_threads(args.threads)
    record: dict = {"benchmark": "serve", **machine(args.threads, args.reps),
                    "tokens_per_client": args.tokens, "clients": args.clients}
    if binary is not None:
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                 check=False)
        record["llama_server"] = (version.stdout + version.stderr).strip()
        record["llama_command"] = " ".join(llama_command(Path("llama-server"), Path("MODEL.gguf"),
                                                         args.threads, 0))
    pairs: list[tuple[str, str | Path, str | None]] = [
        (d, "smollm2", d) for d in args.dtypes]
    if args.int4:
        pairs.append(("int4", args.int4, None))
    record["pairs"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, spec, dtype) in enumerate(pairs):
            lm = load(str(spec), dtype=dtype) if dtype else load(str(spec))
            gguf = None if binary is None else gguf_for(dtype, Path(tmp))
            record["pairs"][name] = run_pair(name, lm, gguf, binary,
                                             i == 0 and not args.skip_baselines, args)
    finish(record, args.json)


if __name__ == "__main__":
    main()
