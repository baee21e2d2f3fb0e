"""Races on purpose: one call per thread, all started together, their results and errors collected."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def at_once(fn: Callable[..., T], calls: int | Sequence[tuple[Any, ...]], *, timeout: float,
            together: bool = True) -> tuple[list[T], list[BaseException]]:
    """`fn(*args)` for each args of `calls` (or `fn()` `calls` times), each in its own thread; with
    `together`, every thread waits at a barrier until all are ready, so the calls start as one. Returns
    what they returned and what they raised, each in the order they finished. A thread still running
    after `timeout` is reported as an error (TimeoutError)."""
    argses = [()] * calls if isinstance(calls, int) else list(calls)
    barrier = threading.Barrier(len(argses)) if together else None
    results: list[T] = []
    errors: list[BaseException] = []

    def one(args: tuple[Any, ...]) -> None:
        try:
            if barrier is not None:
                barrier.wait(timeout)
            results.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(args,), daemon=True) for args in argses]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    errors += [TimeoutError(f"{fn.__name__} still running after {timeout} s") for t in threads if t.is_alive()]
    return results, errors
