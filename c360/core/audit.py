"""The audit trail: one append-only, hash-chained JSON-lines file of who touched which customer, and when.

Each record is `{"seq", "at", "key", "role", "action", "customers", "status", "prev", "hash"}`, where `hash` is the
SHA-256 of the record without it and `prev` the previous record's hash: editing or deleting a record breaks the
chain, and `verify` finds where. Records name customers by their c360 id only, never by a personal value.

Several processes append at once (the service's workers, the commands): each append takes the file's lock, so
the chain stays one line. A process remembers the last hash it saw and re-reads the file's tail only when another
process wrote since, which keeps an append at a few tens of microseconds on the serving path.

Retention (`purge`) drops records older than a date and writes the anchor (`audit.anchor`: the first kept
record's `seq` and `prev`), so a purge is told from a deletion.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from c360.core.at_rest import file_stamp, write_private
from c360.core.settings import Settings

GENESIS = "0" * 64
ALL = "*"  # `customers` of a batch command that reads every customer (`c360 score`)
_tail: dict[Path, tuple[tuple[int, int, int], int, str]] = {}  # file -> (inode, size, mtime), seq, hash last seen
_lock = threading.Lock()


def path(s: Settings) -> Path:
    return s.home / "audit" / "audit.jsonl"


def _anchor_path(s: Settings) -> Path:
    return path(s).with_suffix(".anchor")


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _last(fd: int, size: int) -> tuple[int, str]:
    """The last record's seq and hash, read from the file's tail."""
    start = max(0, size - 65536)
    tail = os.pread(fd, size - start, start).rstrip(b"\n")
    record = json.loads(tail.rsplit(b"\n", 1)[-1])
    return int(record["seq"]), str(record["hash"])


def append(s: Settings, *, key: str, role: str, action: str, customers: Sequence[str],
           status: int | str) -> None:
    """Append one record: `key`/`role` who asked, `action` the route or command, `customers` the ids touched."""
    file = path(s)
    with _lock:
        fd = _open(file)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            seen = _tail.get(file)
            if seen and seen[0] == file_stamp(st):
                seq, prev = seen[1], seen[2]
            else:
                seq, prev = _last(fd, st.st_size) if st.st_size else _anchor(s)
            at = datetime.now(UTC).isoformat(timespec="milliseconds")
            record: dict[str, Any] = {"seq": seq + 1, "at": at, "key": key, "role": role, "action": action,
                                      "customers": list(customers), "status": status, "prev": prev}
            record["hash"] = _digest(record)
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
            os.write(fd, line)
            _tail[file] = (file_stamp(os.fstat(fd)), record["seq"], record["hash"])
        finally:
            os.close(fd)  # closing releases the lock


def _open(file: Path) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        return os.open(file, flags, 0o600)
    except FileNotFoundError:  # the home's first record: its folder is made here, not checked on every append
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(file, flags, 0o600)


def _anchor(s: Settings) -> tuple[int, str]:
    """Where the chain starts: the genesis, or the first record kept by the last purge."""
    anchor = _anchor_path(s)
    if not anchor.is_file():
        return 0, GENESIS
    value = json.loads(anchor.read_text())
    return int(value["seq"]) - 1, str(value["prev"])


def _lines(s: Settings) -> Iterator[tuple[int, bytes]]:
    file = path(s)
    if not file.is_file():
        return
    with file.open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        yield from enumerate(f.read().splitlines(), start=1)


def records(s: Settings, *, customer: str | None = None, key: str | None = None,
            since: datetime | None = None) -> list[dict[str, Any]]:
    """The records about `customer` (batch reads of every customer included), by `key`, at or after `since` (all
    of them by default), oldest first."""
    out = []
    for _, line in _lines(s):
        record = json.loads(line)
        if customer is not None and not about(record, {customer}):
            continue
        if key is not None and record["key"] != key:
            continue
        if since is not None and datetime.fromisoformat(record["at"]) < since:
            continue
        out.append(record)
    return out


def about(record: dict[str, Any], customers: set[str]) -> bool:
    """Whether the record touched one of `customers` (a batch over every customer touched them all)."""
    return ALL in record["customers"] or not customers.isdisjoint(record["customers"])


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    problem: str | None = None


def verify(s: Settings) -> Verdict:
    """Check the whole chain: every record's hash, and each record's link to the one before."""
    seq, prev = _anchor(s)
    count = 0
    for number, line in _lines(s):
        try:
            record = json.loads(line)
        except ValueError:
            return Verdict(False, count, f"line {number} is not a JSON record")
        if record.get("hash") != _digest(record):
            return Verdict(False, count, f"line {number} (seq {record.get('seq')}) was changed: its hash differs")
        if record.get("prev") != prev or record.get("seq") != seq + 1:
            return Verdict(False, count, f"line {number} (seq {record.get('seq')}) does not follow seq {seq}: "
                                         "a record before it was removed or changed")
        seq, prev, count = record["seq"], record["hash"], count + 1
    return Verdict(True, count)


def purge(s: Settings, before: datetime) -> int:
    """Drop the records older than `before` (retention); returns how many. The chain stays verifiable."""
    file = path(s)
    if not file.is_file():
        return 0
    with file.open("r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = f.read().splitlines(keepends=True)
        n = 0  # records are appended in time order: the old ones are a prefix
        while n < len(lines) and datetime.fromisoformat(json.loads(lines[n])["at"]) < before:
            n += 1
        if n == 0:
            return 0
        old, kept = lines[:n], lines[n:]
        if kept:
            first = json.loads(kept[0])
            anchor = {"seq": first["seq"], "prev": first["prev"]}
        else:
            last = json.loads(old[-1])
            anchor = {"seq": last["seq"] + 1, "prev": last["hash"]}
        write_private(_anchor_path(s), json.dumps(anchor).encode())
        f.seek(0)
        f.write(b"".join(kept))
        f.truncate()
        os.fsync(f.fileno())
    with _lock:
        _tail.pop(file, None)
    return len(old)

