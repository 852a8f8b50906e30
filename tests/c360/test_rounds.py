"""Group commit (`c360.core.rounds`): the batches that wait while a round runs are done together in the next one,
each caller gets its own result, and an error of a round reaches every caller of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from c360.core.rounds import Rounds


def waiting(rounds: Rounds, count: int) -> None:
    """Until `count` callers wait for the next round."""
    deadline = time.monotonic() + 10
    while len(rounds._waiting) < count:
        assert time.monotonic() < deadline, "the callers never queued"
        time.sleep(0.005)


def three_wait_for_the_first(rounds: Rounds, callers: list[threading.Thread], first_running: threading.Event,
                             release: threading.Event) -> None:
    """The first caller's round runs until the other three wait for the next one; then all are done."""
    callers[0].start()
    assert first_running.wait(10)
    for caller in callers[1:]:
        caller.start()
    waiting(rounds, 3)
    release.set()
    for caller in callers:
        caller.join(10)


def test_the_batches_waiting_during_a_round_go_together_into_the_next_and_each_gets_its_own() -> None:
    rounds: Rounds[int, list[int]] = Rounds()
    runs: list[list[list[int]]] = []
    first_running, release = threading.Event(), threading.Event()

    def doubled(batches: list[Sequence[int]]) -> list[list[int]]:
        runs.append([list(b) for b in batches])
        if len(runs) == 1:
            first_running.set()
            release.wait(10)
        return [[2 * x for x in b] for b in batches]

    results: dict[int, list[int]] = {}
    callers = [threading.Thread(target=lambda n=n: results.__setitem__(n, rounds.apply([n, n + 10], doubled)))
               for n in range(4)]
    three_wait_for_the_first(rounds, callers, first_running, release)
    assert runs[0] == [[0, 10]]
    assert sorted(runs[1]) == [[1, 11], [2, 12], [3, 13]]  # one round for the three that waited
    assert results == {n: [2 * n, 2 * n + 20] for n in range(4)}


def test_an_error_of_a_round_reaches_every_caller_of_it() -> None:
    rounds: Rounds[int, int] = Rounds()
    runs: list[int] = []
    first_running, release = threading.Event(), threading.Event()

    def failing_second(batches: list[Sequence[int]]) -> list[int]:
        runs.append(len(batches))
        if len(runs) == 1:
            first_running.set()
            release.wait(10)
            return [0] * len(batches)
        raise RuntimeError("the round failed")

    outcomes: list[str] = []

    def call() -> None:
        try:
            rounds.apply([1], failing_second)
            outcomes.append("done")
        except RuntimeError:
            outcomes.append("failed")

    callers = [threading.Thread(target=call) for _ in range(4)]
    three_wait_for_the_first(rounds, callers, first_running, release)
    assert runs == [1, 3] and sorted(outcomes) == ["done", "failed", "failed", "failed"]
    with pytest.raises(RuntimeError):  # the next round runs afresh: a failed round leaves no one waiting
        rounds.apply([1], failing_second)


def round_sizes_of_staggered_callers(linger: float) -> list[int]:
    """After a round of three callers, three callers arrive 50 ms apart: the batches of each round."""
    rounds: Rounds[int, None] = Rounds(linger=linger)
    sizes: list[int] = []
    first_running, release = threading.Event(), threading.Event()

    def work(batches: list[Sequence[int]]) -> list[None]:
        sizes.append(len(batches))
        if len(sizes) == 1:
            first_running.set()
            release.wait(10)
        return [None] * len(batches)

    three_wait_for_the_first(rounds, [threading.Thread(target=rounds.apply, args=([n], work)) for n in range(4)],
                             first_running, release)
    staggered = [threading.Thread(target=rounds.apply, args=([n], work)) for n in range(3)]
    for caller in staggered:
        caller.start()
        time.sleep(0.05)
    for caller in staggered:
        caller.join(10)
    return sizes


def test_a_round_waits_for_the_callers_of_the_last_one_up_to_its_linger() -> None:
    assert round_sizes_of_staggered_callers(linger=2.0) == [1, 3, 3]
    assert round_sizes_of_staggered_callers(linger=0.0) == [1, 3, 1, 1, 1]  # without: the first arrival runs alone
