"""The refresh job's machinery: steps that run only when their inputs changed, and the state that remembers them.

A `Step` is a name, a fingerprint of its inputs (a short text made by the helpers below: a hash of what it reads) and
the function doing its work, which commits its own result (a transaction, a file swapped in whole, a resumable
scoring run). The state file `C360_HOME/refresh.json` keeps, per step, the fingerprint of the inputs of its last
successful run, when it ran and its figures (counts and dates, never a personal value); it is rewritten whole, and
only after a step succeeded. So a run killed midway leaves every step either done and recorded, or to be done again
by the next run, which then reads the same inputs the killed one did: the result is the one an uninterrupted run
gives. A step may also `wait` although its inputs changed (training, until the schedule says so).

`run` goes through the steps in order and stops at the first that fails: every later step reads what the earlier
ones made. The steps themselves, which reach into training and serving, are wired by the command
(`c360.cli.refresh`).
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from c360.core.at_rest import write_private
from c360.core.settings import Settings

Status = Literal["done", "skipped", "failed"]
NOTHING_NEW = "nothing new"


@dataclass(frozen=True)
class Step:
    """One step of the job. `inputs(s)` fingerprints what it reads; `work(s)` does it and returns its figures;
    `wait(s, state)` gives a reason to leave it for a later run
    although its inputs changed, or None."""

    name: str
    inputs: Callable[[Settings], str]
    work: Callable[[Settings], dict[str, Any]]
    wait: Callable[[Settings, State], str | None] = lambda s, state: None


@dataclass
class Outcome:
    step: str
    status: Status
    seconds: float = 0.0
    note: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


class State:
    """What the job remembers between runs: per step, `{"inputs": fingerprint, "at": ..., "figures": {...}}`."""

    def __init__(self, s: Settings) -> None:
        self.path = path(s)
        self.steps: dict[str, dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def inputs(self, step: str) -> str | None:
        return self.steps.get(step, {}).get("inputs")

    def figures(self, step: str) -> dict[str, Any]:
        return self.steps.get(step, {}).get("figures", {})

    def record(self, step: str, inputs: str, figures: dict[str, Any]) -> None:
        """The step succeeded on these inputs: kept durably before the next step starts."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        self.steps[step] = {"inputs": inputs, "at": at, "figures": figures}
        write_private(self.path, json.dumps(self.steps, indent=1, default=str).encode())


def path(s: Settings) -> Path:
    return s.home / "refresh.json"


def run(s: Settings, steps: Sequence[Step], on_start: Callable[[Step], None],
        on_end: Callable[[Outcome], None]) -> list[Outcome]:
    """Each step in turn, skipped when its inputs are those of its last successful run; stops after a failure."""
    state, outcomes = State(s), []
    for step in steps:
        on_start(step)
        outcome = _one(s, state, step)
        on_end(outcome)
        outcomes.append(outcome)
        if outcome.status == "failed":
            break
    return outcomes


def _one(s: Settings, state: State, step: Step) -> Outcome:
    started = time.perf_counter()
    try:
        inputs = step.inputs(s)
        if inputs == state.inputs(step.name):
            return Outcome(step.name, "skipped", time.perf_counter() - started, NOTHING_NEW)
        if (reason := step.wait(s, state)) is not None:
            return Outcome(step.name, "skipped", time.perf_counter() - started, reason)
        figures = step.work(s)
    except Exception as e:  # any failure of a step ends the run with one line naming the step, not a traceback
        return Outcome(step.name, "failed", time.perf_counter() - started, _why(e))
    state.record(step.name, inputs, figures)
    return Outcome(step.name, "done", time.perf_counter() - started, figures=figures)


def _why(error: Exception) -> str:
    """The error in one line: its message, or its type and where it was raised when it has none."""
    text = " ".join(str(error).split())
    if text:
        return text
    where = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__} at {Path(where.filename).name}:{where.lineno}"


# ---------------------------------------------------------------------------------------- fingerprints of inputs


def digest(*parts: object) -> str:
    """A short fingerprint of `parts` (texts, numbers, lists of them)."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def files(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """Each existing file's path, size and modification time: a file changes when any does (no content read)."""
    found = [(str(p), p.stat()) for p in paths if p.is_file()]
    return [(name, st.st_size, st.st_mtime_ns) for name, st in sorted(found)]


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[int, str]:
    """The rows of a query: their count and the sum of their hashes (DuckDB's `hash` of each whole row), so a row
    added, removed or changed changes it, whatever the order."""
    count, total = con.execute(f"SELECT count(*), coalesce(sum(hash(r)), 0) FROM ({sql}) r").fetchone()  # type: ignore[misc]
    return int(count), str(total)
