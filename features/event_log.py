"""Live events in, durably: the event log, the one handler that fills it, and its fold into the warehouse.

An event is one JSON object `{"event_id", "kind", "at", "customer_id"?, ...}` carrying the row of its kind's
contract table (`c360.core.contract.EVENT_KINDS`): the kind sets its fixed columns, `at` fills its time column, and
the row is checked by the same contract as a file's row (`ingest.parse`), a batch's rows of one table together.

* `accept(s, events)` — the handler of `POST /events` and `c360 events push`. Under the log's lock (`events.lock`,
  so the service's workers and the commands append one at a time) the new events are appended to `events.jsonl`
  and fsynced before the answer: an acknowledged event is on disk. The batches of concurrent callers go in
  together (`core.rounds`): one contract check per table and one fsync per round, not per request. An `event_id`
  already in the log is acknowledged and ignored; each process keeps the ids it has seen and reads only what others
  appended since (the tail trick of `c360.core.audit`). A rejected event goes, with its reasons, to
  `rejects.jsonl`; an event of an erased person (`c360.features.privacy.Suppressed`) is acknowledged and dropped
  unstored.
* `fold(s, con)` — `c360 ingest` folds both logs into the warehouse, one transaction: each new event's row into
  its table (an `update` kind replaces the row with the same key, the last event wins; the old version goes to the
  history, until the event's time: `c360.features.versions`), each reject into
  `quarantine` like a bad row, and the ids folded into `events_folded`, so a second fold adds nothing. References
  are not checked: an event may name a parent (a new user, a new contact) that the next batch brings. Once the
  warehouse has committed them, the folded records leave the logs, their ids kept in `folded.jsonl`: the logs
  hold what is still to fold, and an event sent again after its fold is still a duplicate.
* `EventLogs` — the logs as a personal-data store (`c360.core.personal.STORES`): erasure rewrites them without the
  person's events (the lock held, the new file swapped in whole).
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import pandas as pd
import pyarrow

from c360.core import contract, locks
from c360.core.at_rest import file_stamp, fsync_dir, write_private
from c360.core.contract import EVENTS_BY_KIND, EventKind, Table
from c360.core.personal import Erased, Person, Work
from c360.core.rounds import Rounds
from c360.core.settings import Settings
from c360.core.warehouse import CUSTOMER_ID, has_table
from c360.features import versions
from c360.features.ingest import TEXT, ensure_schema, parse, q, to_datetime, upgrade
from c360.features.privacy import Suppressed, identifiers, row_identifiers

MAX_BATCH = 1000  # events per request or per call of `accept`
MAX_ID = 128  # characters of an event_id
ENVELOPE = ("event_id", "kind", "at", "customer_id")
FOLDED_DDL = """
CREATE TABLE IF NOT EXISTS events_folded (log VARCHAR, id VARCHAR, ingest_id BIGINT, folded_at TIMESTAMP)"""
NO_TABLE = "events"  # quarantine's table_id of a reject whose kind is unknown
Failure = tuple[str, Any, str, str]  # column, value, reason, rule (as ingest.parse's failures)
FAILURE_COLUMNS = ("column", "value", "reason", "rule")  # ingest.parse's failures: row, then these


def folder(s: Settings) -> Path:
    return s.home / "events"


def log_path(s: Settings) -> Path:
    return folder(s) / "events.jsonl"


def rejects_path(s: Settings) -> Path:
    return folder(s) / "rejects.jsonl"


def folded_path(s: Settings) -> Path:
    """The ids of the events a fold took out of the log (each line `{"event": {"event_id": ...}}`, as the log's)."""
    return folder(s) / "folded.jsonl"


# ---------------------------------------------------------------- checking a batch


def _kind(event: dict[str, Any]) -> EventKind:
    return EVENTS_BY_KIND[event["kind"]]


class Unreadable(str):
    """A line of an events file that is not JSON (`c360 events push`): rejected as such, its text kept."""


def _envelope(event: Any) -> list[Failure]:
    """What is wrong with an event before its row is looked at."""
    if isinstance(event, Unreadable):
        return [("event", None, "not valid JSON", "format")]
    if not isinstance(event, dict):
        return [("event", None, "not a JSON object", "format")]
    out: list[Failure] = []
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        out.append(("event_id", event_id, "required (a non-empty string)", "required"))
    elif len(event_id) > MAX_ID:
        out.append(("event_id", event_id[:MAX_ID], f"longer than {MAX_ID} characters", "range"))
    if event.get("kind") not in EVENTS_BY_KIND:
        out.append(("kind", event.get("kind"), f"not one of {', '.join(EVENTS_BY_KIND)}", "enum"))
    if not isinstance(event.get("at"), str):
        out.append(("at", event.get("at"), "required, an ISO 8601 datetime", "required"))
    customer = event.get("customer_id")
    if customer is not None and not (isinstance(customer, str) and re.match(CUSTOMER_ID, customer)):
        out.append(("customer_id", customer, "not a customer id", "contract"))
    out += [(k, None, "not a single value", "format") for k, v in event.items() if isinstance(v, dict | list)]
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _row(event: dict[str, Any]) -> dict[str, Any]:
    """The contract row an event carries: its fields of the table, the kind's fixed columns, `at` in its column."""
    kind = _kind(event)
    row = {c: event.get(c) for c in contract.table(kind.table).column_names} | dict(kind.fixed)
    if kind.at is not None:
        row[kind.at] = event["at"]
    return row


def _raw(table: Table, events: Sequence[dict[str, Any]], index: Sequence[int]) -> pd.DataFrame:
    """The events' rows as `ingest.parse` takes them: the table's columns as text, indexed by `index`."""
    rows = [{c: _text(v) for c, v in _row(e).items()} for e in events]
    return pd.DataFrame(rows, columns=table.column_names, index=pd.Index(index, dtype="int64"), dtype=TEXT)


class _Parsed:
    """`ingest.parse` of event rows, remembered per process by table and row text. The contract's checks are row
    by row, so a row's text decides its typed row: intake parses each event once, and the live update (placing
    the events, gathering the unfolded ones) takes the typed rows from here, parsing only what another process
    logged. Only rows without failures are kept; past `LIMIT` rows all are forgotten."""

    LIMIT = 200_000

    def __init__(self) -> None:
        self._rows: dict[tuple[Any, ...], tuple[pd.DataFrame, int]] = {}  # (table, *text) → typed frame, position
        self._lock = threading.Lock()

    def parse(self, raw: pd.DataFrame, table: Table) -> tuple[pd.DataFrame, pd.DataFrame]:
        """`ingest.parse(raw, table)`: (typed rows indexed as `raw`, failures)."""
        texts = [raw[c].to_numpy(dtype=object, na_value=None) for c in raw.columns]  # one call per column, not cell
        keys = [(table.id, *row) for row in zip(*texts, strict=True)]
        with self._lock:
            found = {i: hit for i, k in enumerate(keys) if (hit := self._rows.get(k)) is not None}
        missing = [i for i in range(len(keys)) if i not in found]
        if len(found) == 0:
            typed, failures = parse(raw, table)
            self._keep(keys, typed, failures)
            return typed, failures
        failures = pd.DataFrame({"row": pd.Series(dtype="int64"), **{c: [] for c in FAILURE_COLUMNS}})
        if missing:
            typed, failures = parse(raw.iloc[missing], table)
            self._keep([keys[i] for i in missing], typed, failures)
            found |= {i: (typed, n) for n, i in enumerate(missing)}
        return _assemble([found[i] for i in range(len(keys))]).set_axis(raw.index), failures

    def _keep(self, keys: list[tuple[Any, ...]], typed: pd.DataFrame, failures: pd.DataFrame) -> None:
        good = ~typed.index.isin(failures["row"])
        with self._lock:
            if len(self._rows) + len(keys) > self.LIMIT:
                self._rows.clear()
            self._rows.update((k, (typed, i)) for i, k in enumerate(keys) if good[i])


def _assemble(found: Sequence[tuple[pd.DataFrame, int]]) -> pd.DataFrame:
    """The typed rows at `found`'s (frame, position)s, in order: each run from one frame taken at once."""
    pieces, start = [], 0
    for end in range(1, len(found) + 1):
        if end == len(found) or found[end][0] is not found[start][0]:
            pieces.append(found[start][0].take([position for _, position in found[start:end]]))
            start = end
    return pd.concat(pieces) if len(pieces) > 1 else pieces[0]


_parsed = _Parsed()


def _by_table(events: Sequence[Any], among: Sequence[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in among:
        out.setdefault(_kind(events[i]).table, []).append(i)
    return out


def _check(events: Sequence[Any], suppressed: Suppressed | None) -> tuple[dict[int, list[Failure]], set[int]]:
    """Per event of the batch: its failures (none: valid), and which belong to erased people."""
    failures = {i: f for i, e in enumerate(events) if (f := _envelope(e))}
    timed = [i for i in range(len(events)) if i not in failures]
    at = to_datetime(pd.Series([events[i]["at"] for i in timed], index=timed, dtype=TEXT))
    for i in at.index[at.isna()]:
        failures[i] = [("at", events[i]["at"], "not a valid datetime (ISO 8601)", "datetime")]
    dropped: set[int] = set()
    valid = [i for i in range(len(events)) if i not in failures]
    for table_id, positions in _by_table(events, valid).items():
        table = contract.table(table_id)
        raw = _raw(table, [events[i] for i in positions], positions)
        if suppressed is not None:
            dropped |= set(raw.index[suppressed.mask(table, raw)])
        for row in _parsed.parse(raw, table)[1].itertuples():
            failures.setdefault(int(row.row), []).append((row.column, row.value, row.reason, row.rule))
    return failures, dropped - set(failures)


def reason(failures: list[Failure]) -> str:
    return "; ".join(f"{column}: {why}" for column, _, why, _ in failures)


def customers_named(events: Sequence[Any]) -> list[str]:
    """The customer ids a batch names (for the audit trail), valid ones only."""
    named = (e.get("customer_id") for e in events if isinstance(e, dict))
    return list(dict.fromkeys(c for c in named if isinstance(c, str) and re.match(CUSTOMER_ID, c)))


# ---------------------------------------------------------------- the logs


_suppressed: dict[Path, tuple[tuple[int, int, int], Suppressed | None]] = {}
_thread_lock = threading.Lock()


@contextmanager
def _locked(s: Settings) -> Iterator[None]:
    """The logs to this process alone: appends, and an erasure's rewrite, take it."""
    folder(s).mkdir(parents=True, exist_ok=True, mode=0o700)
    with _thread_lock, locks.flocked(folder(s) / "events.lock"):
        yield


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The whole lines of `data` (without their newline) and the bytes they take; a torn last line (a write cut
    short) is left out."""
    end = data.rfind(b"\n") + 1
    return data[:end].split(b"\n")[:-1], end


def _records(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:  # the torn end of a write that was never acknowledged
            continue


def _open(path: Path) -> int:
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    if created:  # the new file's name must survive a crash too
        fsync_dir(path.parent)
    return fd


def _write(fd: int, records: list[dict[str, Any]]) -> None:
    """Append `records` as JSON lines and fsync: on disk when this returns. A torn last line (a write cut short by a
    crash, never acknowledged) is ended first, so it does not swallow the next record."""
    if not records:
        os.fsync(fd)
        return
    size = os.fstat(fd).st_size
    torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    os.write(fd, (b"\n" if torn else b"") + _lines(records))
    os.fsync(fd)


def _lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    fd = _open(path)
    try:
        _write(fd, records)
    finally:
        os.close(fd)


def _suppression(s: Settings) -> Suppressed | None:
    """The suppression list, read again only when its file changed."""
    path = s.home / "privacy" / "suppressed"
    try:
        stamp = file_stamp(path.stat())
    except FileNotFoundError:
        return None
    cached = _suppressed.get(path)
    if cached is None or cached[0] != stamp:
        cached = _suppressed[path] = (stamp, Suppressed.load(s))
    return cached[1]


# ---------------------------------------------------------------- the handler


_intake: Rounds[Any, tuple[dict[str, Any], list[dict[str, Any]]]] = Rounds()


def accept(s: Settings, events: Sequence[Any]) -> dict[str, Any]:
    """Check a batch, log the new valid events durably, log the rejects; the answer to send back.

    `{"accepted", "duplicates", "suppressed", "rejected": [{"index", "event_id", "reason"}]}`."""
    return receive(s, events)[0]


def receive(s: Settings, events: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`accept`'s answer, and the events it logged now (the live update's input: neither duplicates nor rejects).

    The batches of concurrent callers are taken together (`core.rounds`): one round checks them by the contract,
    a table's rows at once, and appends them with one fsync, as one batch of their events in arrival order would."""
    if len(events) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH:,} events per batch, not {len(events):,}")
    return _intake.apply(events, partial(_receive_all, s))


def _receive_all(s: Settings, batches: list[Sequence[Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """`receive` of each batch, the batches checked and logged as one."""
    events = [e for batch in batches for e in batch]
    failures, dropped = _check(events, _suppression(s))
    received = datetime.now(UTC).isoformat(timespec="milliseconds")
    starts = list(accumulate((len(b) for b in batches), initial=0))
    valid = [i for i in range(len(events)) if i not in failures and i not in dropped]
    with _locked(s):
        logged = _log_new(s, events, valid, received)
        if failures:  # a reject's index is its place in its own batch
            index = {i: i - starts[bisect_right(starts, i) - 1] for i in failures}
            _append(rejects_path(s), [_reject(events[i], index[i], f, received) for i, f in sorted(failures.items())])
    return [_answer(events, failures, dropped, logged, first, end) for first, end in pairwise(starts)]


def _answer(events: list[Any], failures: dict[int, list[Failure]], dropped: set[int], logged: list[int], first: int,
            end: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The answer of the batch at `first:end` of the round's events, and its events logged."""
    mine = range(first, end)
    new = [i for i in logged if first <= i < end]
    rejected = [{"index": i - first, "event_id": _event_id(events[i]), "reason": reason(failures[i])}
                for i in mine if i in failures]
    suppressed = sum(i in dropped for i in mine)
    return {"accepted": len(new), "duplicates": end - first - len(rejected) - suppressed - len(new),
            "suppressed": suppressed, "rejected": rejected}, [events[i] for i in new]


def _log_new(s: Settings, events: list[dict[str, Any]], valid: list[int], received: str) -> list[int]:
    """Append the `valid` events whose id was never logged (neither in the log nor folded out of it; the first of
    the round's repeats); returns their positions. The caller holds the lock."""
    fd = _open(log_path(s))
    try:
        new: dict[str, int] = {}
        with _read_lock:
            held, folded = _read(log_path(s)).ids, _read(folded_path(s)).ids
            for i in valid:
                if events[i]["event_id"] not in held and events[i]["event_id"] not in folded:
                    new.setdefault(events[i]["event_id"], i)
        if new:
            _write(fd, [{"received_at": received, "event": events[i]} for i in new.values()])
    finally:
        os.close(fd)
    return sorted(new.values())


def _event_id(event: Any) -> str | None:
    found = event.get("event_id") if isinstance(event, dict) else None
    return found if isinstance(found, str) else None


def _reject(event: Any, index: int, failures: list[Failure], received: str) -> dict[str, Any]:
    return {"reject_id": uuid.uuid4().hex, "received_at": received, "index": index,
            "failures": [dict(zip(("column", "value", "reason", "rule"), _plain(f), strict=True)) for f in failures],
            "event": event}


def _plain(failure: Failure) -> tuple[Any, ...]:
    column, value, why, rule = failure
    return column, None if value is None or pd.isna(value) else str(value), why, rule


# ---------------------------------------------------------------- folding into the warehouse


@dataclass
class FoldReport:
    """What one fold did, per table: events read = rows accepted (`replaced` of them took an older row's place)
    + events superseded by a later event of the same row in the fold + quarantined."""

    table_id: str
    read: int = 0
    accepted: int = 0
    replaced: int = 0
    superseded: int = 0
    quarantined: int = 0


@dataclass
class _Read:
    """What this process has read of a log: the file's (inode, size, mtime) then, the bytes and lines read, where
    each record starts (byte offset, line number) and the event ids (what `accept` checks a batch against). Not the
    records: held, they were every event of the log in every worker (1.2 KB an event); a reader parses the lines it
    asks for again."""

    stamp: tuple[int, int, int]
    offset: int = 0
    lines: int = 0
    starts: array[int] = field(default_factory=lambda: array("q"))
    numbers: array[int] = field(default_factory=lambda: array("q"))
    ids: set[str] = field(default_factory=set)


_reads: dict[Path, _Read] = {}
_folded: dict[Path, tuple[tuple[int, int, int], frozenset[str]]] = {}
_read_lock = threading.Lock()


def read_log(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of a log's whole lines (see `_read`)."""
    return read_log_from(path, 0, None)[1]


def read_log_from(path: Path, start: int, inode: int | None) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
    """The log file's inode and its records from the `start`th on: all of them when the file is not `inode` any
    more (an erasure rewrote it). A reader that keeps what it took reads only the tail."""
    with _read_lock:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return 0, []
        with f:  # one open file for both: an erasure swapping in a new file meanwhile changes neither
            read = _read(path, f)
            first = start if read.stamp[0] == inode else 0
            if first >= len(read.starts):
                return read.stamp[0], []
            f.seek(read.starts[first])
            lines, _ = _complete_lines(f.read(read.offset - read.starts[first]))
            numbers = read.numbers[first:]
    return read.stamp[0], list(zip(numbers, _records(lines), strict=True))


def _read(path: Path, f: BinaryIO | None = None) -> _Read:
    """This process's reading of a log (`f`: the caller's open file of it), brought up to date: only what was
    appended since it last read is parsed (a log rewritten by an erasure, a new inode, from its start); a torn
    last line waits for its end. The caller holds `_read_lock`."""
    if f is None:
        try:
            with path.open("rb") as opened:
                return _read(path, opened)
        except FileNotFoundError:
            return _Read((0, 0, 0))
    st = os.fstat(f.fileno())
    read = _reads.get(path)
    if read is None or read.stamp[0] != st.st_ino or st.st_size < read.offset:
        read = _reads[path] = _Read((st.st_ino, 0, 0))
    if read.stamp != file_stamp(st):
        f.seek(read.offset)
        lines, used = _complete_lines(f.read(st.st_size - read.offset))
        at = read.offset
        for line in lines:
            read.lines += 1
            for record in _records([line]):
                read.starts.append(at)
                read.numbers.append(read.lines)
                if isinstance(event := record.get("event"), dict) and isinstance(event.get("event_id"), str):
                    read.ids.add(event["event_id"])
            at += len(line) + 1
        read.offset += used
        read.stamp = file_stamp(st)
    return read


Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


def folded_ids(s: Settings, connect: Connect) -> frozenset[str]:
    """The ids of the events folded into the warehouse, read again (`connect()`) only when its file changed."""
    stamp = file_stamp(s.warehouse.stat())
    cached = _folded.get(s.warehouse)
    if cached is None or cached[0] != stamp:
        with connect() as con:
            ids = con.execute("SELECT id FROM events_folded WHERE log = 'events'").fetchall() \
                if has_table(con, "events_folded") else []
        cached = _folded[s.warehouse] = (stamp, frozenset(r[0] for r in ids))
    return cached[1]


def fold(s: Settings, con: duckdb.DuckDBPyConnection) -> list[FoldReport]:
    """Fold the logged events and rejects not folded yet into the warehouse behind `con` (a writer's, not inside a
    transaction), in one transaction; one `ingest_log` entry per table touched. Returns one report per table.
    An older c360's warehouse is upgraded first (`ingest.upgrade`), so `c360 ingest` alone brings it up to date."""
    upgrade(con)
    if not folder(s).is_dir():  # no event was ever logged: nothing to fold, nothing to create
        return []
    ensure_schema(con)
    con.execute(FOLDED_DDL)
    with _locked(s):
        events, rejects = read_log(log_path(s)), read_log(rejects_path(s))
    done = {(str(r[0]), str(r[1])) for r in con.execute("SELECT log, id FROM events_folded").fetchall()}
    events = [(n, r) for n, r in events if ("events", r["event"]["event_id"]) not in done]
    rejects = [(n, r) for n, r in rejects if ("rejects", r["reject_id"]) not in done]
    tables = dict.fromkeys([_kind(r["event"]).table for _, r in events] + [_reject_table(r) for _, r in rejects])
    con.begin()
    try:
        reports = [_fold_table(s, con, t, [e for e in events if _kind(e[1]["event"]).table == t],
                               [r for r in rejects if _reject_table(r[1]) == t]) for t in tables]
        con.commit()
    except BaseException:
        con.rollback()
        raise
    _compact(s, done | {("events", r["event"]["event_id"]) for _, r in events}
             | {("rejects", r["reject_id"]) for _, r in rejects})
    return reports


def _compact(s: Settings, folded: set[tuple[str, str]]) -> None:
    """Take what the warehouse holds now out of the logs, so that they hold what is still to fold, not every event
    ever received (a copy of the warehouse's personal data, read whole by every process that starts): the folded
    events' ids go to `folded.jsonl` first (an id folded is still a duplicate when sent again), then each log is
    swapped for one without the folded records, under the lock appends take. A crash in between leaves records the
    next fold skips and takes out."""
    with _locked(s):
        events = read_log(log_path(s))
        gone = [r["event"]["event_id"] for _, r in events if ("events", r["event"]["event_id"]) in folded]
        if gone:
            _append(folded_path(s), [{"event": {"event_id": i}} for i in gone])
        for path, records, key in ((log_path(s), events, lambda r: ("events", r["event"]["event_id"])),
                                   (rejects_path(s), read_log(rejects_path(s)), lambda r: ("rejects", r["reject_id"]))):
            kept = [r for _, r in records if key(r) not in folded]
            if len(kept) < len(records):
                _rewrite(path, kept)


def _reject_table(record: dict[str, Any]) -> str:
    event = record["event"]
    kind = EVENTS_BY_KIND.get(str(event.get("kind"))) if isinstance(event, dict) else None
    return kind.table if kind else NO_TABLE


def _fold_table(s: Settings, con: duckdb.DuckDBPyConnection, table_id: str, events: list[tuple[int, dict]],
                rejects: list[tuple[int, dict]]) -> FoldReport:
    ingest_id = int(con.execute("SELECT coalesce(max(ingest_id), 0) + 1 FROM ingest_log").fetchone()[0])  # type: ignore[index]
    report = FoldReport(table_id, read=len(events) + len(rejects))
    if events:
        _fold_rows(con, contract.table(table_id), events, ingest_id, str(log_path(s).resolve()), report)
    if rejects:
        _quarantine(con, ingest_id, table_id, str(rejects_path(s).resolve()),
                    [(n, r["event"], [tuple(f.values()) for f in r["failures"]]) for n, r in rejects])
        report.quarantined += len(rejects)
    con.execute("INSERT INTO ingest_log VALUES (?, ?, ?, NULL, ?, ?, ?, ?)",
                [ingest_id, table_id, str(log_path(s).resolve()), report.read, report.accepted, report.quarantined,
                 datetime.now(UTC).replace(tzinfo=None)])
    folded = [("events", r["event"]["event_id"]) for _, r in events] + [("rejects", r["reject_id"]) for _, r in rejects]
    con.executemany("INSERT INTO events_folded VALUES (?, ?, ?, now()::TIMESTAMP)",
                    [[log, id_, ingest_id] for log, id_ in folded])
    return report


def _fold_rows(con: duckdb.DuckDBPyConnection, table: Table, events: list[tuple[int, dict]], ingest_id: int,
               file: str, report: FoldReport) -> None:
    """Add the events' rows to their table (`folded`), their problems to the quarantine."""
    result = folded(table, events, lambda keys: existing_keys(con, table, keys))
    if result.problems:
        by_line = dict(events)
        _quarantine(con, ingest_id, table.id, file,
                    [(n, by_line[n]["event"], f) for n, f in sorted(result.problems.items())])
    good, key = result.rows, table.key
    report.superseded, report.replaced = result.superseded, len(result.existing & set(good[key]))
    report.accepted, report.quarantined = len(good), len(result.problems)
    # an event's row is valid from the event's time
    at = to_datetime(pd.Series({n: r["event"]["at"] for n, r in events}, dtype=TEXT)).reindex(good.index)
    frame = good.assign(_file=file, _row=good.index.astype("int64"), _ingest_id=ingest_id, _at=at)
    con.register("_fold_rows", pyarrow.Table.from_pandas(frame, preserve_index=False))
    try:
        versions.place(con, table, "SELECT * FROM _fold_rows", since_always=False)
    finally:
        con.unregister("_fold_rows")


def existing_keys(con: duckdb.DuckDBPyConnection, table: Table, keys: list[str]) -> set[str]:
    """Which of `keys` the warehouse table behind `con` holds."""
    return {r[0] for r in con.execute(f"SELECT {q(table.key)} FROM {q(table.sql_name)} WHERE {q(table.key)} IN "
                                      "(SELECT unnest(?))", [keys]).fetchall()}


@dataclass
class Folded:
    """What folding a table's events makes of them: the rows written (typed, indexed by log line), the problems
    of the others by line (quarantined), how many a later event of the same row superseded, and the events' keys
    that the table held already (their rows are replaced)."""

    rows: pd.DataFrame
    problems: dict[int, list[Failure]]
    superseded: int
    existing: set[str]


def folded(table: Table, events: list[tuple[int, dict]], existing_of: Callable[[list[str]], set[str]]) -> Folded:
    """The rows `fold` writes for `events` ((line, record), in log order) of `table`, `existing_of(keys)` saying
    which of their keys the table holds already: an update kind's row replaces the row with its key (the last event
    of a key wins); any other kind's row whose key the table or an earlier event has goes to quarantine. `fold` and
    the live update (`c360.features.live`) both read events through this: a live feature is what the fold gives."""
    raw = _raw(table, [r["event"] for _, r in events], [n for n, _ in events])
    typed, failures = _parsed.parse(raw, table)  # checked at intake: a failure here means the contract changed since
    update = dict(zip(typed.index, (_kind(r["event"]).update for _, r in events), strict=True))
    key = table.key
    bad = {int(r) for r in failures["row"]}
    problems = {int(r.row): [(r.column, r.value, r.reason, r.rule)] for r in failures.itertuples()}
    existing = existing_of(typed[key].dropna().tolist())
    keys_before = set(existing)
    for line, value in typed[key].items():
        if line in bad:
            continue
        if not update[line] and value in keys_before:
            problems[int(line)] = [(key, value, f"duplicate key '{value}'", "duplicate")]
        keys_before.add(value)
    good = typed.drop(index=list(problems))
    last = ~good[key].duplicated(keep="last")
    return Folded(good[last], problems, int((~last).sum()), existing)


def _quarantine(con: duckdb.DuckDBPyConnection, ingest_id: int, table_id: str, file: str,
                rows: list[tuple[int, Any, list]]) -> None:
    """One quarantine row per failure of each (line, event, failures), as ingest quarantines a bad value."""
    key = contract.table(table_id).key if table_id != NO_TABLE else None
    records = [[ingest_id, table_id, file, line, column, None if value is None else str(value), why, rule,
                _text(event.get(key)) if key and isinstance(event, dict) else None, json.dumps(event)]
               for line, event, failures in rows for column, value, why, rule in failures]
    con.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)


# ---------------------------------------------------------------- the logs as a personal-data store


def _names(record: dict[str, Any], person: Person, wanted: set[str]) -> bool:
    """Whether a log record is the person's: an event of a customer erased whole, or one whose row carries one of
    their identifiers (key, reference, e-mail, phone); a reject too when it holds one of their values as is."""
    event = record.get("event")
    if isinstance(event, dict):
        if event.get("customer_id") in person.whole:
            return True
        if event.get("kind") in EVENTS_BY_KIND and not _envelope(event):
            table = contract.table(_kind(event).table)
            if any(i[0] in wanted for i in row_identifiers(table, _raw(table, [event], [0]))):
                return True
    text = json.dumps(event).lower()
    return any(json.dumps(v.lower()) in text for v in person.values())


class EventLogs:
    """`events/events.jsonl`, `events/rejects.jsonl` and `events/folded.jsonl` (`c360.core.personal.STORES`)."""

    @staticmethod
    def export(work: Work, person: Person) -> dict[str, list[dict[str, Any]]]:
        wanted = identifiers(person)
        return {path.name: [r for _, r in read_log(path) if _names(r, person, wanted)] for path in _logs(work.s)}

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        erased, wanted = Erased(), identifiers(person)
        with _locked(work.s):
            for path in _logs(work.s):
                records = read_log(path)
                kept = [r for _, r in records if not _names(r, person, wanted)]
                if len(kept) < len(records):
                    _rewrite(path, kept)
                    erased.rows += len(records) - len(kept)
                    erased.files.append(str(path.relative_to(work.s.home)))
        return erased


def _logs(s: Settings) -> tuple[Path, ...]:
    """The files of the store: an event id may carry a person's value (the ids folded out of the log too)."""
    return log_path(s), rejects_path(s), folded_path(s)


def _rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    """Swap in a new file holding `records`: the old one's bytes go with its inode (the lock is held; appenders
    open the log by name after taking it, and `_read` reads a new inode from its start)."""
    write_private(path, _lines(records))


def typed_rows(table: Table, events: Sequence[dict[str, Any]], index: Sequence[int]) -> pd.DataFrame:
    """The contract rows of valid events of one table, typed as ingest types them, indexed by `index`."""
    return _parsed.parse(_raw(table, events, index), table)[0]
