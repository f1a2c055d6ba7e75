"""Overlap reading with computing: a bounded read-ahead over tensor names.

Reads go through ``pread`` (which releases the GIL) in a small thread pool while the main
thread computes on the previous tensor; at most ``depth`` tensors' inputs are in memory at
once, so read-ahead costs a constant, not a model-sized, amount of memory.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def read_ahead(names: Iterable[str], load: Callable[[str], T], depth: int = 2) -> Iterator[tuple[str, T]]:
    """Yield ``(name, load(name))`` in order, loading up to ``depth`` names ahead."""
    pending: deque[tuple[str, Future[T]]] = deque()
    iterator = iter(names)
    with ThreadPoolExecutor(max_workers=max(1, depth), thread_name_prefix="llmguard-read") as pool:
        try:
            for _ in range(depth):
                name = next(iterator, None)
                if name is None:
                    break
                pending.append((name, pool.submit(load, name)))
            while pending:
                name, future = pending.popleft()
                following = next(iterator, None)
                if following is not None:
                    pending.append((following, pool.submit(load, following)))
                yield name, future.result()
        finally:
            for _, future in pending:
                future.cancel()
