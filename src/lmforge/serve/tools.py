"""Tool calling in the chat API: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`.

The model sees the tools in its prompt (`agent/calls.prompt_ids`: its chat template's own
format when it has one, else the documented `<tool_call>` JSON blocks) and writes calls as
text. Unless `tool_choice` is "none", decoding goes through `agent/constrain.py`'s processor,
so every call the server returns names a listed tool and has arguments of its schema:
"auto" leaves the model free to answer in text or open a call, "required" makes the turn
calls only, a named function makes it calls of that function, and `parallel_tool_calls`
false ends the turn after one call.

The answer's text is split into content and `tool_calls` (ids `call_…`, arguments as a JSON
string), with finish_reason "tool_calls". Streamed, content goes out as it comes, holding
back only what could be the start of a `<tool_call>` tag; each call goes out when its block
closes, as OpenAI's deltas do it: first `{index, id, type, function: {name, arguments: ""}}`,
then its arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmforge.agent.calls import CLOSE, OPEN, ToolCall, parse_calls
from lmforge.agent.constrain import tool_call_processor
from lmforge.agent.schema_automaton import compile_schema
from lmforge.errors import LmforgeError, excerpt
from lmforge.generate.processors import Processor
from lmforge.serve.schemas import bad
from lmforge.tokenizers.base import Tokenizer

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


@dataclass
class ToolRequest:
    """A request's tools after validation; `choice`: "auto", "none", "required" or a name."""

    tools: list[dict]
    choice: str
    parallel: bool

    @property
    def active(self) -> bool:
        """Whether the model is shown the tools and its calls are parsed."""
        return self.choice != "none"

    def processor(self, tokenizer: Tokenizer) -> Processor:
        """A fresh constraint for one answer (it keeps the state of its row)."""
        return tool_call_processor(tokenizer, self.tools, self.choice, self.parallel)

    def split(self, text: str) -> tuple[str | None, list[dict]]:
        """A whole answer → (content, OpenAI `tool_calls`), by the rules of the stream;
        content None when the answer is only calls."""
        content, calls = CallStream(self.parallel).feed(text, final=True)
        if not calls:
            return text, []
        return content.strip() or None, [c.to_openai() for c in calls]


def parse_tools(body: dict) -> ToolRequest | None:
    """`tools`, `tool_choice`, `parallel_tool_calls` of a chat body; None without tools."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad(f"parallel_tool_calls must be a boolean, got {excerpt(parallel)}",
                  "parallel_tool_calls", "invalid_type")
    if not tools:
        if tools is not None and not isinstance(tools, list):
            raise bad("tools must be a list of {\"type\": \"function\", \"function\": {...}}",
                      "tools", "invalid_type")
        if choice not in (None, "none"):
            raise bad("tool_choice is only allowed when tools are given", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise bad("tools must be a list of {\"type\": \"function\", \"function\": {...}}",
                  "tools", "invalid_type")
    specs = [_tool(t, i) for i, t in enumerate(tools)]
    names = [s["function"]["name"] for s in specs]
    if len(set(names)) < len(names):
        raise bad(f"tools has two functions of the same name ({excerpt(names)}); names must "
                  "be unique", "tools")
    return ToolRequest(specs, _choice(choice, names), parallel is not False)


def _tool(tool: Any, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(
            tool.get("function"), dict):
        raise bad(f'{where} must be {{"type": "function", "function": {{"name": ..., '
                  f'"parameters": {{...}}}}}}, got {excerpt(tool)}', where)
    fn = tool["function"]
    extra = sorted(set(fn) - FUNCTION_KEYS)
    if extra:
        raise bad(f"{where}.function has unknown field(s) {excerpt(extra)}; keep "
                  f"{sorted(FUNCTION_KEYS)}", f"{where}.function")
    if not isinstance(fn.get("name"), str) or not NAME.fullmatch(fn["name"]):
        raise bad(f"{where}.function.name must be 1-64 letters, digits, _ or -, got "
                  f"{excerpt(fn.get('name'))}", f"{where}.function.name")
    if not isinstance(fn.get("description", ""), str):
        raise bad(f"{where}.function.description must be a string",
                  f"{where}.function.description")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise bad(f"{where}.function.parameters must be a JSON schema of type object, got "
                  f"{excerpt(params)}", f"{where}.function.parameters")
    try:
        compile_schema(params, f"{where}.function.parameters")
    except LmforgeError as exc:
        raise bad(str(exc), f"{where}.function.parameters") from None
    return {"type": "function", "function": {**fn, "parameters": params}}


def _choice(choice: Any, names: list[str]) -> str:
    if choice is None:
        return "auto"
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            choice.get("function"), dict) and isinstance(choice["function"].get("name"), str):
        name = choice["function"]["name"]
        if name not in names:
            raise bad(f"tool_choice names the function {excerpt(name)}, which is not in "
                      f"tools ({excerpt(names)})", "tool_choice")
        return name
    raise bad('tool_choice must be "auto", "none", "required" or {"type": "function", '
              f'"function": {{"name": ...}}}}, got {excerpt(choice)}', "tool_choice")


class CallStream:
    """Streamed text of one choice → content pieces and whole calls, as they complete."""

    def __init__(self, parallel: bool) -> None:
        self.buffer, self.parallel = "", parallel
        self.n_calls = 0

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCall]]:
        """The content that is safe to send now and the calls whose block has closed."""
        self.buffer += text
        content, calls = "", []
        while self.buffer:
            start = self.buffer.find(OPEN)
            if start < 0:
                keep = 0 if final else _partial_open(self.buffer)
                content += self.buffer[:len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                break
            content += self.buffer[:start]
            self.buffer = self.buffer[start:]
            end = self.buffer.find(CLOSE)
            if end < 0 and not final:
                break
            block = self.buffer if end < 0 else self.buffer[:end + len(CLOSE)]
            self.buffer = self.buffer[len(block):]
            parsed = parse_calls(block)
            if not parsed.calls:  # malformed or cut off: the client sees the text as written
                content += block
            for call in parsed.calls:
                if self.parallel or self.n_calls == 0:
                    calls.append(call)
                    self.n_calls += 1
        if self.n_calls and content.isspace():  # the newlines between and after blocks
            content = ""
        return content, calls


def _partial_open(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of the open tag."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0
