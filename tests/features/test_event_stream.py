"""The stream consumer's logic (`c360.features.event_stream.consume`) over lists of messages, with the real handler
of `POST /events` (`c360.cli.events.handle`: `event_log.accept`, audited) and a commit callback that checks what
is on disk when it is called. A fresh home per test, no company."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from c360.cli.events import handle
from c360.core.settings import Settings
from c360.features import event_log
from c360.features.event_stream import Message, Offsets, consume, events_of


@pytest.fixture
def s(home: Path) -> Settings:
    return Settings(home=home)


def login(event_id: str, user_id: str = "U-1") -> dict[str, Any]:
    return {"event_id": event_id, "kind": "login", "at": "2025-03-02T08:00:00Z", "user_id": user_id}


def message(offset: int, value: Any, partition: int = 0) -> Message:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Message("events", partition, offset, raw)


def logged(s: Settings) -> list[str]:
    path = event_log.log_path(s)
    return [json.loads(line)["event"]["event_id"] for line in path.read_text().splitlines()] if path.exists() else []


class Commits:
    """The commit callback: records each commit with the event ids on disk at that moment."""

    def __init__(self, s: Settings) -> None:
        self.s, self.seen = s, []

    def __call__(self, offsets: Offsets) -> None:
        self.seen.append((offsets, logged(self.s)))


def run(s: Settings, messages: list[Message | None], **options: Any) -> tuple[Any, Commits]:
    commits = Commits(s)
    totals = consume(messages, lambda events: handle(s, "c360 events consume", events), commits, **options)
    return totals, commits


def test_batches_are_committed_after_they_are_durable_and_bad_messages_go_to_the_quarantine(s: Settings) -> None:
    messages = [message(0, login("a")), message(1, b"{not json"), message(2, {"events": [login("b"), login("c")]}),
                message(3, [login("d"), {**login("e"), "at": "yesterday"}]), None, message(4, login("f"))]
    totals, commits = run(s, messages, batch=3)
    # a batch when 3 events are pending (after message 2: a, the unreadable one, b, c), at the idle gap, at the end
    assert [(offsets, ids) for offsets, ids in commits.seen] == [
        ({("events", 0): 3}, ["a", "b", "c"]), ({("events", 0): 4}, ["a", "b", "c", "d"]),
        ({("events", 0): 5}, ["a", "b", "c", "d", "f"])]
    assert (totals.messages, totals.events, totals.batches, totals.accepted, totals.rejected) == (5, 7, 3, 5, 2)
    assert [(r["offset"], r["reason"]) for r in totals.first_rejected] == [
        (1, "event: not valid JSON"), (3, "at: not a valid datetime (ISO 8601)")]
    rejects = [json.loads(line) for line in event_log.rejects_path(s).read_text().splitlines()]
    assert rejects[0]["event"] == "{not json" and rejects[0]["failures"][0]["reason"] == "not valid JSON"


def test_a_redelivered_batch_is_acknowledged_and_ignored(s: Settings) -> None:
    messages = [message(i, login(f"e{i}")) for i in range(4)]
    run(s, messages)
    again, commits = run(s, messages[2:])  # the consumer died before its commit: the broker sends them again
    assert (again.accepted, again.duplicates) == (0, 2) and commits.seen[0][0] == {("events", 0): 4}
    assert logged(s) == ["e0", "e1", "e2", "e3"]


def test_offsets_are_committed_per_partition(s: Settings) -> None:
    messages = [message(7, login("a"), partition=0), message(3, login("b"), partition=1),
                message(8, login("c"), partition=0)]
    totals, commits = run(s, messages)
    assert commits.seen[0][0] == {("events", 0): 9, ("events", 1): 4}
    assert totals.committed == {"events/0": 9, "events/1": 4}


def test_stopping_hands_over_the_pending_batch_and_reads_no_more(s: Settings) -> None:
    messages = iter([message(0, login("a")), message(1, login("b")), message(2, login("c"))])
    stop_after = {"read": 0}

    def stopping() -> bool:
        stop_after["read"] += 1
        return stop_after["read"] >= 2

    totals, commits = run(s, messages, stopping=stopping)
    assert totals.messages == 2 and commits.seen == [({("events", 0): 2}, ["a", "b"])]
    assert next(messages).offset == 2  # left in the stream, for the next consumer
    limited, _ = run(s, [message(5, login("x")), message(6, login("y"))], max_messages=1)
    assert limited.messages == 1 and logged(s)[-1] == "x"


def test_a_handler_that_fails_commits_nothing(s: Settings) -> None:
    event_log.folder(s).parent.mkdir(parents=True, exist_ok=True)
    event_log.folder(s).write_text("a file where the log's folder should be")
    commits = Commits(s)
    with pytest.raises(OSError):
        consume([message(0, login("a"))], lambda events: handle(s, "c360 events consume", events), commits)
    assert commits.seen == []


def test_a_message_is_an_event_a_list_or_a_batch() -> None:
    assert events_of(b'{"event_id": "a", "kind": "login"}') == [{"event_id": "a", "kind": "login"}]
    assert events_of(b'[1, 2]') == [1, 2] and events_of(b'{"events": [3]}') == [3]
    assert events_of(b'{"kind": "login", "events": []}') == [{"kind": "login", "events": []}]  # an event, checked
    assert events_of(b"\xff\xfe") == [event_log.Unreadable("\ufffd\ufffd")] and events_of(None) == [""]
