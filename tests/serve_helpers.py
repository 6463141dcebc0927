"""Shared by the server tests: a live server on a free loopback port, metrics, near ties."""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import uvicorn

KEY = "test-key"
METRIC = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: list, **settings) -> tuple[SimpleNamespace, uvicorn.Server]:
    """Serve `models` with uvicorn in a background thread; returns (info, server)."""
    from lmforge.serve.app import build_app, make_state

    state, _ = make_state(models, api_key=KEY, **settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    return SimpleNamespace(url=f"http://127.0.0.1:{port}", state=state), server


@contextmanager
def live_server(models: list, **settings):
    """`start_server` as a context: the server stops when the block ends."""
    info, server = start_server(models, **settings)
    try:
        yield info
    finally:
        server.should_exit = True


def openai_client(info: SimpleNamespace):
    """The official client pointed at a test server."""
    import openai

    return openai.OpenAI(base_url=info.url + "/v1", api_key=KEY)


def metrics(http, name: str, **labels: str) -> float:
    """The value of one series of /metrics (0 when absent)."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in http.get("/metrics").text.splitlines():
        m = METRIC.match(line)
        if m and m.group(1) == name and want <= set((m.group(2) or "{}")[1:-1].split(",")):
            return float(m.group(3))
    return 0.0


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@torch.inference_mode()
def top_gap(model, ids: list[int]) -> float:
    """Gap between the two largest next-token logits after `ids` (one full forward)."""
    logits = model(torch.tensor([ids]))[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def assert_same_until_near_tie(model, tokenizer, prompt: list[int], ref: list[int],
                               text: str, tol: float = 1e-3) -> None:
    """`text` must equal the decoding of the reference tokens `ref`, up to the first step
    where the reference's top two logits are within `tol` (kernels round differently)."""
    ref_text = tokenizer.decode(ref, skip_special=True)
    if text == ref_text or not ref:
        return
    i = 0  # the longest reference prefix whose text `text` still starts with
    while i < len(ref) and text.startswith(tokenizer.decode(ref[: i + 1], skip_special=True)):
        i += 1
    gap = top_gap(model, prompt + ref[:i])
    assert gap < tol, (f"answers differ at token {i} where the top-2 logit gap is {gap:.2e}:\n"
                       f"{text!r}\n{ref_text!r}")
