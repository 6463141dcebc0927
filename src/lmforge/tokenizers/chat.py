"""Chat templates: messages → text with the model's jinja2 template → ids.

Rendering follows transformers' `apply_chat_template`: a sandboxed jinja2 environment with
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `raise_exception` helper and
the `bos_token` / `eos_token` variables. Without a template, ChatML is used.

Encoding keeps message content from ever becoming a special token. Each content is wrapped in
two noncharacters (U+FDD0, U+FDD1: Unicode promises they never occur in interchanged text)
and the template rendered; the marks then tell content from template text, and
`Tokenizer.encode_spans` parses special tokens in the template text only. The ordinary text
around them is joined before BPE, so for content without special-token strings the ids equal
transformers' (which encodes the whole rendering with special tokens parsed).
The marks are trusted only if removing them gives exactly the unmarked rendering. Templates
that trim content ("| trim", Llama 3) are handled by marking the trimmed content; a template
that reshapes content otherwise falls back to encoding the plain rendering, which is refused
when some content holds special-token text.

Tools: `tools` (OpenAI function specs) reach the template as transformers passes them, so a
template with a tool-calling format of its own (`renders_tools`: Hermes, Qwen 2.5) writes the
tool list and the assistant's `tool_calls` itself. Those are template text, so tools or calls
that hold special-token text are refused.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, NoReturn

import jinja2
import regex
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.tokenizers.base import Tokenizer

ROLES = ("system", "user", "assistant", "tool")
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
OPEN, CLOSE = "\ufdd0", "\ufdd1"
_MARKED = regex.compile(f"{OPEN}([^{OPEN}{CLOSE}]*){CLOSE}")


def validate_messages(messages: object) -> list[dict]:
    """The messages, if they are a non-empty list of {"role": ..., "content": str} dicts."""
    if not isinstance(messages, list) or not messages:
        raise LmforgeError('messages must be a non-empty list of {"role": ..., "content": ...} '
                           f"dicts, got {type(messages).__name__}"
                           f"{' (empty)' if messages == [] else ''}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise LmforgeError(f"message {i} is a {type(m).__name__}, not a dict with "
                               '"role" and "content"')
        if m.get("role") not in ROLES:
            raise LmforgeError(f"message {i} has role {m.get('role')!r}; use one of "
                               f"{', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise LmforgeError(f"message {i} ({m['role']}) has content of type "
                               f"{type(m.get('content')).__name__}; content must be a string")
    return messages


def _raise_exception(message: str) -> NoReturn:
    raise LmforgeError(f"the chat template rejected the messages: {message}")


def _tojson(value: object, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)  # as transformers' filter


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise LmforgeError(f"the chat template is not valid jinja2 (line {e.lineno}: "
                           f"{e.message}); fix chat_template in tokenizer_config.json") from None


@lru_cache(maxsize=16)
def renders_tools(template: str | None) -> bool:
    """Whether a chat template has a tool-calling format of its own: it reads the `tools`
    variable and the messages' `tool_calls` (looked up in the parsed template, not the text)."""
    if template is None:
        return False
    tree = _compile(template).environment.parse(template)
    reads_tools = any(n.name == "tools" and n.ctx == "load" for n in tree.find_all(nodes.Name))
    reads_calls = any(n.attr == "tool_calls" for n in tree.find_all(nodes.Getattr)) or any(
        isinstance(n.arg, nodes.Const) and n.arg.value == "tool_calls"
        for n in tree.find_all(nodes.Getitem))
    return reads_tools and reads_calls


def _render(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool,
            tools: list[dict] | None = None) -> str:
    def text(i: int | None) -> str:
        return "" if i is None else tok.id_to_token(i)

    template = _compile(tok.chat_template or CHATML)
    try:
        return template.render(messages=messages, tools=tools,
                               add_generation_prompt=add_generation_prompt,
                               bos_token=text(tok.special.bos), eos_token=text(tok.special.eos),
                               pad_token=text(tok.special.pad), unk_token=text(tok.special.unk))
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
        raise LmforgeError(f"the chat template failed on these messages: {e}") from None


def render_chat(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> str:
    """The chat as text, for display (special tokens written out)."""
    return _render(tok, validate_messages(messages), add_generation_prompt, tools)


def _marked_spans(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool,
                  plain: str, tools: list[dict] | None = None
                  ) -> list[tuple[str, bool]] | None:
    """`(text, parse_special)` spans of the rendering, content unparsed; None if the template
    does something to content other than insert it (or trim it) that the marks cannot follow."""
    if any(OPEN in m["content"] or CLOSE in m["content"] for m in messages):
        return None
    for trim in (False, True):
        contents = [m["content"].strip() if trim else m["content"] for m in messages]
        # empty content stays unmarked: templates test it ("{% if message.content %}")
        marked = [{**m, "content": OPEN + c + CLOSE if c else c}
                  for m, c in zip(messages, contents, strict=True)]
        rendered = _render(tok, marked, add_generation_prompt, tools)
        if rendered.replace(OPEN, "").replace(CLOSE, "") != plain:
            continue
        spans, pos = [], 0
        for m in _MARKED.finditer(rendered):
            spans += [(rendered[pos:m.start()], True), (m.group(1), False)]
            pos = m.end()
        spans.append((rendered[pos:], True))
        # every mark pair must hold one message's content as given: a template that reversed
        # or sliced content could otherwise pair marks around template text
        if all(OPEN not in t and CLOSE not in t if parse else t in contents
               for t, parse in spans):
            return spans
    return None


def encode_chat(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> list[int]:
    """Ids of a chat: the template's special tokens are real, message content is plain text.

    No BOS is added: templates that want one write `{{ bos_token }}` (as transformers does).
    """
    validate_messages(messages)
    calls = [m["tool_calls"] for m in messages if m.get("tool_calls")]
    if (tools or calls) and tok.added.contains_special(json.dumps([tools, calls],
                                                                  ensure_ascii=False)):
        raise LmforgeError("a tool spec or a tool call holds special-token text, which the chat "
                           "template would turn into a real special token; remove it")
    plain = _render(tok, messages, add_generation_prompt, tools)
    spans = _marked_spans(tok, messages, add_generation_prompt, plain, tools)
    if spans is not None:
        return tok.encode_spans(spans)
    if any(tok.added.contains_special(m["content"]) for m in messages):
        raise LmforgeError("this chat template reshapes message content in a way lmforge "
                           "cannot trace, and some content holds special-token text, which "
                           "could then act as a real special token; remove it from the content")
    return tok.encode_spans([(plain, True)])


def can_chat(tok: Tokenizer) -> bool:
    """Whether the tokenizer can write a chat the model can read: a template of its own, or
    ChatML (the default) when `<|im_start|>`/`<|im_end|>` are real special tokens of it.
    Without either, a chat would be template text the model never saw (or cannot encode)."""
    return tok.chat_template is not None or bool(end_of_turn_ids(tok))


def end_of_turn_ids(tok: Tokenizer) -> list[int]:
    """The special token the template writes right after an assistant's content (ChatML's
    `<|im_end|>`, Llama 3's `<|eot_id|>`): generation stops there. Found by rendering a short
    chat, not by token names; empty when the template cannot render it."""
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    try:
        plain = _render(tok, messages, False)
    except LmforgeError:
        return []
    spans = _marked_spans(tok, messages, False, plain) or []
    if ("b", False) not in spans:
        return []
    after_answer = spans[spans.index(("b", False)) + 1][0]  # template text after content "b"
    for piece, token_id in tok.added.split(after_answer, parse_special=True):
        if token_id is not None:
            return [token_id] if token_id in tok.added.special_ids else []
        if piece.strip():
            return []
    return []
