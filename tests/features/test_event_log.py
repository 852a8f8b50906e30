"""The event log (`c360.features.event_log`): a batch checked by the contract, made durable, deduplicated, folded
into the warehouse exactly once, and covered by erasure and suppression. A fresh home per test, no company."""

from __future__ import annotations

import json
import multiprocessing
import stat
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from c360.core import contract, personal, warehouse
from c360.core.personal import Person, Work
from c360.core.settings import Settings
from c360.features import event_log
from c360.features.ingest import ingest_file
from c360.features.privacy import suppress


@pytest.fixture
def s(home: Path) -> Settings:
    return Settings(home=home)


def ticket(event_id: str, ticket_id: str = "T-1", kind: str = "ticket_opened", at: str = "2025-03-01T10:00:00Z",
           **columns: Any) -> dict[str, Any]:
    return {"event_id": event_id, "kind": kind, "at": at, "ticket_id": ticket_id, "requester_email": "ann@example.com",
            "channel": "email", "topic": "bug", "severity": "high", "status": "open",
            "opened_at": "2025-03-01T10:00:00Z", **columns}


def login(event_id: str, user_id: str = "U-1") -> dict[str, Any]:
    return {"event_id": event_id, "kind": "login", "at": "2025-03-02T08:00:00+01:00", "user_id": user_id}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def folded(s: Settings) -> list[event_log.FoldReport]:
    with warehouse.connect(s) as con:
        return event_log.fold(s, con)


def query(s: Settings, sql: str) -> list[tuple]:
    with warehouse.connect(s, read_only=True) as con:
        return con.execute(sql).fetchall()


def test_a_malformed_event_is_rejected_with_its_reason_and_the_rest_accepted(s: Settings) -> None:
    bad = ticket("e2", "T-2", severity="catastrophic")
    answer = event_log.accept(s, [ticket("e1"), bad, login("e3"), "not an object", {"kind": "login"}])
    assert answer["accepted"] == 2 and answer["duplicates"] == 0
    rejected = {r["index"]: r for r in answer["rejected"]}
    assert set(rejected) == {1, 3, 4}
    assert rejected[1]["event_id"] == "e2" and rejected[1]["reason"].startswith("severity: not one of")
    assert rejected[3]["reason"] == "event: not a JSON object"
    assert "event_id: required" in rejected[4]["reason"] and "at: required" in rejected[4]["reason"]
    assert [r["event"]["event_id"] for r in lines(event_log.log_path(s))] == ["e1", "e3"]
    assert lines(event_log.rejects_path(s))[0]["event"] == bad
    for path in (event_log.log_path(s), event_log.rejects_path(s)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert personal.owner(s, path) is not None and personal.owner(s, path).name == "event_log"

    folded(s)
    quarantined = query(s, "SELECT table_id, \"column\", reason, key FROM quarantine ORDER BY table_id, \"column\"")
    assert ("support/tickets", "severity", rejected[1]["reason"].split(": ", 1)[1], "T-2") in quarantined
    assert {q[0] for q in quarantined} == {"support/tickets", "product/events", "events"}  # events: kind unknown
    assert query(s, "SELECT ticket_id, opened_at::VARCHAR FROM support_tickets") == [("T-1", "2025-03-01 10:00:00")]
    # `at` fills the kind's time column, in UTC; the kind sets its fixed columns
    assert query(s, "SELECT event_time::VARCHAR, event_type FROM product_events") == [("2025-03-02 07:00:00", "login")]


def test_the_same_event_twice_is_acknowledged_once(s: Settings) -> None:
    first = event_log.accept(s, [login("e1"), login("e1"), login("e2")])
    again = event_log.accept(s, [login("e1"), login("e3")])
    assert (first["accepted"], first["duplicates"]) == (2, 1)
    assert (again["accepted"], again["duplicates"]) == (1, 1)
    assert [r["event"]["event_id"] for r in lines(event_log.log_path(s))] == ["e1", "e2", "e3"]


def _accept_in_child(home: str, events: list[dict[str, Any]], out: Any) -> None:
    out.put(event_log.accept(Settings(home=Path(home)), events))


def test_another_process_sees_what_this_one_logged_and_the_other_way_round(s: Settings) -> None:
    event_log.accept(s, [login("e1")])
    fork = multiprocessing.get_context("fork")
    out = fork.Queue()
    child = fork.Process(target=_accept_in_child, args=(str(s.home), [login("e1"), login("e2")], out))
    child.start()
    child.join(60)
    assert (lambda a: (a["accepted"], a["duplicates"]))(out.get(timeout=5)) == (1, 1)
    assert event_log.accept(s, [login("e2")])["duplicates"] == 1


def test_a_torn_last_line_neither_breaks_the_log_nor_swallows_the_next_event(s: Settings) -> None:
    event_log.accept(s, [login("e1")])
    with event_log.log_path(s).open("ab") as f:
        f.write(b'{"received_at": "2025-01-01", "event": {"event_id": "e9"')  # a write cut short: never acknowledged
    event_log._reads.clear()  # as a process started after the crash
    assert event_log.accept(s, [login("e2")])["accepted"] == 1
    assert event_log.accept(s, [login("e2")])["duplicates"] == 1
    assert [r[0] for r in query_after_fold(s, "SELECT event_id FROM product_events ORDER BY 1")] == ["e1", "e2"]


def query_after_fold(s: Settings, sql: str) -> list[tuple]:
    folded(s)
    return query(s, sql)


def test_a_second_fold_adds_nothing(s: Settings) -> None:
    event_log.accept(s, [login("e1"), login("e2"), ticket("e3"), ticket("e4", severity="?")])
    first = folded(s)
    assert sum(r.accepted for r in first) == 3 and sum(r.quarantined for r in first) == 1
    counts = "SELECT (SELECT count(*) FROM product_events), (SELECT count(*) FROM support_tickets), " \
             "(SELECT count(*) FROM quarantine), (SELECT count(*) FROM ingest_log)"
    before = query(s, counts)
    assert before == [(2, 1, 1, 2)]
    assert folded(s) == []
    assert query(s, counts) == before
    event_log.accept(s, [login("e5")])
    assert [(r.table_id, r.accepted) for r in folded(s)] == [("product/events", 1)]
    assert query(s, "SELECT count(*) FROM product_events") == [(3,)]


def test_a_fold_takes_what_it_folded_out_of_the_logs_and_an_id_folded_stays_a_duplicate(
        s: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the warehouse commits them, the folded events and rejects leave the logs (their ids kept in
    folded.jsonl): an event appended while the fold ran stays for the next fold, the same event sent again after
    its fold is still a duplicate, and each event is folded once."""
    event_log.accept(s, [login("e1"), login("e2"), ticket("e3", severity="?")])
    compact = event_log._compact

    def appended_meanwhile(s: Settings, done: set[tuple[str, str]]) -> None:
        assert event_log.accept(s, [login("e4")])["accepted"] == 1  # after the fold read the log
        compact(s, done)

    monkeypatch.setattr(event_log, "_compact", appended_meanwhile)
    assert sum(r.accepted for r in folded(s)) == 2
    monkeypatch.setattr(event_log, "_compact", compact)
    assert [r["event"]["event_id"] for r in lines(event_log.log_path(s))] == ["e4"]
    assert lines(event_log.rejects_path(s)) == []
    assert lines(event_log.folded_path(s)) == [{"event": {"event_id": "e1"}}, {"event": {"event_id": "e2"}}]
    assert personal.owner(s, event_log.folded_path(s)).name == "event_log"

    again = event_log.accept(s, [login("e1"), login("e2"), login("e5")])
    assert (again["accepted"], again["duplicates"]) == (1, 2)
    event_log._reads.clear()  # a process started after the fold: the ids folded are read from the file
    assert event_log.accept(s, [login("e1"), login("e5")])["duplicates"] == 2
    folded(s)
    assert query(s, "SELECT event_id, count(*) FROM product_events GROUP BY 1 ORDER BY 1") == [
        ("e1", 1), ("e2", 1), ("e4", 1), ("e5", 1)]
    assert query(s, "SELECT count(*) FROM quarantine") == [(1,)]
    assert lines(event_log.log_path(s)) == []


def test_an_update_kind_replaces_the_row_with_its_key_and_an_insert_kind_does_not(s: Settings) -> None:
    event_log.accept(s, [ticket("e1")])
    folded(s)
    event_log.accept(s, [ticket("e2", kind="ticket_closed", at="2025-03-04T00:00:00Z"),
                         ticket("e3", severity="low")])  # a second ticket_opened of T-1: a duplicate key
    report = folded(s)[0]
    assert (report.accepted, report.replaced, report.quarantined) == (1, 1, 1)
    assert query(s, "SELECT status, closed_at::VARCHAR, severity FROM support_tickets") == \
        [("closed", "2025-03-04 00:00:00", "high")]
    assert query(s, "SELECT rule, key FROM quarantine") == [("duplicate", "T-1")]
    # each version valid from its event's time, the open one until the ticket closed
    assert query(s, "SELECT _valid_from::VARCHAR FROM support_tickets") == [("2025-03-04 00:00:00",)]
    assert query(s, "SELECT status, _valid_from::VARCHAR, _valid_to::VARCHAR FROM support_tickets__history") == \
        [("open", "2025-03-01 10:00:00", "2025-03-04 00:00:00")]


def test_a_snapshot_ends_a_row_a_live_event_added_only_when_taken_after_the_event(s: Settings, tmp_path: Path
                                                                                   ) -> None:
    event_log.accept(s, [ticket("e1")])  # at 2025-03-01 10:00
    folded(s)
    snapshot = tmp_path / "support" / "tickets.csv"  # a help desk export without T-1
    snapshot.parent.mkdir()
    snapshot.write_text("ticket_id,channel,topic,severity,status,opened_at\nT-2,email,bug,low,open,2025-01-01\n")
    for exported, left in ((datetime(2025, 2, 1), ["T-1", "T-2"]), (datetime(2025, 4, 1), ["T-2"])):
        with warehouse.connect(s) as con:
            ingest_file(con, contract.table("support/tickets"), snapshot, exported_at=exported)
            con.execute("DELETE FROM ingest_log WHERE table_id = 'support/tickets' AND sha256 IS NOT NULL")
        assert [r[0] for r in query(s, "SELECT ticket_id FROM support_tickets ORDER BY 1")] == left


def test_a_row_changed_twice_in_one_fold_counts_as_superseded(s: Settings) -> None:
    # an update event carries the whole row as it is now
    event_log.accept(s, [ticket("e1"), ticket("e2", kind="ticket_updated", severity="urgent"),
                         ticket("e3", kind="ticket_closed", at="2025-03-04T00:00:00Z", severity="urgent")])
    report = folded(s)[0]
    assert (report.read, report.accepted, report.superseded, report.quarantined) == (3, 1, 2, 0)
    assert report.read == report.accepted + report.superseded + report.quarantined
    assert query(s, "SELECT status, severity FROM support_tickets") == [("closed", "urgent")]


def test_erasure_removes_the_persons_events_and_suppression_drops_their_later_ones(s: Settings) -> None:
    mine = [ticket("e1"), ticket("e2", "T-2", requester_email="Ann+work@Example.com"), login("e3", "U-9"),
            ticket("e4", "T-4", severity="?")]
    theirs = [ticket("e5", "T-5", requester_email="bob@example.com"), login("e6", "U-1")]
    event_log.accept(s, mine + theirs)
    person = Person("email", ("C00000001",), (), {"product/users": ("U-9",)}, ("ann@example.com",), ())
    store = next(st for st in personal.STORES if st.name == "event_log")
    with warehouse.connect(s) as con:
        work = Work(s, con)
        exported = store.function("export")(work, person)
        erased = store.function("erase")(work, person)
    assert sorted(r["event"]["event_id"] for r in exported["events.jsonl"]) == ["e1", "e2", "e3"]
    assert erased.rows == 4
    assert [r["event"]["event_id"] for r in lines(event_log.log_path(s))] == ["e5", "e6"]
    assert lines(event_log.rejects_path(s)) == []
    text = event_log.log_path(s).read_text().lower()
    assert "ann@example.com" not in text and "ann+work@" not in text

    suppress(s, person)
    answer = event_log.accept(s, [ticket("e7", "T-7"), login("e8", "U-9"), login("e9", "U-2")])
    assert (answer["accepted"], answer["suppressed"]) == (1, 2)
    assert [r["event"]["event_id"] for r in lines(event_log.log_path(s))] == ["e5", "e6", "e9"]


def test_a_batch_over_the_limit_is_refused_whole(s: Settings) -> None:
    with pytest.raises(ValueError, match="at most 1,000"):
        event_log.accept(s, [login(f"e{i}") for i in range(event_log.MAX_BATCH + 1)])
    assert not event_log.log_path(s).exists()


def test_concurrent_batches_taken_together_are_answered_each_by_its_own_events(s: Settings) -> None:
    event_log.accept(s, [login("e0")])
    batches = [[login("e1"), ticket("e2", severity="catastrophic")],  # rejected at index 1 of its batch
               [login("e0"), login("e3")],  # e0: logged before
               [login("e3"), ticket("e4", "T-4")],  # e3: the batch before took it (arrival order)
               [{"kind": "login"}]]
    answers: dict[int, dict[str, Any]] = {}

    def send(n: int) -> None:
        answers[n] = event_log.accept(s, batches[n])

    senders = [threading.Thread(target=send, args=(n,)) for n in range(len(batches))]
    with event_log._thread_lock:  # the first round waits to append; the others queue behind it, in order
        for n, sender in enumerate(senders):
            sender.start()
            queued(lambda n=n: event_log._intake._round.locked() and len(event_log._intake._waiting) == n)
    for sender in senders:
        sender.join(30)
    assert [(a["accepted"], a["duplicates"], [r["index"] for r in a["rejected"]]) for a in map(answers.get, range(4))] \
        == [(1, 0, [1]), (1, 1, []), (1, 1, []), (0, 0, [0])]
    assert [r["event"]["event_id"] for r in lines(event_log.log_path(s))] == ["e0", "e1", "e3", "e4"]
    rejects = lines(event_log.rejects_path(s))
    assert [(r["index"], r["event"].get("event_id")) for r in rejects] == [(1, "e2"), (0, None)]


def queued(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "the batches never queued"
        time.sleep(0.005)
