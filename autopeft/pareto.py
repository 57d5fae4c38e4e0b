"""The Pareto front: items no other item beats on both cost (lower) and badness (lower) at once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def pareto_front(items: Iterable[T], cost: Callable[[T], Any], badness: Callable[[T], Any]) -> list[T]:
    """The non-dominated items by increasing cost: each is strictly better than every cheaper one
    (of items with equal cost and badness, the first is kept)."""
    front: list[T] = []
    for item in sorted(items, key=lambda i: (cost(i), badness(i))):
        if not front or badness(item) < badness(front[-1]):
            front.append(item)
    return front
