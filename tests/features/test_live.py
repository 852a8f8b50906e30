"""Live features (`c360.features.live`): for customers touched by events of several kinds, the features recomputed
from the warehouse and the unfolded events equal the batch's (`compute.build`) on the warehouse after the fold, at
the same as-of; and the live rows join the offline store without becoming a snapshot date."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from c360.core import connections, warehouse
from c360.core.personal import Person, Work
from c360.core.settings import Settings
from c360.features import compute, event_log, live, live_identity, store
from c360.features.privacy_stores import Snapshots


def _plain(value: Any) -> Any:
    """A warehouse value as an event carries it (JSON)."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "isoformat"):
        return pd.Timestamp(value).isoformat()
    return value.item() if hasattr(value, "item") else value


def not_in(ids: list[str]) -> str:
    return "(" + ", ".join(f"'{i}'" for i in ids) + ")"


def row(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    found = con.execute(sql).df()
    if found.empty:
        pytest.skip(f"the test company has no row for: {sql}")
    return {k: _plain(v) for k, v in found.iloc[0].to_dict().items()}


def event(kind: str, event_id: str, at: pd.Timestamp, values: dict[str, Any], **more: Any) -> dict[str, Any]:
    fields = {k: v for k, v in (values | more).items() if v is not None and not k.startswith("_")}
    return {**fields, "event_id": event_id, "kind": kind, "at": at.isoformat()}


TICKET = "support_tickets t JOIN identity_crosswalk x ON x.record_id = 'support/tickets:' || t.ticket_id"


def sample_events(con: duckdb.DuckDBPyConnection, at: pd.Timestamp) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Events of several kinds for five different customers of the warehouse: (events, kind → customer)."""
    open_ticket = row(con, f"SELECT x.customer_id AS _customer, t.* FROM {TICKET} WHERE t.closed_at IS NULL "
                           "ORDER BY t.ticket_id LIMIT 1")
    taken = [open_ticket["_customer"]]
    payment = row(con, "SELECT x.customer_id AS _customer, p.* FROM billing_payments p JOIN billing_invoices i "
                       "USING (invoice_id) JOIN identity_crosswalk x ON x.record_id = 'billing/customers:' || "
                       f"i.billing_account_id WHERE x.customer_id NOT IN {not_in(taken)} ORDER BY p.payment_id "
                       "LIMIT 1")
    taken.append(payment["_customer"])
    user = row(con, "SELECT x.customer_id AS _customer, u.user_id FROM product_users u JOIN identity_crosswalk x ON "
                    f"x.record_id = 'product/users:' || u.user_id WHERE x.customer_id NOT IN {not_in(taken)} "
                    "ORDER BY u.user_id LIMIT 1")
    taken.append(user["_customer"])
    others = [r[0] for r in con.execute(f"SELECT customer_id FROM identity_customers WHERE customer_id NOT IN "
                                        f"{not_in(taken)} ORDER BY customer_id LIMIT 2").fetchall()]
    nps = row(con, "SELECT * FROM feedback_nps ORDER BY response_id LIMIT 1")
    events = [
        event("ticket_opened", "live-1", at - pd.Timedelta(hours=5), open_ticket, _customer=None,
              ticket_id="LIVE-T1", severity="high", status="open", closed_at=None, satisfaction=None,
              opened_at=None, requester_name=None, requester_email=None, requester_phone=None, company=None,
              customer_id=others[0]),
        event("ticket_closed", "live-2", at - pd.Timedelta(hours=4), open_ticket, satisfaction=2, closed_at=None),
        event("payment_failed", "live-3", at - pd.Timedelta(hours=3), payment, payment_id="LIVE-P1",
              failure_code=None),
        event("login", "live-4", at - pd.Timedelta(hours=2), {"user_id": user["user_id"]}),
        event("nps_answered", "live-5", at - pd.Timedelta(hours=1), nps, response_id="LIVE-N1", score=2,
              responded_at=None, customer_id=others[1]),
    ]
    for e in events:
        e.pop("_customer", None)
    # the new ticket again, in the second batch of `test_live_features_equal_the_batch_after_the_fold`: an event of
    # the process's pending rows is replaced there, not added to
    opened = {k: v for k, v in events[0].items() if k not in ("event_id", "kind", "at")}
    channel = "chat" if opened.get("channel") != "chat" else "phone"  # the customer's latest interaction's
    events.append(event("ticket_updated", "live-6", at - pd.Timedelta(minutes=30), opened, channel=channel,
                        opened_at=events[0]["at"]))
    # an earlier login of the same user, in the first batch: that customer's pending rows come from both reads
    events.append(event("login", "live-7", at - pd.Timedelta(hours=6), {"user_id": user["user_id"]}))
    return events, {"ticket_opened": others[0], "ticket_closed": open_ticket["_customer"],
                    "payment_failed": payment["_customer"], "login": user["_customer"], "nps_answered": others[1]}


@pytest.fixture
def s(home_over_resolved) -> Settings:
    return home_over_resolved("live")


def features(frame: pd.DataFrame, customers: list[str]) -> pd.DataFrame:
    return frame[frame["customer_id"].isin(customers)].sort_values("customer_id").reset_index(drop=True)


def test_live_features_equal_the_batch_after_the_fold(s: Settings) -> None:
    with warehouse.connect(s, read_only=True) as con:
        at = warehouse.data_end(con)
        events, by_kind = sample_events(con, at)
        customers = sorted(set(by_kind.values()))
        before = features(compute.build(con, at), customers)
    with warehouse.connect(s, read_only=True) as con:  # in two batches: the second read after the first's rows
        for part in (events[::2], events[1::2]):
            answer = event_log.accept(s, part)
            assert answer["accepted"] == len(part), answer["rejected"]
            live_identity.place(s, con, part)  # as the live update does: a new ticket joins the customer it names
            recomputed = features(live.recompute(s, con, customers, at), customers)
    assert not _rows_kept(), "a round's rows stay in the feature SQL's connection"
    with warehouse.connect(s) as con:
        event_log.fold(s, con)
        # what `c360 resolve` would link: the new ticket and NPS answer to the customers the events named
        con.register("crosswalk", live_identity.pending(s)[0])
        con.execute("INSERT INTO identity_crosswalk (record_id, customer_id) SELECT record_id, customer_id "
                    "FROM crosswalk")
        batch = features(compute.build(con, at), customers)
    pd.testing.assert_frame_equal(recomputed, batch, check_dtype=False)
    changed = {kind: before.set_index("customer_id").loc[c].compare(recomputed.set_index("customer_id").loc[c])
               for kind, c in by_kind.items()}
    assert changed["ticket_opened"].loc["open_high_severity_tickets"].tolist() == [0, 1]
    assert "flag_open_high_severity" in changed["ticket_opened"].index
    assert "open_tickets" in changed["ticket_closed"].index
    assert {"payment_failures_90d", "flag_payment_failed"} <= set(changed["payment_failed"].index)
    assert "days_since_last_activity" in changed["login"].index or "sessions_30d" in changed["login"].index
    assert changed["nps_answered"].loc["nps_last"].tolist()[1] == 2


def _rows_kept() -> dict[str, int]:
    """The tables of this thread's live feature connection (the rows registered as views) that hold rows."""
    con = connections.local(live.FEATURES_CONNECTION)
    names = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
    assert names, "the live features ran elsewhere"
    counts = {name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}
    return {name: n for name, n in counts.items() if n}


def test_each_customer_at_its_own_as_of_equals_the_batch_at_it(s: Settings) -> None:
    with warehouse.connect(s, read_only=True) as con:
        end = warehouse.data_end(con)
        customers = [r[0] for r in con.execute("SELECT customer_id FROM identity_customers ORDER BY customer_id "
                                               "LIMIT 6").fetchall()]
        # as-ofs hours, days and months apart: windows and day counts cross boundaries between them
        as_of = {c: end - pd.Timedelta(days=37 * i, hours=5 * i, microseconds=i) for i, c in enumerate(customers)}
        each = features(live.recompute_each(s, con, as_of), customers)
        one_by_one = pd.concat([features(compute.build(con, t), [c]) for c, t in as_of.items()])
    assert len(each) >= 4 and each["as_of"].nunique() == len(each)
    pd.testing.assert_frame_equal(each, features(one_by_one, customers), check_dtype=False)


def test_live_rows_join_the_history_not_the_snapshot_dates(s: Settings) -> None:
    with warehouse.connect(s, read_only=True) as con:
        at = warehouse.data_end(con)
        store.write_snapshot(s, compute.build(con, at - pd.Timedelta(days=7)))
        customer = con.execute("SELECT min(customer_id) FROM identity_customers").fetchone()[0]  # type: ignore[index]
        path = live.write_history(s, live.recompute(s, con, [customer], at))
    assert path is not None and path.name.startswith("live-")
    assert store.snapshot_dates(s) == [at - pd.Timedelta(days=7)]
    assert store.history(s, customer)["as_of"].tolist() == [at - pd.Timedelta(days=7), at]


def test_a_fold_takes_its_events_out_of_the_process_index(s: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once folded, events leave this process's index of the log by customer and its map of where events were
    placed: a server would otherwise hold every event it ever saw."""
    monkeypatch.setattr(live, "_placed", {})
    monkeypatch.setattr(live, "_logs", {})
    with warehouse.connect(s, read_only=True) as con:
        events, by_kind = sample_events(con, warehouse.data_end(con))
        assert event_log.accept(s, events)["accepted"] == len(events)
        live.remember(events, live_identity.place(s, con, events))

    def listed() -> list[str]:
        return [e["event_id"] for e in live.events_of(s, by_kind["ticket_opened"],
                                                      lambda: warehouse.connect(s, read_only=True))]

    assert listed() == ["live-6", "live-1"] and set(live._placed) == {e["event_id"] for e in events}
    with warehouse.connect(s) as con:
        event_log.fold(s, con)
    assert listed() == []
    assert live._logs[event_log.log_path(s)].by_customer == {} and live._placed == {}


def test_live_files_are_merged_and_their_sources_deleted_after_the_grace(s: Settings) -> None:
    """Live files of a level merge into one of the next once 3 are ready (`compact`: 64 by default); a merged
    file's sources stay until the grace has passed, the customer's history distinct meanwhile, and it is merged
    again only once they are gone: no row is lost or merged twice. An erasure removes the rows from every file."""
    with warehouse.connect(s, read_only=True) as con:
        at = warehouse.data_end(con)
        customer = con.execute("SELECT min(customer_id) FROM identity_customers").fetchone()[0]  # type: ignore[index]
        rounds = [live.recompute(s, con, [customer], at + pd.Timedelta(minutes=i)) for i in range(9)]

    def files(level: int) -> list[Path]:
        return sorted(p for p in s.snapshots.glob(live.LIVE_GLOB) if live._level(p) == level)

    for first in (0, 3, 6):
        for features_ in rounds[first:first + 3]:
            live.write_history(s, features_)  # below the default 64 files: no merge
        assert len(live.compact(s, merge_files=3, grace=0)) == 1  # the last three files; the earlier ones deleted
    before = store.history(s, customer)
    assert len(files(0)) == 3 and len(files(1)) == 3 and len(before) >= len(rounds)
    assert live.compact(s, merge_files=3, grace=3600) == []  # the newest level-1 file's sources are still there
    assert live.compact(s, merge_files=3, grace=0) == files(2) and files(0) == []
    assert pq.read_table(files(2)[0]).num_rows == len(rounds)
    pd.testing.assert_frame_equal(store.history(s, customer), before)  # the level-1 files are in their grace
    with warehouse.connect(s, read_only=True) as con:
        person = Person("customer_id", (customer,), (customer,), {}, (), ())
        assert Snapshots.erase(Work(s, con), person).rows == len(before) + len(rounds)  # levels 1 and 2
    assert store.history(s, customer).empty


def test_a_merge_due_runs_beside_the_round_that_found_it(s: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`write_history` returns while the merge it found due waits, in a thread of its own, which then merges the
    files: the round's events do not wait for it."""
    with warehouse.connect(s, read_only=True) as con:
        at = warehouse.data_end(con)
        customer = con.execute("SELECT min(customer_id) FROM identity_customers").fetchone()[0]  # type: ignore[index]
        features_ = live.recompute(s, con, [customer], at)

    def merging() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == live.COMPACT_THREAD]

    for _ in range(live.MERGE_FILES - 1):
        live.write_history(s, features_)
    assert merging() == []  # one file short of a merge
    release, merge = threading.Event(), live._merge

    def held(*args: Any) -> Path:
        assert release.wait(30)
        return merge(*args)

    monkeypatch.setattr(live, "_merge", held)
    live.write_history(s, features_)
    [thread] = merging()
    assert thread.is_alive()
    release.set()
    thread.join(30)
    [merged] = [p for p in s.snapshots.glob(live.LIVE_GLOB) if live._level(p) == 1]
    assert pq.read_table(merged).num_rows == live.MERGE_FILES * len(features_)


def test_erasure_covers_the_live_rows(s: Settings) -> None:
    with warehouse.connect(s, read_only=True) as con:
        at = warehouse.data_end(con)
        customer = con.execute("SELECT min(customer_id) FROM identity_customers").fetchone()[0]  # type: ignore[index]
        path = live.write_history(s, live.recompute(s, con, [customer], at))
        person = Person("customer_id", (customer,), (customer,), {}, (), ())
        assert path is not None and len(Snapshots.export(Work(s, con), person)) == 1
        erased = Snapshots.erase(Work(s, con), person)
    assert erased.rows == 1 and store.history(s, customer).empty


def test_a_profile_lists_the_events_the_live_update_placed_in_any_process(s: Settings,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`events_of` takes each event's customer from identity.db, where `live_identity.place` recorded it: a process
    that placed nothing lists the events another placed, an event not placed yet waits (it is not placed by the
    read), and erasure removes the record."""
    with warehouse.connect(s, read_only=True) as con:
        events, by_kind = sample_events(con, warehouse.data_end(con))
        assert event_log.accept(s, events)["accepted"] == len(events)
        live_identity.place(s, con, events[:3])
    monkeypatch.setattr(live, "_placed", {})  # a process of its own: it placed nothing, indexed nothing
    monkeypatch.setattr(live, "_logs", {})

    def listed(kind: str) -> list[str]:
        return [e["event_id"] for e in live.events_of(s, by_kind[kind], lambda: warehouse.connect(s, read_only=True))]

    assert listed("ticket_opened") == ["live-1"] and listed("login") == []
    with warehouse.connect(s, read_only=True) as con:
        live_identity.place(s, con, events[3:])
    assert listed("login") == ["live-4", "live-7"]  # newest first
    customer = by_kind["ticket_opened"]
    with warehouse.connect(s, read_only=True) as con:
        person = Person("customer_id", (customer,), (customer,), {}, (), ())
        exported = live_identity.LiveIdentity.export(Work(s, con), person)
        assert {"event_id": "live-1", "customer_id": customer} in exported["placed_events"]
        assert live_identity.LiveIdentity.erase(Work(s, con), person).rows >= 1
    assert "live-1" not in live_identity.placed_of(s, ["live-1", "live-4"])


def test_an_index_takes_the_rows_of_its_values_whatever_their_width() -> None:
    """A round asks the index for values of any width: one wider than every indexed value is not in it (cast to the
    index's width, 'abcd' would be 'abc'), the others take their rows, each value's in their order."""
    rows = pa.table({"key": ["abc", "ab", "abc", "b", None], "n": [1, 2, 3, 4, 5]})
    index = live._Index.of(rows, "key")
    assert index.take(["abcd", "ab", "zzzzzz"])["n"].to_pylist() == [2]
    assert index.take(["abc", "b"])["n"].to_pylist() == [1, 3, 4]
    assert index.take([])["n"].to_pylist() == []


def test_warming_builds_what_a_round_reads(s: Settings, resolved: tuple[Path, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`warm` for no customer builds every index a round then reads (the round builds none) and loads live
    identity's known people; without it, the first round after a start or a fold built them itself."""
    monkeypatch.setattr(live, "_tables", {})
    monkeypatch.setattr(live_identity, "_known", {})
    s.identity_model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(resolved[0] / "model.json", s.identity_model)
    with warehouse.connect(s, read_only=True) as con:
        live.warm(s, con)
        built = set(live._tables[s.warehouse][1])
        assert len(built) > 10 and s.warehouse in live_identity._known
        events, _ = sample_events(con, warehouse.data_end(con))
        assert event_log.accept(s, events)["accepted"] == len(events)
        placed = live_identity.place(s, con, events)
        recomputed = live.recompute_each(s, con, dict.fromkeys(filter(None, placed), warehouse.data_end(con)))
    assert len(recomputed) == len(set(filter(None, placed))) and set(live._tables[s.warehouse][1]) == built
