"""Run independent simulations in worker processes and keep their results in task order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_in_order(
    task: Callable[[T], R],
    tasks: Sequence[T],
    workers: int,
    on_done: Callable[[R], None] | None = None,
) -> list[R]:
    """``task`` of each of ``tasks``, in ``workers`` processes (here when ``workers <= 1`` or
    there is one task: a run takes less than starting a pool); ``on_done`` sees each result
    as it completes, the list comes back in the order of ``tasks``."""
    if workers <= 1 or len(tasks) <= 1:
        out = []
        for t in tasks:
            out.append(result := task(t))
            if on_done:
                on_done(result)
        return out
    slots: list[R | None] = [None] * len(tasks)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(task, t): k for k, t in enumerate(tasks)}
        for f in as_completed(futures):
            slots[futures[f]] = result = f.result()
            if on_done:
                on_done(result)
    return [r for r in slots if r is not None]
