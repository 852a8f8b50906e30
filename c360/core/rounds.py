"""Group commit: the work of concurrent callers done in rounds, one round at a time.

A caller hands `Rounds.apply` its batch and the function that does a round's work. It waits for the round lock;
whoever holds it takes every batch waiting (its own among them, unless an earlier round did it), runs the work once
over all of them, and hands each caller its own result. A round's fixed costs (an fsync, the contract's checks per
table, the live update's queries and model calls) are then paid once for the requests that arrived while the
previous round ran, not once per request in a queue: under load a round grows, and its cost per item falls.

The work gets the batches in arrival order and returns one result per batch, in the same order; an error of the
work is raised to every caller of the round.

A `linger` (seconds) lets a round wait for as many batches as the last round had, up to that long: callers answered
together send again within milliseconds of each other, and a round taken at the first arrival would run that batch
alone, at nearly a full round's cost, while the others wait for the next (the live update under 8 clients ran
rounds of 1 and 7 requests in turn). A lone caller never waits: its last round had one batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Rounds(Generic[T, R]):
    """Batches of `T` taken in rounds; each caller gets its `R`."""

    def __init__(self, linger: float = 0.0) -> None:
        self._waiting: list[tuple[Sequence[T], Future[R]]] = []
        self._lock = threading.Lock()  # guards `_waiting`
        self._round = threading.Lock()  # one round at a time
        self._linger = linger
        self._callers = 0  # batches of the last round

    def apply(self, batch: Sequence[T], work: Callable[[list[Sequence[T]]], list[R]]) -> R:
        """`batch`'s result of `work`, done in this round or an earlier caller's."""
        mine: Future[R] = Future()
        with self._lock:
            self._waiting.append((batch, mine))
        with self._round:
            if not mine.done():
                self._wait_for_the_others()
                with self._lock:
                    taken, self._waiting = self._waiting, []
                self._callers = len(taken)
                _run(taken, work)
        return mine.result()

    def _wait_for_the_others(self) -> None:
        """Up to `linger` seconds, until as many batches wait as the last round took."""
        deadline = time.monotonic() + self._linger
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._waiting) >= self._callers:
                    return
            time.sleep(self._linger / 10)


def _run(taken: list[tuple[Sequence[T], Future[R]]], work: Callable[[list[Sequence[T]]], list[R]]) -> None:
    try:
        results = work([batch for batch, _ in taken])
    except BaseException as e:  # every caller of the round learns of it, not only the one that ran it
        for _, future in taken:
            future.set_exception(e)
        return
    for (_, future), result in zip(taken, results, strict=True):
        future.set_result(result)
