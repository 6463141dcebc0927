"""The character-level recogniser of tool calls: is a text a valid prefix of a call whose
arguments fit the tool's JSON schema?

    stack = start([calc.spec()], mode="required")
    stack = feed(stack, '<tool_call>\\n{"name": "calculator", "arguments": {')  # None: invalid
    can_end(stack)  # False: the block is still open

Once the model opens a `<tool_call>` block (calls.py), the block must read
`\\n{"name": "<a tool's name>", "arguments": <object of that tool's schema>}\\n</tool_call>`;
outside a block the text is free. `mode="required"` makes the turn start with a block and hold
only blocks; `mode=<tool name>` also fixes the name (OpenAI's `tool_choice`); `max_calls` (1
for `parallel_tool_calls: false`) ends the turn after that many calls: only a stop token may
follow. The token-level logits processor over this automaton is in constrain.py.

Design choices:
- A character-level pushdown automaton over an immutable stack of frames (text, literal,
  value, string, number, array, object): `feed(stack, ch)` returns the next stack or None.
  Immutable states are hashable, so a caller can memoise transitions (constrain.py does, per
  token).
- The schema subset of tool specs: type string/integer/number/boolean/null (or a list of them),
  enum/const, arrays (items, minItems, maxItems), objects (properties, required; no other
  keys; without `properties`, any keys); other keywords (description, default, …) are ignored.
- Bounds so that an untuned model cannot run on forever inside a call: strings of at most
  maxLength (else `MAX_STRING`) characters (minLength is kept too), numbers of at most
  `MAX_NUMBER` characters, arrays of at most `MAX_ITEMS` items (or maxItems), one whitespace
  character between JSON tokens. The frame around the arguments is the literal layout
  `render_calls` writes. Numbers follow RFC 8259's grammar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lmforge.agent.calls import CLOSE, OPEN, function_spec
from lmforge.errors import LmforgeError

MAX_STRING, MAX_NUMBER, MAX_ITEMS = 4096, 24, 32
WS = " \n"
KINDS = ("string", "integer", "number", "boolean", "null", "array", "object")


@dataclass(frozen=True, eq=False)
class Node:
    """A compiled schema (hashed by identity: compiled once per processor)."""

    kinds: frozenset[str]
    literals: tuple[str, ...] = ()  # enum/const: the JSON texts allowed
    items: Node | None = None  # None: any value
    props: dict[str, Node] | None = None  # None: any keys, any values
    required: frozenset[str] = frozenset()
    min_items: int = 0
    max_items: int = MAX_ITEMS
    min_len: int = 0  # strings
    max_len: int = MAX_STRING


ANY = Node(frozenset(KINDS))


def compile_schema(schema: dict, where: str = "parameters") -> Node:
    """A JSON schema (the subset tool specs use) as a `Node`."""
    if not isinstance(schema, dict):
        raise LmforgeError(f"{where} must be a JSON schema object, got {schema!r}")
    if "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        return Node(frozenset(), tuple(json.dumps(v, ensure_ascii=False) for v in values))
    kinds = schema.get("type", list(KINDS))
    kinds = frozenset([kinds] if isinstance(kinds, str) else kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise LmforgeError(f"{where}: unknown type {sorted(unknown)[0]!r}; use one of {KINDS}")
    items = compile_schema(schema["items"], f"{where}.items") if "items" in schema else None
    props = None
    if "properties" in schema:
        props = {k: compile_schema(v, f"{where}.{k}") for k, v in schema["properties"].items()}
    required = frozenset(schema.get("required", ()))
    if props is not None and not required <= set(props):
        raise LmforgeError(f"{where}: required {sorted(required - set(props))} not in "
                           "properties")
    return Node(kinds, (), items, props, required, schema.get("minItems", 0),
                min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS), schema.get("minLength", 0),
                min(schema.get("maxLength", MAX_STRING), MAX_STRING))


# Frames. `feed(ch)` → None (invalid), or (frames that replace this one, whether ch was used;
# if not, the frame below reads it).
@dataclass(frozen=True)
class Text:
    """Outside any block: free text (auto) or only blocks (forced), tracking a match of OPEN."""

    free: bool
    calls: int
    max_calls: int
    matched: int = 0
    call: Call | None = None

    @property
    def expect(self) -> str:  # forced: the text to write before the next block's JSON
        return ("\n" if self.calls else "") + OPEN

    def feed(self, ch: str):
        if self.calls >= self.max_calls:
            return None
        target = OPEN if self.free else self.expect
        if target[self.matched] == ch:
            if self.matched + 1 < len(target):
                return (Text(self.free, self.calls, self.max_calls, self.matched + 1,
                             self.call),), True
            after = Text(self.free, self.calls + 1, self.max_calls, 0, self.call)
            return (after, Literal(("}\n" + CLOSE,)), Name(self.call.names, 0, self.call),
                    Literal(('\n{"name": "',))), True
        if not self.free:
            return None
        return (Text(True, self.calls, self.max_calls, int(ch == "<"), self.call),), True

    def can_end(self) -> bool:
        return self.free or (self.calls > 0 and self.matched == 0)


@dataclass(frozen=True, eq=False)
class Call:
    """What a block may hold: the tools' names and argument schemas."""

    names: tuple[str, ...]
    arguments: dict[str, Node]


@dataclass(frozen=True)
class Name:
    """The tool's name and the literal after it, then that tool's arguments."""

    names: tuple[str, ...]
    pos: int
    call: Call

    def feed(self, ch: str):
        tail = '", "arguments": '
        left = tuple(n for n in self.names if (n + tail)[self.pos:self.pos + 1] == ch)
        if not left:
            return None
        if len(left) == 1 and self.pos + 1 == len(left[0] + tail):
            return (Value(self.call.arguments[left[0]]),), True
        return (Name(left, self.pos + 1, self.call),), True


@dataclass(frozen=True)
class Literal:
    """One of several fixed texts (enum values, true/false/null, the layout around a call)."""

    options: tuple[str, ...]
    pos: int = 0

    def feed(self, ch: str):
        left = tuple(o for o in self.options if o[self.pos:self.pos + 1] == ch)
        if left:
            done = len(left) == 1 and self.pos + 1 == len(left[0])
            return (() if done else (Literal(left, self.pos + 1),)), True
        if any(len(o) == self.pos for o in self.options):
            return (), False
        return None


@dataclass(frozen=True)
class Value:
    """Before a value: its first character picks the frame."""

    node: Node
    ws: bool = False

    def feed(self, ch: str):
        node, kinds = self.node, self.node.kinds
        if ch in WS:
            return ((Value(node, True),), True) if not self.ws else None
        if node.literals:
            return Literal(node.literals).feed(ch)
        if ch == '"' and "string" in kinds:
            return (String(node.min_len, node.max_len),), True
        if (ch == "-" or ch.isdigit()) and kinds & {"integer", "number"}:
            stage = "sign" if ch == "-" else "zero" if ch == "0" else "int"
            return (Number("number" not in kinds, stage, 1),), True
        if ch in "tf" and "boolean" in kinds:
            return Literal(("true", "false")).feed(ch)
        if ch == "n" and "null" in kinds:
            return Literal(("null",)).feed(ch)
        if ch == "[" and "array" in kinds:
            return (Array(node),), True
        if ch == "{" and "object" in kinds:
            return (Object(node),), True
        return None


@dataclass(frozen=True)
class String:
    """Inside a JSON string of `n` characters so far (an escape counts as one), between
    `min_len` and `max_len`; `escape`: 0, 1 after a backslash, 2–5 in a \\uXXXX escape."""

    min_len: int = 0
    max_len: int = MAX_STRING
    n: int = 0
    escape: int = 0

    def feed(self, ch: str):
        if self.escape == 1:
            ok = ch in '"\\/bfnrtu'
            return ((self._with(self.n, 5 if ch == "u" else 0),), True) if ok else None
        if self.escape > 1:
            ok = ch in "0123456789abcdefABCDEF"
            return ((self._with(self.n, self.escape - 1 if self.escape > 2 else 0),), True
                    ) if ok else None
        if ch == '"':
            return ((), True) if self.n >= self.min_len else None
        if ord(ch) < 0x20 or self.n >= self.max_len:
            return None
        return (self._with(self.n + 1, int(ch == "\\")),), True

    def _with(self, n: int, escape: int) -> String:
        return String(self.min_len, self.max_len, n, escape)


@dataclass(frozen=True)
class Number:
    """RFC 8259 numbers: -? (0 | [1-9] digits) (. digits)? ([eE] [+-]? digits)?"""

    integer: bool
    stage: str  # sign, zero, int, dot, frac, e, esign, exp
    n: int

    DONE = frozenset(("zero", "int", "frac", "exp"))

    def feed(self, ch: str):
        nxt = self._next(ch) if self.n < MAX_NUMBER else None
        if nxt is not None:
            return (Number(self.integer, nxt, self.n + 1),), True
        return ((), False) if self.stage in self.DONE else None

    def _next(self, ch: str) -> str | None:
        s, digit = self.stage, ch.isdigit()
        if digit:
            return {"sign": "zero" if ch == "0" else "int", "int": "int", "dot": "frac",
                    "frac": "frac", "e": "exp", "esign": "exp", "exp": "exp"}.get(s)
        if ch == "." and s in ("zero", "int") and not self.integer:
            return "dot"
        if ch in "eE" and s in ("zero", "int", "frac") and not self.integer:
            return "e"
        return "esign" if ch in "+-" and s == "e" else None


@dataclass(frozen=True)
class Array:
    node: Node
    count: int = 0
    stage: str = "open"  # open (after "["), after (a value), comma
    ws: bool = False

    def feed(self, ch: str):
        node = self.node
        if ch in WS:
            return ((Array(node, self.count, self.stage, True),), True) if not self.ws else None
        if ch == "]" and self.stage != "comma" and self.count >= node.min_items:
            return (), True
        if self.stage == "after":
            ok = ch == "," and self.count < node.max_items
            return ((Array(node, self.count, "comma"),), True) if ok else None
        if self.stage == "open" and node.max_items == 0:
            return None
        return (Array(node, self.count + 1, "after"), Value(node.items or ANY, True)), False


@dataclass(frozen=True)
class Object:
    node: Node
    stage: str = "open"  # open (after "{"), key, colon, after (a value), comma
    seen: frozenset[str] = frozenset()
    key: str = ""
    ws: bool = False

    def feed(self, ch: str):
        props, s = self.node.props, self.stage
        if s == "key":
            return self._key(ch)
        if ch in WS:
            return ((Object(self.node, s, self.seen, self.key, True),), True) if not self.ws \
                else None
        if s == "colon":
            node = ANY if props is None else props[self.key]
            return ((Object(self.node, "after", self.seen | {self.key}), Value(node)), True
                    ) if ch == ":" else None
        if ch == "}" and s in ("open", "after") and self.node.required <= self.seen:
            return (), True
        if s == "after":
            return ((Object(self.node, "comma", self.seen),), True) if ch == "," and \
                self._keys_left() else None
        return ((Object(self.node, "key", self.seen),), True) if ch == '"' and \
            self._keys_left() else None

    def _keys_left(self) -> bool:
        return self.node.props is None or bool(set(self.node.props) - self.seen)

    def _key(self, ch: str):
        props = self.node.props
        if ch == '"':
            ok = (props is None or self.key in props) and self.key not in self.seen
            return ((Object(self.node, "colon", self.seen, self.key),), True) if ok else None
        key = self.key + ch
        if props is None:
            ok = ch not in "\\" and ord(ch) >= 0x20 and len(key) <= MAX_STRING
        else:
            ok = any(k.startswith(key) for k in props if k not in self.seen)
        return ((Object(self.node, "key", self.seen, key),), True) if ok else None


Stack = tuple


def feed(stack: Stack, text: str) -> Stack | None:
    """The stack after reading `text`, None if `text` leaves the format."""
    for ch in text:
        while True:
            if not stack:
                return None
            result = stack[-1].feed(ch)
            if result is None:
                return None
            frames, used = result
            stack = stack[:-1] + frames
            if used:
                break
    return stack


def can_end(stack: Stack) -> bool:
    """Whether the turn may end here (a stop token): no block open, and forced modes called."""
    return len(stack) == 1 and stack[0].can_end()


def start(tools: list[dict], mode: str = "auto", max_calls: int | None = None) -> Stack:
    """The state at the start of an assistant turn."""
    specs = [function_spec(t) for t in tools]
    if not specs:
        raise LmforgeError("tool calls can only be constrained with at least one tool")
    names = tuple(s["name"] for s in specs)
    if mode not in ("auto", "required") and mode not in names:
        raise LmforgeError(f"mode {mode!r} is neither auto, required nor a tool's name "
                           f"({', '.join(names)})")
    args = {s["name"]: compile_schema(s["parameters"], f"{s['name']}.parameters")
            for s in specs}
    for name, node in args.items():
        if node.kinds != {"object"}:
            raise LmforgeError(f"the parameters of tool {name!r} must be an object schema")
    call = Call((mode,) if mode in names else names, args)
    return (Text(mode == "auto", 0, max_calls or 1 << 30, 0, call),)


def is_free(stack: Stack) -> bool:
    """Whether the text is outside any block, in free text (mode auto) with calls left."""
    top = stack[0]
    return len(stack) == 1 and top.free and top.calls < top.max_calls
