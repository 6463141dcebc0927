"""`Indexed`: an item of a task's data with its row, for tasks whose loaders return plain
records (QA questions, GSM8K problems, reviews, CrowS-Pairs pairs, prompts).

The row is what a per-example record names (`ExampleRecord.index`) and what `Shots` uses to
keep an example from being its own demonstration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Indexed(Generic[T]):
    index: int  # the item's row in its data (0-based)
    item: T


def indexed(items: Iterable[T]) -> list[Indexed[T]]:
    """Each item with its position."""
    return [Indexed(i, x) for i, x in enumerate(items)]
