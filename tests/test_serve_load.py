"""Load on the server (slow): 32 concurrent streaming clients for a bounded time, one of them
hanging up mid-stream. Every other stream must end with a finish reason and `data: [DONE]`,
no request may fail, and the hung-up client's slot must leave the active set."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_helpers import KEY, metrics, start_server, wait_for
from test_serve import stream_chat

pytestmark = pytest.mark.slow
CLIENTS = 32
DURATION_S = 60.0


@pytest.fixture(scope="module")
def server(smollm2):
    info, srv = start_server([smollm2], ctx=512, max_batch=CLIENTS, max_queue=256,
                             kv_cache_gb=2.0)
    yield info
    srv.should_exit = True


def test_32_streaming_clients_for_a_minute(server):
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                        timeout=120)
    deadline = time.monotonic() + DURATION_S
    failures: list[str] = []
    completed = [0]

    def client(i: int) -> None:
        while time.monotonic() < deadline:
            try:
                text, reason, done = stream_chat(server.url, f"Client {i}: name a colour.", 16)
            except httpx.HTTPError as exc:
                failures.append(f"client {i}: {exc!r}")
                return
            if not (done and reason in ("stop", "length")):
                failures.append(f"client {i}: stream ended without a finish ({reason}, {done})")
            completed[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    assert wait_for(lambda: metrics(http, "lmforge_batch_size", model="smollm2") >= 8, 60)
    cancelled = metrics(http, "lmforge_sequences_finished_total", reason="cancelled")
    stream_chat(server.url, "Write a long story about the sea.", 200, stop_after=3)
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert completed[0] >= CLIENTS
    assert wait_for(lambda: metrics(http, "lmforge_slots", state="active") == 0)
    assert metrics(http, "lmforge_sequences_finished_total", reason="cancelled") \
        == cancelled + 1
    assert metrics(http, "lmforge_requests_total", status="500") == 0
