"""Request bodies → validated requests: OpenAI's fields for each endpoint plus our extensions.

Every field of a body falls in one of four sets, checked in this order:
- generation fields: exactly `GenerationConfig`'s (OpenAI names and the extensions top_k,
  min_p, repetition_penalty, …), plus `max_completion_tokens` (a synonym of max_tokens);
- endpoint fields: messages / prompt / input, model, stream, stream_options, user, and the
  log-probability fields: `logprobs` + `top_logprobs` (chat), `logprobs` + `echo`
  (completions, where max_tokens 0 with echo scores the prompt and generates nothing);
- tool fields (tools, tool_choice, parallel_tool_calls): checked by `serve/tools.py`;
- OpenAI fields we do not implement yet (response_format, functions, …): accepted at
  their default, a 400 that says so when set to anything else;
- anything else: a 400 that names the field.
Types are checked strictly (a bool is not a number, "0.5" is not a number), so wrong types
are a 400 and never a 500 further in. Errors are `APIError`s, rendered in OpenAI's format
`{"error": {"message", "type", "param", "code"}}` by app.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError, excerpt
from lmforge.generate.config import LOCAL_ONLY, GenerationConfig

ROLES = {"system", "user", "assistant", "tool", "developer"}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}


class APIError(LmforgeError):
    """An error answer: HTTP status plus OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))


def _is_bias(v: Any) -> bool:
    return isinstance(v, dict) and all(re.fullmatch(r"-?\d{1,9}", k) and _is_num(b)
                                       for k, b in v.items())


# name → (type check, what the type should be); None is always allowed (= the default)
GENERATION = {
    "max_tokens": (_is_int, "an integer"), "min_tokens": (_is_int, "an integer"),
    "temperature": (_is_num, "a number"), "top_p": (_is_num, "a number"),
    "top_k": (_is_int, "an integer"), "min_p": (_is_num, "a number"),
    "presence_penalty": (_is_num, "a number"), "frequency_penalty": (_is_num, "a number"),
    "repetition_penalty": (_is_num, "a number"),
    "no_repeat_ngram_size": (_is_int, "an integer"),
    "logit_bias": (_is_bias, 'an object of token id → number, e.g. {"50256": -100}'),
    "stop": (_is_str_list, "a string or a list of strings"), "seed": (_is_int, "an integer"),
    "n": (_is_int, "an integer"), "num_beams": (_is_int, "an integer"),
    "length_penalty": (_is_num, "a number"),
    "max_completion_tokens": (_is_int, "an integer"),
}
assert set(GENERATION) - {"max_completion_tokens"} == {
    f.name for f in dataclasses.fields(GenerationConfig)} - LOCAL_ONLY, \
    "GENERATION must follow the config"
COMMON = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict) and set(v) <= {"include_usage"}
                       and isinstance(v.get("include_usage", False), bool),
                       'an object {"include_usage": true|false}'),
    "user": (lambda v: isinstance(v, str), "a string"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
}
# OpenAI fields not implemented yet → the values that mean "off"
UNSUPPORTED_CHAT = {
    "response_format": [{"type": "text"}],
    "functions": [[]], "function_call": ["none"], "service_tier": ["auto", "default"],
    "store": [False], "modalities": [["text"]], "audio": [], "prediction": [],
    "reasoning_effort": [], "web_search_options": [], "logit_processors": [],
}
UNSUPPORTED_COMPLETION = {"best_of": [1], "suffix": [""]}
MAX_LOGPROBS = {"completion": 5, "chat": 20}  # OpenAI's limits on the alternatives
UNSUPPORTED_EMBEDDING = {"dimensions": []}


@dataclass
class GenerationRequest:
    """A chat or completion request after validation (prompts are still text or ids)."""

    model: str
    config: GenerationConfig
    max_tokens_given: bool  # False: fill the rest of the context window
    stream: bool
    include_usage: bool
    messages: list[dict] | None = None  # chat
    prompts: list[str | list[int]] | None = None  # completions
    logprobs: int | None = None  # None: none; k: each token's log-probability and k others
    echo: bool = False  # completions: the prompt comes back first (with its log-probabilities)
    score_only: bool = False  # completions: max_tokens 0 with echo, the prompt scored only
    tools: Any = None  # chat: a serve.tools.ToolRequest, or None without tools


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[str]
    encoding_format: str


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object; invalid UTF-8, NaN or lone surrogates are a 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"the body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON object, not a {type(body).__name__}")
    _check_strings(body, "")
    return body


def _no_constant(name: str) -> None:
    raise bad(f"{name} is not a valid JSON number; send finite numbers")


def _check_strings(value: Any, where: str) -> None:
    """Reject lone surrogates (JSON allows the escape "\\ud800"; text cannot hold it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(f"{_short(where) or 'a string'} holds a lone surrogate (an unpaired "
                      "\\uD800–\\uDFFF escape); send valid Unicode text", _short(where) or None
                      ) from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, where)
            _check_strings(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(v, f"{where}[{i}]")


def _short(name: str) -> str:
    """A field path quoted in an error (it may hold a client's arbitrary key): 80 characters
    at most, so an error stays small whatever the request held."""
    return name if len(name) <= 80 else name[:80] + "…"


def model_name(body: dict) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise bad("model is required: the id of a served model (GET /v1/models lists them)",
                  "model")
    return name


def check_fields(body: dict, own: dict, unsupported: dict[str, list]) -> None:
    """Every field known, of the right type, and unimplemented ones at their default."""
    known = {**GENERATION, **COMMON, **own}
    for name, value in body.items():
        if name in unsupported:
            if value is not None and value not in unsupported[name]:
                raise bad(f"{name} is not supported by this server yet; leave it out "
                          f"(got {excerpt(value)})", name, "unsupported_parameter")
        elif name not in known:
            raise bad(f"unknown field {excerpt(name)}: it is neither an OpenAI field of this "
                      "endpoint nor an lmforge extension; remove it", _short(name),
                      "unknown_parameter")
        elif value is not None and not known[name][0](value):
            raise bad(f"{name} must be {known[name][1]}, got {excerpt(value)}", name,
                      "invalid_type")


def generation_config(body: dict) -> tuple[GenerationConfig, bool]:
    """The config of the generation fields that are set, and whether max_tokens was given."""
    values = {k: v for k, v in body.items() if k in GENERATION and v is not None}
    synonym = values.pop("max_completion_tokens", None)
    if synonym is not None:
        if values.get("max_tokens", synonym) != synonym:
            raise bad("max_tokens and max_completion_tokens differ; give only one", "max_tokens")
        values["max_tokens"] = synonym
    given = "max_tokens" in values
    values.setdefault("max_tokens", 1)  # replaced by the room left in the context window
    if "min_tokens" in values and not given:
        values["max_tokens"] = max(1, values["min_tokens"])
    try:
        return GenerationConfig.from_dict(values), given
    except LmforgeError as exc:
        field = re.match(r"(\w+)=", str(exc))
        raise bad(str(exc), field.group(1) if field else None) from None


def _request(body: dict, own: dict, unsupported: dict) -> GenerationRequest:
    check_fields(body, own, unsupported)
    config, given = generation_config(body)
    options = body.get("stream_options") or {}
    stream = bool(body.get("stream"))
    if options and not stream:
        raise bad("stream_options is only allowed with stream: true", "stream_options")
    return GenerationRequest(model_name(body), config, given, stream,
                             bool(options.get("include_usage")))


def parse_chat(body: dict) -> GenerationRequest:
    own = {"messages": (lambda v: isinstance(v, list), "a list of message objects")}
    own = {**own, "logprobs": (lambda v: isinstance(v, bool), "a boolean"),
           "top_logprobs": (_is_int, "an integer")}
    anything = (lambda v: True, "")  # checked by serve/tools.py
    own = {**own, "tools": anything, "tool_choice": anything, "parallel_tool_calls": anything}
    req = _request(body, own, UNSUPPORTED_CHAT)
    req.messages = parse_messages(body.get("messages"))
    top = body.get("top_logprobs")
    if top is not None and not body.get("logprobs"):
        raise bad("top_logprobs needs logprobs: true", "top_logprobs")
    if body.get("logprobs"):
        req.logprobs = _logprobs_count(top or 0, "chat", "top_logprobs")
    return req


def _logprobs_count(k: int, endpoint: str, name: str) -> int:
    if not 0 <= k <= MAX_LOGPROBS[endpoint]:
        raise bad(f"{name}={k} is invalid: it must be between 0 and {MAX_LOGPROBS[endpoint]}",
                  name)
    return k


def parse_messages(messages: Any) -> list[dict]:
    """OpenAI messages → {"role", "content": str}; "developer" is the system role, and
    content given as a list of text parts is joined. An assistant message keeps its
    `tool_calls` (its content may then be null), a tool message its `tool_call_id`."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {\"role\", \"content\"} objects",
                  "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where)
        extra = sorted(set(m) - MESSAGE_KEYS)
        if extra:
            raise bad(f"{where} has field(s) {excerpt(extra)} this server does not support; "
                      "keep role, content and name", _short(f"{where}.{extra[0]}"))
        if m.get("role") not in ROLES:
            raise bad(f"{where}.role is {excerpt(m.get('role'))}; use one of {sorted(ROLES)}",
                      f"{where}.role")
        role = "system" if m["role"] == "developer" else m["role"]
        message = {"role": role}
        if m.get("tool_calls") is not None:
            message["tool_calls"] = _tool_calls(m, where)
        if role == "tool":
            if not isinstance(m.get("tool_call_id"), str):
                raise bad(f"{where} is a tool message: it needs tool_call_id, the id of the "
                          "call it answers", f"{where}.tool_call_id")
            message["tool_call_id"] = m["tool_call_id"]
        empty_ok = "tool_calls" in message or m.get("refusal") is not None
        message["content"] = "" if empty_ok and m.get("content") is None else _content(
            m.get("content"), where)
        out.append(message)
    return out


def _tool_calls(m: dict, where: str) -> list[dict]:
    """An assistant message's `tool_calls`: [{id, type: function, function: {name,
    arguments: JSON string}}]."""
    calls = m["tool_calls"]
    if m.get("role") != "assistant" or not isinstance(calls, list):
        raise bad(f"{where}.tool_calls must be a list, on an assistant message",
                  f"{where}.tool_calls")
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not (isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(fn, dict)
                and c.get("type", "function") == "function" and isinstance(fn.get("name"), str)
                and isinstance(fn.get("arguments"), str)):
            raise bad(f'{where}.tool_calls[{j}] must be {{"id": ..., "type": "function", '
                      '"function": {"name": ..., "arguments": "<JSON string>"}}, got '
                      f"{excerpt(c)}", f"{where}.tool_calls[{j}]")
    return [{"id": c["id"], "type": "function", "function": {
        "name": c["function"]["name"], "arguments": c["function"]["arguments"]}} for c in calls]


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"{where}.content must be a string or a list of "
              '{"type": "text", "text": ...} parts', f"{where}.content")


def parse_completion(body: dict) -> GenerationRequest:
    own = {"prompt": (lambda v: isinstance(v, str | list), "a string or a list")}
    own = {**own, "echo": (lambda v: isinstance(v, bool), "a boolean"),
           "logprobs": (_is_int, "an integer")}
    echo = body.get("echo") is True
    score_only = echo and body.get("max_tokens") == 0 and body.get("max_completion_tokens") \
        in (None, 0)
    if score_only:  # OpenAI's way to score a prompt: echo it and generate nothing
        body = {k: v for k, v in body.items() if k not in ("max_tokens", "max_completion_tokens")}
    req = _request(body, own, UNSUPPORTED_COMPLETION)
    req.prompts = parse_prompts(body.get("prompt"))
    req.echo, req.score_only = echo, score_only
    if score_only and body.get("stream"):
        raise bad("max_tokens 0 (scoring the echoed prompt) cannot be streamed; leave out "
                  "stream", "stream")
    if body.get("logprobs") is not None:
        req.logprobs = _logprobs_count(body["logprobs"], "completion", "logprobs")
    return req


def parse_prompts(prompt: Any) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_int(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise bad("prompt must be a string, a non-empty list of strings, a list of token ids or "
              "a list of such lists", "prompt")


def parse_embedding(body: dict) -> EmbeddingRequest:
    own = {"input": (lambda v: isinstance(v, str | list), "a string or a list of strings"),
           "encoding_format": (lambda v: v in ("float", "base64"), '"float" or "base64"')}
    check_fields(body, own, UNSUPPORTED_EMBEDDING)
    extra = sorted(set(body) & (set(GENERATION) | {"stream", "stream_options"}))
    if extra:
        raise bad(f"{extra[0]} is not a field of /v1/embeddings; remove it", extra[0],
                  "unknown_parameter")
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(s, str) and s for s in inputs):
        raise bad("input must be a non-empty string or a non-empty list of non-empty strings "
                  "(token-id input is not supported yet)", "input")
    if len(inputs) > 2048:
        raise bad(f"input has {len(inputs)} texts; send at most 2048 per request", "input")
    return EmbeddingRequest(model_name(body), inputs, body.get("encoding_format") or "float")
