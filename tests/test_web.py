"""The Gradio web UI: backends, trimming, errors, the lock, and a real browser on smollm2.

The browser test starts `lmforge web --model smollm2` on a free loopback port and drives
Debian's Chromium with Playwright: a streamed answer with its tokens/s, a second turn, Stop
in the middle of a long answer, and a request too long for the context shown as an error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serve_helpers import KEY, assert_same_until_near_tie, free_port, start_server

from lmforge.api import LoadedModel
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.generate.config import GenerationConfig
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.serve import web
from lmforge.tokenizers.char import CharTokenizer

CHROMIUM = "/usr/bin/chromium"
CTX = 256  # the API server's context window: small, so that trimming is quick to reach
LMFORGE = Path(sys.executable).with_name("lmforge")
TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .?\nsystemuserassistant",
                              eos="<|im_end|>", extra_special=["<|im_start|>"])
GREEDY = GenerationConfig(max_tokens=5, temperature=0)


def tiny_backend(max_seq_len: int) -> web.LocalBackend:
    config = ModelConfig(vocab_size=TOK.vocab_size, d_model=16, n_layer=1, n_head=2, d_ff=32,
                         max_seq_len=max_seq_len)
    model = Transformer(config)
    model.init_weights(seed=0)
    return web.LocalBackend(LoadedModel(model, TOK, "tiny", "memory", {}), "fp32")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_local_answer_has_figures_and_model_size():
    backend = tiny_backend(512)
    answer = list(backend.stream([user("hello")], "be brief", GREEDY))[-1]
    assert answer.tokens == 5 and answer.tokens_per_s > 0 and answer.dropped == 0
    assert re.search(r"Turn 3: \*\*5 tokens\*\* · \*\*[\d.]+ tokens/s",
                     web.figures(answer, 3))
    assert "tiny · 0M parameters · fp32 · context 512 tokens" in backend.title


def test_old_turns_are_trimmed_with_a_notice():
    backend = tiny_backend(160)
    history = []
    for text in ["first question here", "second question here"]:
        history += [user(text), {"role": "assistant", "content": "an answer of some length"}]
    answer = list(backend.stream(history + [user("third question here")], None,
                                 GenerationConfig(max_tokens=8, temperature=0)))[-1]
    assert answer.dropped >= 1
    assert "oldest turn(s) no longer fit the context window" in web.figures(answer, 3)


def test_a_failed_request_is_shown_and_the_message_kept():
    respond = web.responder(tiny_backend(64))
    past = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "yo"}]
    outputs = list(respond("x" * 100, past, "", 0.0, 1.0, 0, 1.0, 8))
    assert len(outputs) == 2 and outputs[0][0][-2:] == [user("x" * 100),
                                                        {"role": "assistant", "content": ""}]
    history, stats, box = outputs[-1]  # the failed turn is taken back
    assert history == [user("hi"), {"role": "assistant", "content": "yo"}]
    assert stats.startswith("**Error:**") and "context window of 64" in stats
    assert box == "x" * 100
    history, stats, _ = list(respond("hello", [], "", 0.0, 1.0, 0, 0.0, 8))[-1]
    assert history == [] and "repetition_penalty=0.0 is invalid" in stats


@pytest.fixture
def resume(monkeypatch) -> threading.Event:
    """Answers pause after their first token until the returned event is set."""
    event = threading.Event()
    send = web.ChatSession.send

    def paused_send(self, text, config):
        for i, delta in enumerate(send(self, text, config)):
            yield delta
            if i == 0:
                event.wait(10)

    monkeypatch.setattr(web.ChatSession, "send", paused_send)
    return event


def test_the_model_runs_one_generation_at_a_time(monkeypatch, resume):
    """The worker holds the model while it generates; a reader that stops (Stop, a closed
    tab) frees it at the next token, without the generator being resumed."""
    monkeypatch.setattr(web, "LOCK_WAIT_S", 0.05)
    backend = tiny_backend(512)
    first = backend.stream([user("hello")], None, GREEDY)
    next(first)  # mid-answer: the worker holds the model
    with pytest.raises(LmforgeError, match="busy with another answer"):
        next(backend.stream([user("again")], None, GREEDY))
    first.close()  # what Stop does
    resume.set()
    monkeypatch.setattr(web, "LOCK_WAIT_S", 10.0)
    assert list(backend.stream([user("again")], None, GREEDY))[-1].tokens == 5


def test_a_stopped_answer_says_so_whichever_update_reaches_the_page_last(resume):
    """Stop writes "Stopped" while the answer's last update (its figures) may still be on
    its way: that update must say "Stopped" too."""
    backend = tiny_backend(512)
    answers = backend.stream([user("hello")], None, GenerationConfig(max_tokens=50))
    partial = next(answers).text
    backend.stop()
    resume.set()
    answer = list(answers)[-1]
    assert answer.stopped and answer.text == partial
    assert web.figures(answer, 1).startswith("*Stopped.*")


@pytest.fixture(scope="module")
def api_server(smollm2):
    info, server = start_server([smollm2], ctx=CTX, max_batch=2, kv_cache_gb=0.1)
    yield info.url
    server.should_exit = True


def test_api_mode_against_the_real_server(smollm2, api_server):
    backend = web.ApiBackend(api_server, KEY)
    assert backend.title == f"smollm2 · context {CTX} tokens · via {api_server}/v1"
    config = GenerationConfig(max_tokens=8, temperature=0, top_k=40, repetition_penalty=1.1)
    answer = list(backend.stream([user("Name three rivers.")], "Be brief.", config))[-1]
    messages = [{"role": "system", "content": "Be brief."}, user("Name three rivers.")]
    ids = smollm2.tokenizer.apply_chat_template(messages)
    ref = smollm2.engine.generate([ids], config)[0].token_ids
    assert_same_until_near_tie(smollm2.model, smollm2.tokenizer, ids, ref, answer.text)
    assert answer.text and answer.tokens > 1 and answer.tokens_per_s > 0


def test_api_mode_trims_the_history_and_shows_errors(api_server):
    backend = web.ApiBackend(api_server + "/v1", KEY, "smollm2")
    long_turn = [user("Tell me about rivers. " * 20),
                 {"role": "assistant", "content": "Rivers flow to the sea. " * 20}]
    config = GenerationConfig(max_tokens=4, temperature=0)
    answer = list(backend.stream(long_turn * 2 + [user("Thanks!")], None, config))[-1]
    assert answer.dropped >= 1 and answer.text
    respond = web.responder(backend)
    history, stats, box = list(respond("Hi", [], "", 0.0, 1.0, 0, 1.0, CTX))[-1]
    assert history == [] and stats.startswith("**Error:**") and box == "Hi"
    with pytest.raises(LmforgeError, match="401"):
        web.ApiBackend(api_server, "wrong-key")


def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(LmforgeError, match="cannot reach"):
        web.ApiBackend(f"http://127.0.0.1:{free_port()}")


def test_cli_rejects_bad_flags(capsys):
    assert main(["web", "--model", "smollm2", "--api-key", "k"]) == 2
    assert "go with --api" in capsys.readouterr().err
    assert main(["web", "--model", "smollm2", "--port", "70000"]) == 2
    assert "not a port number" in capsys.readouterr().err
    assert main(["web", "--model", "smollm2", "--top-p", "0"]) == 2
    assert "top_p=0.0 is invalid" in capsys.readouterr().err


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lmforge web exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"lmforge web did not answer at {url} within {timeout:.0f} s:\n{log.read_text()}")


@contextmanager
def web_server(args: list[str], log: Path):
    """`lmforge web ARGS` in a child process on a free port; yields its URL."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([str(LMFORGE), "web", "--port", str(port), *args], stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def web_url(tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "server.log"
    with web_server(["--model", "smollm2", "--max-tokens", "8", "--temperature", "0"],
                    log) as url:
        yield url


def test_chat_in_a_real_browser(web_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make test` does it: "
                    "apt-get update && apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(web_url)
            expect(page.locator("#model-info")).to_contain_text("smollm2 · 135M parameters")
            chat_turns(page, expect)
            page.screenshot(path=str(tmp_path / "web-chat.png"), full_page=True)
            stop_and_error(page, expect)
        finally:
            browser.close()
    assert (tmp_path / "web-chat.png").stat().st_size > 10_000


def send(page, text: str) -> None:
    box = page.locator("#message textarea")
    box.fill(text)
    box.press("Enter")


def set_max_tokens(page, n: int) -> None:
    field = page.locator("#max-tokens input[type=number]")
    field.fill(str(n))
    field.press("Enter")


def answered(page, expect, turn: int) -> None:
    """Wait for the figures of answer `turn` (they come after its last token)."""
    expect(page.locator("#stats")).to_contain_text(
        re.compile(rf"Turn {turn}: \d+ tokens · [\d.]+ tokens/s"), timeout=90_000)


def chat_turns(page, expect) -> None:
    """Two turns: each streamed answer is non-empty and followed by its tokens/s."""
    bots = page.locator("#chat .bot")
    for turn, text in enumerate(["Name three rivers.", "And one more?"], start=1):
        send(page, text)
        answered(page, expect, turn)
        expect(bots).to_have_count(turn)
        assert bots.last.inner_text().strip()
        expect(page.locator("#message textarea")).to_have_value("")


def stop_and_error(page, expect) -> None:
    """Stop keeps the partial answer and frees the model; an impossible request is an error."""
    stats, bots = page.locator("#stats"), page.locator("#chat .bot")
    set_max_tokens(page, 400)
    send(page, "Write a long story about a dragon.")
    expect(bots).to_have_count(3, timeout=60_000)
    # wait for streamed text, not the "Loading content" bubble Gradio shows meanwhile
    expect(bots.last).not_to_have_text(re.compile(r"^\s*(Loading content)?\s*$"),
                                       timeout=60_000)
    page.locator("#stop").click()
    expect(stats).to_contain_text("Stopped")
    assert bots.last.inner_text().strip()  # the partial answer stays
    # let Gradio finish cancelling the stopped event: a message sent within the same instant
    # can meet the cancellation and end in Gradio's "Error" (seen once in CI; open in #7's note)
    page.wait_for_timeout(2000)
    set_max_tokens(page, 8)
    send(page, "Thanks.")
    answered(page, expect, 4)
    expect(bots).to_have_count(4)
    set_max_tokens(page, 8192)
    send(page, "Hi")
    expect(stats).to_contain_text("Error:", timeout=30_000)
    expect(stats).to_contain_text("context window of 8192")
    expect(page.locator("#message textarea")).to_have_value("Hi")
