"""Every family served: tiny runs of a decoder, a prefix decoder, an encoder-decoder and an
encoder (trained here on Tiny Shakespeare, characters) behind one live server. The API's
greedy answers equal `lmforge generate`'s, a model without a chat template serves
completions only, an encoder fills [MASK], and a prefill that fails fails only its own
request."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from conftest import run_workdir, tiny_run_toml
from serve_helpers import KEY, metrics, start_server

import lmforge
from lmforge.cli import main
from lmforge.generate.core import Batch
from lmforge.generate.fill import fill_masks
from lmforge.train.config import load_run_config
from lmforge.train.loop import train

FAMILIES = {  # served name: [model] lines
    "decoder": "",
    "prefix": 'family = "prefix"',
    "t5": 'family = "encoder_decoder"\nposition = "relative"\nn_encoder_layer = 2',
    "roberta": 'family = "encoder"',
}
GENERATIVE = ["decoder", "prefix", "t5"]
PROMPT = "ROMEO:\nNow is the winter"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_char):
    work = run_workdir(tmp_path_factory.mktemp("served"), shakespeare_char, {
        f"{name}.toml": tiny_run_toml(model, "", out_dir=name, block_size=48, eval_every=24,
                                      threads=1)
        for name, model in FAMILIES.items()})
    return {name: train(load_run_config(work / f"{name}.toml"), progress=False)
            for name in FAMILIES}


@pytest.fixture(scope="module")
def served(runs):
    models = {name: lmforge.load(str(run)) for name, run in runs.items()}
    info, srv = start_server(list(models.values()), ctx=128, max_batch=4, max_queue=16,
                             kv_cache_gb=0.05)
    info.ids = {name: m["id"] for name, m in zip(
        models, httpx.get(info.url + "/v1/models", headers=auth()).json()["data"],
        strict=True)}
    info.models = models
    yield info
    srv.should_exit = True


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served.url, headers=auth(), timeout=120) as client:
        yield client


def complete(http, model: str, prompt: str, **fields) -> httpx.Response:
    return http.post("/v1/completions", json={"model": model, "prompt": prompt,
                                              "max_tokens": 12, "temperature": 0, **fields})


@pytest.mark.parametrize("family", GENERATIVE)
def test_greedy_api_answer_equals_lmforge_generate(family, runs, served, http, capsys):
    code = main(["generate", "--model", str(runs[family]), "--prompt", PROMPT,
                 "--max-tokens", "12", "--temperature", "0"])
    out = capsys.readouterr().out
    assert code == 0
    r = complete(http, served.ids[family], PROMPT)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] + "\n" == out
    with http.stream("POST", "/v1/completions", json={
            "model": served.ids[family], "prompt": PROMPT, "max_tokens": 12,
            "temperature": 0, "stream": True}) as s:
        chunks = [line for line in s.iter_lines() if line.startswith("data: {")]
    streamed = "".join(json.loads(c[6:])["choices"][0]["text"] for c in chunks)
    assert streamed + "\n" == out


@pytest.mark.parametrize("family", GENERATIVE)
def test_web_chat_continues_each_message_of_a_model_without_a_template(family, runs, served,
                                                                      capsys):
    from lmforge.serve.web import LocalBackend

    main(["generate", "--model", str(runs[family]), "--prompt", PROMPT, "--max-tokens", "12",
          "--temperature", "0"])
    out = capsys.readouterr().out
    backend = LocalBackend(served.models[family], "fp32")
    config = lmforge.GenerationConfig(max_tokens=12, temperature=0)
    history = [{"role": "user", "content": "KING:"}, {"role": "assistant", "content": "x"},
               {"role": "user", "content": PROMPT}]
    *_, answer = backend.stream(history, None, config)
    assert answer.text + "\n" == out and answer.tokens >= 1


def test_models_list_their_endpoints_and_chat_needs_a_template(served, http):
    listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    for family in GENERATIVE:
        assert listed[served.ids[family]]["kind"] == "completions"  # a character tokenizer
        assert listed[served.ids[family]]["endpoints"] == ["completions"]
    assert listed[served.ids["roberta"]]["endpoints"] == ["embeddings", "completions"]
    r = http.post("/v1/chat/completions", json={
        "model": served.ids["decoder"], "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]


def test_encoder_fills_masks_and_embeds(served, http):
    lm = served.models["roberta"]
    text = "ROMEO:\nNow is the w[MASK]nter of our disc[MASK]ntent"
    r = complete(http, served.ids["roberta"], text)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == fill_masks(lm.model, lm.tokenizer, text)
    assert r.json()["usage"]["completion_tokens"] == 2
    r = http.post("/v1/embeddings", json={"model": served.ids["roberta"], "input": "Now"})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 32


def test_encoder_decoder_fills_sentinels_as_lmforge_generate_does(runs, served, http,
                                                                  capsys):
    text = "ROMEO:\nNow <extra_id_0> the winter of <extra_id_1> discontent"
    main(["generate", "--model", str(runs["t5"]), "--prompt", text, "--max-tokens", "20"])
    out = capsys.readouterr().out
    r = complete(http, served.ids["t5"], text, max_tokens=20)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] + "\n" == out
    assert "<extra_id_" not in out


def test_prefix_decoder_reuses_no_prefix_and_repeats_itself(served, http):
    name = served.ids["prefix"]
    first = complete(http, name, PROMPT).json()["choices"][0]["text"]
    second = complete(http, name, PROMPT + " of").json()["choices"][0]["text"]
    again = complete(http, name, PROMPT).json()["choices"][0]["text"]
    assert first == again and second
    assert metrics(http, "lmforge_prefix_reused_tokens_total", model=name) == 0


def test_a_failing_prefill_fails_only_its_own_request(served, http, monkeypatch):
    prefill = Batch.prefill
    poison = served.models["decoder"].tokenizer.encode("XQX", parse_special=False)

    def failing(self, slot, prompt, *args, **kw):
        if prompt[-len(poison):] == poison:
            raise RuntimeError("injected prefill failure")
        return prefill(self, slot, prompt, *args, **kw)

    monkeypatch.setattr(Batch, "prefill", failing)
    name = served.ids["decoder"]
    results: dict[str, httpx.Response] = {}
    prompts = ["ROMEO:\n", "JULIET:\nO", "XQX", "KING:\nWhat", "QUEEN:\nAy"]
    threads = [threading.Thread(target=lambda p=p: results.__setitem__(
        p, complete(http, name, p, max_tokens=24))) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["XQX"].status_code == 500
    assert "injected prefill failure" in results["XQX"].json()["error"]["message"]
    for p in prompts:
        if p != "XQX":
            assert results[p].status_code == 200, results[p].text
            assert results[p].json()["choices"][0]["finish_reason"] in ("stop", "length")
