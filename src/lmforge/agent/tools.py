"""Tools as plain Python functions: `@tool` derives the JSON schema from the signature.

    @tool
    def convert(value: float, unit: Literal["km", "mi"] = "km") -> str:
        '''Convert a distance between kilometres and miles.

        Anything after the first paragraph stays out of the prompt.'''
        ...

    convert.spec()   # {"type": "function", "function": {"name": "convert", "description":
                     #   "Convert a distance between kilometres and miles.", "parameters":
                     #   {"type": "object", "properties": {"value": {"type": "number"},
                     #   "unit": {"type": "string", "enum": ["km", "mi"]}},
                     #   "required": ["value"]}}}

Design choices:
- The description is the docstring's first paragraph only: every spec is in every prompt of a
  135M-parameter model, so it must be short. A parameter may carry its own description with
  `Annotated[str, "what it is"]`; parameters with a default (or `Optional`) are not required.
- Types map to JSON schema: str → string, int → integer, float → number, bool → boolean,
  Literal → enum, list[X] → array of X, dict → object, `X | None` → X (not required).
- `Tool.validate` checks a model's arguments against the schema and returns them converted
  (an integer-valued float or a numeric string becomes the int asked for: small models write
  `"k": "3"`); what is wrong becomes `ToolArgumentError` text, which the loop turns into an
  error observation for the model to read and correct.
- The built-in tools (`builtin_tools`) are closures over what they may touch (allowed
  directories, the document retriever, the long-term memory); their names, parameter names
  and descriptions are a contract with the training data (`agent/teach.py`), so they are
  fixed here. Tool sets on the command line: calculator, python, search, files (read_file),
  memory (remember, recall).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from lmforge.errors import LmforgeError

TOOLSETS = {"calculator": ("calculator",), "python": ("python",), "search": ("search",),
            "files": ("read_file",), "memory": ("remember", "recall")}
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean",
               dict: "object", list: "array"}


class ToolArgumentError(LmforgeError):
    """A call's arguments do not fit the tool's schema; the message is the observation."""


@dataclass
class Tool:
    """A callable with the OpenAI function spec derived from it."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]

    def spec(self) -> dict:
        """The OpenAI tool: `{"type": "function", "function": {name, description, parameters}}`."""
        return {"type": "function", "function": {"name": self.name,
                                                 "description": self.description,
                                                 "parameters": self.parameters}}

    def validate(self, arguments: dict) -> dict:
        """`arguments` checked against the schema (and converted where unambiguous)."""
        props, required = self.parameters["properties"], self.parameters.get("required", [])
        unknown = [k for k in arguments if k not in props]
        if unknown:
            known = ", ".join(props) or "none"
            raise ToolArgumentError(f"{self.name} has no argument {unknown[0]!r}; its arguments "
                                    f"are: {known}")
        missing = [k for k in required if k not in arguments]
        if missing:
            raise ToolArgumentError(f"{self.name} needs the argument {missing[0]!r} "
                                    f"({_type_name(props[missing[0]])})")
        # null for an argument that may be left out means "left out": the default applies
        return {k: _check(v, props[k], f"{self.name}: argument {k!r}")
                for k, v in arguments.items() if v is not None or k in required}

    def __call__(self, **arguments: Any) -> str:
        """Run the tool on validated arguments; the result as observation text."""
        result = self.fn(**arguments)
        if isinstance(result, str):
            return result
        return json.dumps(result, ensure_ascii=False, default=str)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None
         ) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator: `@tool` or `@tool(name="other_name")` turns a typed, documented function into
    a Tool."""
    def wrap(f: Callable[..., Any]) -> Tool:
        doc = inspect.getdoc(f)
        if not doc:
            raise LmforgeError(f"tool {f.__name__} needs a docstring: its first paragraph is "
                               "the description the model reads")
        return Tool(name or f.__name__, doc.split("\n\n")[0].replace("\n", " ").strip(),
                    signature_schema(f), f)
    return wrap(fn) if fn is not None else wrap


def signature_schema(fn: Callable[..., Any]) -> dict:
    """The JSON schema of `fn`'s keyword arguments (an object with properties, required)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise LmforgeError(f"tool {fn.__name__}: *args and **kwargs have no schema; name "
                               "each parameter")
        if p.name not in hints:
            raise LmforgeError(f"tool {fn.__name__}: parameter {p.name!r} needs a type hint")
        schema, optional = type_schema(hints[p.name], f"{fn.__name__}.{p.name}")
        props[p.name] = schema
        if p.default is p.empty and not optional:
            required.append(p.name)
    return {"type": "object", "properties": props, "required": required}


def type_schema(hint: Any, where: str = "") -> tuple[dict, bool]:
    """(JSON schema of a type hint, whether it admits None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        schema, optional = type_schema(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        return ({**schema, "description": notes[0]} if notes else schema), optional
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise LmforgeError(f"tool {where}: a union of several types has no simple schema; "
                               "use one type (or X | None)")
        return type_schema(rest[0], where)[0], len(rest) < len(args)
    if origin is Literal:
        kinds = {_JSON_TYPES.get(type(a)) for a in args}
        schema = {"type": kinds.pop()} if len(kinds) == 1 and None not in kinds else {}
        return {**schema, "enum": list(args)}, False
    if origin in (list, Sequence, tuple) or hint is list:
        item = type_schema(args[0], where)[0] if args else {}
        return ({"type": "array", "items": item} if item else {"type": "array"}), False
    if origin is dict or hint is dict:
        return {"type": "object"}, False
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}, False
    raise LmforgeError(f"tool {where}: type {hint!r} has no JSON schema; use str, int, float, "
                       "bool, Literal[...], list[...] or dict")


def _type_name(schema: dict) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any value")
    if kind == "array" and "items" in schema:
        return f"a list of {_type_name(schema['items'])} values"
    return {"string": "a string", "integer": "an integer", "number": "a number",
            "boolean": "true or false", "object": "a JSON object",
            "array": "a list"}.get(kind, kind)


def _check(value: Any, schema: dict, where: str) -> Any:
    """`value` if it fits `schema`, converted where the intent is unambiguous."""
    kind = schema.get("type")
    converted = _convert(value, kind)
    if converted is _MISFIT:
        raise ToolArgumentError(f"{where} must be {_type_name(schema)}, got "
                                f"{json.dumps(value, ensure_ascii=False)[:100]}")
    if "enum" in schema and converted not in schema["enum"]:
        raise ToolArgumentError(f"{where} must be {_type_name(schema)}, got "
                                f"{json.dumps(value, ensure_ascii=False)[:100]}")
    if kind == "array" and "items" in schema:
        return [_check(v, schema["items"], f"{where}[{i}]") for i, v in enumerate(converted)]
    return converted


_MISFIT = object()


def _convert(value: Any, kind: str | None) -> Any:
    if kind is None:
        return value
    if kind == "integer":
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISFIT
    if kind == "number":
        if isinstance(value, str):
            value = _number(value)
        return value if isinstance(value, int | float) and not isinstance(value, bool) \
            else _MISFIT
    python_type = {"string": str, "boolean": bool, "object": dict, "array": list}[kind]
    return value if isinstance(value, python_type) else _MISFIT


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def builtin_tools(names: Iterable[str] = tuple(TOOLSETS), allow: Sequence[str | Path] = (),
                  retriever: Any = None, memory: Any = None, limits: Any = None) -> list[Tool]:
    """The built-in tools of the named tool sets (`TOOLSETS`), in that order.

    `allow`: directories read_file may read; `retriever`: a `rag.retrieve.Retriever` for
    search; `memory`: an `agent.memory.LongTermMemory` for remember/recall; `limits`: the
    python tool's `sandbox.Limits`. Without them the tools still give their specs (for
    training data) and answer a call with a message saying what is missing."""
    makers = {"calculator": lambda: _calculator(), "python": lambda: _python(limits),
              "search": lambda: _search(retriever), "read_file": lambda: _read_file(allow),
              "remember": lambda: _remember(memory), "recall": lambda: _recall(memory)}
    tools = []
    for name in names:
        if name not in TOOLSETS:
            raise LmforgeError(f"unknown tool set {name!r}; choose from "
                               f"{', '.join(TOOLSETS)}")
        tools += [makers[t]() for t in TOOLSETS[name]]
    return tools


def builtin_specs(names: Iterable[str] = tuple(TOOLSETS)) -> list[dict]:
    """The OpenAI specs of the built-in tools (what the training data shows the model)."""
    return [t.spec() for t in builtin_tools(names)]


def _calculator() -> Tool:
    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression exactly (+ - * / ** % parentheses, decimals)."""
        from lmforge.agent.calculator import calculate

        return calculate(expression)
    return calculator


def _python(limits: Any) -> Tool:
    @tool
    def python(code: str) -> str:
        """Run Python code in a sandbox and return what it prints."""
        from lmforge.agent.sandbox import run_python

        return run_python(code, limits).observation()
    return python


def _search(retriever: Any) -> Tool:
    @tool
    def search(query: str, k: int = 3) -> str:
        """Search the user's documents and return the best passages."""
        if retriever is None:
            raise LmforgeError("no document collection is open; start the agent with --db and "
                               "--collection")
        from lmforge.agent.memory import search_passages

        return search_passages(retriever, query, k)
    return search


def _read_file(allow: Sequence[str | Path]) -> Tool:
    @tool
    def read_file(path: str) -> str:
        """Read a text, Markdown, CSV or PDF file, or list a directory."""
        from lmforge.agent.perception import read_path

        return read_path(path, allow)
    return read_file


def _remember(memory: Any) -> Tool:
    @tool
    def remember(text: str) -> str:
        """Save a note to long-term memory."""
        return _need_memory(memory).remember(text)
    return remember


def _recall(memory: Any) -> Tool:
    @tool
    def recall(query: str) -> str:
        """Search long-term memory for saved notes."""
        return _need_memory(memory).recall(query)
    return recall


def _need_memory(memory: Any) -> Any:
    if memory is None:
        raise LmforgeError("no long-term memory is open; start the agent with --tools memory "
                           "and --memory FILE.db")
    return memory
