"""Tool calls as text: the model's own format when its chat template has one, else a
documented JSON format.

The documented format (for templates without tools, SmolLM2's among them): the model sees the
tools in a system message and calls one by writing a block

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "12 * 34"}}
    </tool_call>

(the layout of Hermes 2 Pro and Qwen 2.5, so models tuned on those read it natively). Several
blocks in one turn are parallel calls. Each result comes back as a message with role `tool`
whose content is the observation text; the assistant answers in plain text once it needs no
more calls. OpenAI's message shapes (assistant `tool_calls`, `tool` messages with
`tool_call_id`) are turned into plain `{"role", "content"}` messages by `to_chat_messages`, so the
chat template and the SFT loss mask need to know nothing about tools.

The native format: when the chat template renders `tools` and the messages' `tool_calls`
(`tokenizers.chat.renders_tools`), `prompt_ids` hands it the tools and the messages as
transformers does (arguments as objects), so the model sees the layout it was tuned on. Its
calls are parsed by `parse_calls`, which reads the Hermes / Qwen 2.5 `<tool_call>` blocks;
other native layouts (Llama 3.1's bare JSON, Mistral's `[TOOL_CALLS]`, ...) are rendered but
not parsed.

Training data (`agent/teach.py`) and inference render the same text, so a model tuned on it
sees at inference exactly what it saw in training.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from lmforge.tokenizers.chat import renders_tools

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.S)
SYSTEM_HEAD = (
    "You can call tools. To call one, write\n"
    f'{OPEN}\n{{"name": <tool name>, "arguments": <JSON object>}}\n{CLOSE}\n'
    "Each result comes back in a tool message. When you know the answer, reply without a "
    "tool call.\nTools:\n"
)


@dataclass
class ToolCall:
    """One call: the tool's name and its arguments as parsed JSON."""

    name: str
    arguments: dict
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def to_openai(self) -> dict:
        """The OpenAI `tool_calls` entry (arguments as a JSON string, as the API sends them)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name,
                             "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass
class Parsed:
    """A model's turn split into its text, its well-formed calls and the malformed blocks."""

    content: str
    calls: list[ToolCall]
    errors: list[str]


def function_spec(tool: dict) -> dict:
    """`{"name", "description", "parameters"}` from an OpenAI tool (`{"type": "function",
    "function": {...}}`) or from the bare function dict."""
    fn = tool.get("function", tool) if tool.get("type", "function") == "function" else tool
    return {"name": fn["name"], "description": fn.get("description", ""),
            "parameters": fn.get("parameters", {"type": "object", "properties": {}})}


def system_prompt(tools: list[dict], preamble: str = "") -> str:
    """The system message that lists the tools, one compact JSON spec per line."""
    lines = [json.dumps(function_spec(t), ensure_ascii=False, separators=(",", ":"))
             for t in tools]
    return (preamble + "\n\n" if preamble else "") + SYSTEM_HEAD + "\n".join(lines)


def render_calls(calls: list[ToolCall], content: str = "") -> str:
    """The assistant text that makes these calls (after any text of its own)."""
    blocks = [OPEN + "\n" + json.dumps({"name": c.name, "arguments": c.arguments},
                                       ensure_ascii=False) + "\n" + CLOSE for c in calls]
    return "\n".join(([content] if content else []) + blocks)


def parse_calls(text: str) -> Parsed:
    """Split a generated turn. A block whose JSON is malformed, or lacks a string `name` or an
    object `arguments`, becomes an error message (for an error observation), never an
    exception. An unclosed last block (generation stopped inside it) is still parsed."""
    calls, errors = [], []
    for m in _BLOCK.finditer(text):
        body = m.group(1)
        try:
            value = json.loads(body)
        except json.JSONDecodeError as e:
            errors.append(f"the tool call is not valid JSON ({e.msg} at character {e.pos}): "
                          f"{body[:200]!r}")
            continue
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            errors.append(f'a tool call needs {{"name": ..., "arguments": {{...}}}}, got '
                          f"{body[:200]!r}")
            continue
        args = value.get("arguments", {})
        if isinstance(args, str):  # some models write OpenAI's JSON-string arguments
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if not isinstance(args, dict):
            errors.append(f"the arguments of {value['name']!r} must be a JSON object, got "
                          f"{json.dumps(args)[:200]}")
            continue
        calls.append(ToolCall(value["name"], args))
    content = _BLOCK.sub("", text).strip() if (calls or errors) else text.strip()
    return Parsed(content, calls, errors)


def to_chat_messages(messages: list[dict], tools: list[dict] | None = None,
                     preamble: str = "") -> list[dict]:
    """OpenAI chat messages (assistant `tool_calls`, `tool` results) as plain role/content
    messages in the documented format; the tools' system text is merged into the first system
    message (or added as one) when `tools` or a preamble is given."""
    out = []
    for m in messages:
        content = _text(m.get("content"))
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = [ToolCall(c["function"]["name"], _arguments(c["function"].get("arguments")),
                              c.get("id", "")) for c in m["tool_calls"]]
            content = render_calls(calls, content)
        out.append({"role": m["role"], "content": content})
    text = system_prompt(tools, preamble) if tools else preamble
    if text:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _arguments(raw: object) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, json.JSONDecodeError):
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}



def native_messages(messages: list[dict], preamble: str = "") -> list[dict]:
    """OpenAI chat messages in the shape transformers gives a chat template: content as text,
    assistant `tool_calls` with their arguments as objects, the preamble in the system message."""
    out = []
    for m in messages:
        msg = {**m, "content": _text(m.get("content"))}
        if m.get("role") == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = [
                {"id": c.get("id", ""), "type": "function",
                 "function": {"name": c["function"]["name"],
                              "arguments": _arguments(c["function"].get("arguments"))}}
                for c in m["tool_calls"]]
        out.append(msg)
    if preamble:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + preamble}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


def prompt_ids(tokenizer, messages: list[dict], tools: list[dict] | None,
               preamble: str = "") -> list[int]:
    """The ids of OpenAI chat messages with these tools, ready for the assistant's turn: in the
    chat template's own tool format when it has one, else in the documented format."""
    if renders_tools(tokenizer.chat_template):
        specs = [{"type": "function", "function": function_spec(t)} for t in tools or []]
        return tokenizer.apply_chat_template(native_messages(messages, preamble),
                                             tools=specs or None)
    return tokenizer.apply_chat_template(to_chat_messages(messages, tools, preamble))


def _text(content: object) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""
