"""The FastAPI application: OpenAI-compatible routes over the schedulers.

    GET  /health                 liveness (answers while the scheduler threads generate)
    GET  /metrics                Prometheus text format (metrics.py)
    GET  /v1/models              the served models
    POST /v1/chat/completions    chat, streamed (server-sent events) or whole
    POST /v1/completions         raw-prompt continuation, streamed or whole
    POST /v1/embeddings          sentence embeddings of an encoder (mean-pooled, unit length)
    POST /v1/rag/ask             an answer from retrieved passages (--rag-db; lmforge.rag.serve)

Every error is OpenAI's error object with the right status; the body is parsed by hand
(schemas.py) so that no bad input reaches a place that could fail with a 500, and FastAPI's
422 and a catch-all handler are mapped to that format too. Tokenizing and embedding run in
worker threads, generation in the scheduler threads: the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from lmforge.agent.calls import prompt_ids
from lmforge.errors import LmforgeError, excerpt
from lmforge.generate.fill import has_mlm_head
from lmforge.serve.fill import fill_completion, wants_fill
from lmforge.serve.generation import generate
from lmforge.serve.logprobs import TokenText
from lmforge.serve.metrics import Metrics
from lmforge.serve.scheduler import Scheduler
from lmforge.serve.schemas import (
    APIError,
    bad,
    model_name,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json,
)
from lmforge.serve.tools import parse_tools
from lmforge.tokenizers.chat import can_chat

log = logging.getLogger("lmforge.serve")
MAX_BODY = 4 * 1024 * 1024
ENDPOINTS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
             "/v1/embeddings", "/v1/rag/ask"}


@dataclass
class Served:
    """One served model: a generative model has a scheduler, an encoder an embedding lock
    (and fills [MASK] on /v1/completions); chat needs a tokenizer with a chat template."""

    id: str
    lm: object  # lmforge.api.LoadedModel
    scheduler: Scheduler | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token_text: TokenText = field(init=False)
    endpoints: list[str] = field(init=False)  # the API routes this model answers

    def __post_init__(self) -> None:
        self.token_text = TokenText(self.lm.tokenizer)
        if self.scheduler is None:
            self.endpoints = ["embeddings", "completions"] if has_mlm_head(self.lm) \
                else ["embeddings"]
        else:
            self.endpoints = ["chat", "completions"] if can_chat(self.lm.tokenizer) \
                else ["completions"]

    @property
    def kind(self) -> str:
        return "embedding" if self.scheduler is None else self.endpoints[0]


@dataclass
class ServerState:
    models: dict[str, Served]
    metrics: Metrics
    api_key: str | None = None
    max_body: int = MAX_BODY
    rag: object | None = None  # lmforge.rag.serve.RagService, for /v1/rag/ask

    def get(self, name: str, endpoint: str) -> Served:
        """The served model `name`, which must answer on `endpoint`."""
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"the model {excerpt(name)} does not exist here; served "
                           f"models: {sorted(self.models)}", "model", "model_not_found")
        if endpoint not in served.endpoints:
            raise bad(wrong_endpoint(served, endpoint), "model", "wrong_model_kind")
        return served


def wrong_endpoint(served: Served, endpoint: str) -> str:
    """Why `served` does not answer on `endpoint`, and where to go instead."""
    if served.scheduler is None:
        fill = (", or /v1/completions with [MASK] in the prompt to fill it"
                if has_mlm_head(served.lm) else " (it has no masked-LM head to fill [MASK])")
        return f"{served.id} is an encoder: use /v1/embeddings for sentence vectors{fill}"
    if endpoint == "chat":
        return (f"{served.id} has no chat template (its tokenizer defines none), so it "
                "serves completions only: use /v1/completions with a prompt")
    return f"{served.id} generates text; use /v1/completions or /v1/chat/completions"


class CountRequests:
    """ASGI middleware: lmforge_requests_total by endpoint and status (streams included)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            path = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.inc("lmforge_requests_total", endpoint=path, status=str(status[0]))


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(LmforgeError)
    async def lmforge_error(request: Request, exc: LmforgeError) -> JSONResponse:
        return error_response(bad(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(bad(f"invalid request: {exc.errors()[:3]}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: "
                                       f"{exc.detail}", kind=kind))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response(APIError(500, f"internal server error ({type(exc).__name__}); "
                                       "see the server log", kind="server_error"))


async def read_json(request: Request, state: ServerState) -> dict:
    """Authorize, then read the body (at most max_body bytes) as a JSON object."""
    authorize(request, state.api_key)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > state.max_body):
        raise APIError(413, f"the body is larger than {state.max_body} bytes; send less",
                       code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > state.max_body:
            raise APIError(413, f"the body is larger than {state.max_body} bytes; send less",
                           code="body_too_large")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                              api_key.encode()):
        raise APIError(401, "missing or wrong API key: send the header "
                       "'Authorization: Bearer KEY' with the key the server was started with",
                       code="invalid_api_key", kind="authentication_error")


def build_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for served in state.models.values():
            if served.scheduler is not None:
                served.scheduler.start()
        yield
        for served in state.models.values():
            if served.scheduler is not None:
                served.scheduler.stop()

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(CountRequests, metrics=state.metrics)
    app.state.server = state

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(render_metrics(state), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request, state.api_key)
        return {"object": "list", "data": [
            {"id": s.id, "object": "model", "created": 0, "owned_by": "lmforge",
             "kind": s.kind, "endpoints": s.endpoints, "family": s.lm.config.family,
             "context_window": s.scheduler.ctx if s.scheduler else s.lm.config.max_seq_len}
            for s in state.models.values()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request, state)
        served = state.get(model_name(body), "chat")
        req = parse_chat(body)
        req.tools = parse_tools(body)
        shown = req.tools.tools if req.tools is not None and req.tools.active else None
        ids = await asyncio.to_thread(prompt_ids, served.lm.tokenizer, req.messages, shown)
        return await generate(request, served, req, [ids], state.metrics)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request, state)
        served = state.get(model_name(body), "completions")
        req = parse_completion(body)
        if wants_fill(served, req):
            return await fill_completion(served, req)
        prompts = await asyncio.to_thread(encode_prompts, served, req.prompts)
        return await generate(request, served, req, prompts, state.metrics)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict:
        body = await read_json(request, state)
        served = state.get(model_name(body), "embeddings")
        req = parse_embedding(body)
        async with served.lock:  # one embedding batch at a time per model
            vectors, n_tokens = await asyncio.to_thread(embed_texts, served.lm, req.inputs)
        data = [{"object": "embedding", "index": i,
                 "embedding": encode_vector(v, req.encoding_format)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": served.id,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    if state.rag is not None:
        from lmforge.rag.serve import install

        install(app, state)
    return app


def encode_prompts(served: Served, prompts: list[str | list[int]]) -> list[list[int]]:
    """Text prompts → ids (special tokens parsed, as `lmforge generate`); ids checked."""
    tok = served.lm.tokenizer
    out = []
    for i, p in enumerate(prompts):
        ids = tok.encode(p, parse_special=True) if isinstance(p, str) else p
        bad_ids = [t for t in ids if not 0 <= t < tok.vocab_size]
        if bad_ids:
            raise bad(f"prompt {i} holds token ids outside the vocabulary (0…"
                      f"{tok.vocab_size - 1}): {bad_ids[:5]}", "prompt")
        out.append(ids)
    return out


def embed_texts(lm, texts: list[str]) -> tuple[list[list[float]], int]:
    from lmforge.embed import embed, sentence_ids

    n_tokens = sum(len(sentence_ids(lm.tokenizer, t)[0]) for t in texts)
    return embed(lm, texts).tolist(), n_tokens


def encode_vector(v: list[float], encoding_format: str) -> list[float] | str:
    """OpenAI's base64 format: the little-endian float32 bytes, base64-encoded."""
    if encoding_format == "float":
        return v
    return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii")


def render_metrics(state: ServerState) -> str:
    m = state.metrics
    for served in state.models.values():
        if served.scheduler is None:
            continue
        g = served.scheduler.gauges()
        m.set("lmforge_queue_length", g["queue"], model=served.id)
        m.set("lmforge_batch_size", g["batch"], model=served.id)
        for slot_state in ("active", "cached", "free"):
            m.set("lmforge_slots", g[slot_state], model=served.id, state=slot_state)
        m.set("lmforge_tokens_per_second", m.tokens_per_second(served.id), model=served.id)
    return m.render()


def model_id(lm) -> str:
    """A model's id: its registry name, or the stem of the file it came from."""
    from pathlib import Path

    source = Path(lm.source)
    return source.stem if source.is_file() and lm.name == source.name else lm.name


def slot_gb(lm, ctx: int) -> float:
    """GB of one KV-cache slot of `ctx` positions: K and V of every layer, that is
    2 · n_layer · n_kv_head · ctx · head_dim values, twice for an encoder-decoder (its slot
    also holds the cross-attention K/V of a source of up to `ctx` tokens)."""
    c = lm.config
    ctx *= 2 if c.family == "encoder_decoder" else 1
    itemsize = lm.model.dtype.itemsize
    return 2 * c.n_layer * c.n_kv_head * ctx * c.head_dim * itemsize / 1e9


def available_gb() -> float:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory, in GB."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def make_state(models: list, served_name: str | None = None, ctx: int | None = None,
               max_batch: int = 32, max_queue: int = 256, kv_cache_gb: float | None = None,
               api_key: str | None = None, prefix_reuse: bool = True
               ) -> tuple[ServerState, list[str]]:
    """The server state for loaded models, and one description line per model.

    Each causal model gets a scheduler with an equal share of `kv_cache_gb` (default: a
    quarter of the available memory, at most what 2 · max_batch slots need)."""
    if max_batch < 1 or max_queue < 1:
        raise LmforgeError("--max-batch and --max-queue must be at least 1")
    metrics, served, lines = Metrics(), {}, []
    causal = [lm for lm in models if lm.config.causal]
    for i, lm in enumerate(models):
        name = served_name if i == 0 and served_name else model_id(lm)
        if name in served:
            raise LmforgeError(f"two models are served as {name!r}; give --served-model-name "
                               "for the first or serve distinct models")
        if not lm.config.causal:
            served[name] = Served(name, lm)
            lines.append(f"{name} ({' and '.join(served[name].endpoints)}, "
                         f"{lm.config.d_model} dimensions)")
            continue
        window = min(ctx or 2048, lm.config.max_seq_len)
        per_slot = slot_gb(lm, window)
        share = kv_cache_gb / len(causal) if kv_cache_gb else min(
            available_gb() / 4 / len(causal), 2 * max_batch * per_slot)
        n_slots = int(share // per_slot)
        if n_slots < 1:
            raise LmforgeError(f"--kv-cache-gb {share:.2f} GB cannot hold one sequence of "
                               f"{window} positions for {name}; raise it or lower --ctx")
        batch = min(max_batch, n_slots)
        served[name] = Served(name, lm, Scheduler(name, lm.model, lm.tokenizer, window,
                                                  n_slots, batch, max_queue, metrics,
                                                  prefix_reuse))
        lines.append(f"{name} ({' and '.join(served[name].endpoints)}, context {window}, "
                     f"{n_slots} KV-cache slots in {share:.2f} GB, batch {batch})")
    return ServerState(served, metrics, api_key), lines
