"""Building dataclasses from JSON or TOML mappings, strictly: a misspelled key is an error
that names it, never a silently ignored setting (what config-driven projects regret most)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from lmforge.errors import LmforgeError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """`cls(**data)`, with unknown or missing keys and bad values as LmforgeError."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LmforgeError(f"unknown {what} key(s) {unknown}; known keys are {sorted(known)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise LmforgeError(f"invalid {what}: {exc}") from None
