"""Identity, incrementally, on the resolved 3,000-customer company: events of known and new people, the next
resolve keeping or merging provisional customers, two processes at once, erasure."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from c360.core import personal, warehouse
from c360.core.settings import Settings
from c360.features import event_log, identity, live_identity, privacy
from c360.features.live_identity import Ledger
from c360.serving import errors

NEW_EMAIL = "zebulon.quixote@newco-unknown.test"


@pytest.fixture
def s(home_over_resolved, resolved: tuple[Path, Path]) -> Settings:
    s = home_over_resolved("live")
    s.identity_model.parent.mkdir(parents=True)
    shutil.copy(resolved[0] / "model.json", s.identity_model)
    return s


def ticket(event_id: str, ticket_id: str, name: str, email: str) -> dict[str, Any]:
    return {"event_id": event_id, "kind": "ticket_opened", "at": "2030-01-02T10:00:00", "ticket_id": ticket_id,
            "requester_name": name, "requester_email": email, "channel": "email", "topic": "billing",
            "severity": "high", "status": "open"}


def place(s: Settings, events: list[dict[str, Any]]) -> list[live_identity.Placed]:
    with warehouse.connect(s, read_only=True) as con:
        return live_identity.placements(s, con, events)


def a_contact(s: Settings) -> tuple[str, str, str]:
    """(name, e-mail, customer) of a CRM contact whose e-mail only one customer has."""
    with warehouse.connect(s, read_only=True) as con:
        return con.execute("""SELECT c.first_name || ' ' || c.last_name, c.email, any_value(x.customer_id)
            FROM crm_contacts c JOIN identity_crosswalk x ON x.record_id = 'crm/contacts:' || c.contact_id
            WHERE c.email IS NOT NULL GROUP BY ALL HAVING count(DISTINCT x.customer_id) = 1
            ORDER BY 2 LIMIT 1""").fetchone()


def test_a_new_ticket_of_a_known_contact_lands_on_their_customer(s: Settings) -> None:
    name, email, customer = a_contact(s)
    started = time.perf_counter()
    placed = place(s, [ticket("e1", "T-LIVE-1", name, email.upper())])
    assert [p.customer_id for p in placed] == [customer]
    assert placed[0].how == "rule: same e-mail"
    # the next event of the same ticket maps directly, without matching
    again = place(s, [{**ticket("e2", "T-LIVE-1", name, email), "kind": "ticket_closed"}])
    assert again[0].customer_id == customer and again[0].how == "live crosswalk"
    print(f"first placement (linker load included) and a known record: {time.perf_counter() - started:.2f} s")


def test_a_typo_in_the_e_mail_is_matched_by_splink(s: Settings) -> None:
    name, email, customer = a_contact(s)
    local, domain = email.split("@")
    placed = place(s, [ticket("e1", "T-LIVE-2", name, f"{local}x@{domain}")])
    started = time.perf_counter()
    timed = place(s, [ticket("e2", "T-LIVE-3", name, f"{local}y@{domain}")])
    print(f"one record matched by splink: {1000 * (time.perf_counter() - started):.0f} ms")
    assert placed[0].how == "model" and placed[0].customer_id == customer
    assert timed[0].customer_id == customer


def test_splink_scores_only_the_records_the_same_e_mail_rule_does_not_place(s: Settings,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    name, email, customer = a_contact(s)
    local, domain = email.split("@")
    batch = [ticket("e1", "T-LIVE-4", name, email), ticket("e2", "T-LIVE-5", "Zebulon Quixote", NEW_EMAIL),
             ticket("e3", "T-LIVE-6", "Zeb Quixote", NEW_EMAIL), ticket("e4", "T-LIVE-7", name, f"{local}x@{domain}")]
    scored: list[list[str]] = []
    real = live_identity._scores

    def recording(known: Any, new: pd.DataFrame, *more: Any) -> pd.DataFrame:
        scored.append(new["record_id"].tolist())
        return real(known, new, *more)

    monkeypatch.setattr(live_identity, "_scores", recording)  # the real scoring, its records noted
    placed = place(s, batch)
    assert scored == [["support/tickets:T-LIVE-5", "support/tickets:T-LIVE-7"]]
    assert [p.how for p in placed] == ["rule: same e-mail", "unlinked", "rule: same e-mail", "model"]
    assert placed[0].customer_id == placed[3].customer_id == customer
    assert placed[2].customer_id == placed[1].customer_id != customer


def test_events_name_customers_by_id_and_by_their_silo_keys(s: Settings) -> None:
    with warehouse.connect(s, read_only=True) as con:
        user, by_user = con.execute("SELECT split_part(record_id, ':', 2), customer_id FROM identity_crosswalk "
                                    "WHERE source = 'product/users' ORDER BY 1 LIMIT 1").fetchone()
        invoice, by_invoice = con.execute("""SELECT i.invoice_id, x.customer_id FROM billing_invoices i JOIN
            identity_crosswalk x ON x.record_id = 'billing/customers:' || i.billing_account_id
            ORDER BY 1 LIMIT 1""").fetchone()
    placed = place(s, [
        {"event_id": "a", "kind": "login", "at": "2030-01-01T00:00:00", "user_id": user},
        {"event_id": "b", "kind": "payment_failed", "at": "2030-01-01T00:00:00", "payment_id": "P-LIVE",
         "invoice_id": invoice, "amount": 10, "method": "card"},
        {"event_id": "c", "kind": "login", "at": "2030-01-01T00:00:00", "user_id": user, "customer_id": by_user},
        {"event_id": "d", "kind": "login", "at": "2030-01-01T00:00:00", "user_id": "U-NOBODY"},
        {"event_id": "e", "kind": "login", "at": "2030-01-01T00:00:00", "user_id": user, "customer_id": "C99999999"},
        {"event_id": "f", "kind": "campaign_launched", "at": "2030-01-01T00:00:00", "campaign_id": "CMP-LIVE",
         "name": "x", "channel": "email", "topic": "product_tips"},
    ])
    assert [p.customer_id for p in placed] == [by_user, by_invoice, by_user, None, None, None]
    assert "not known yet" in placed[3].how and "unknown customer id" in placed[4].how
    assert "company-wide" in placed[5].how


def test_a_new_person_gets_a_provisional_customer_that_the_next_resolve_keeps(s: Settings) -> None:
    events = [ticket("n1", "T-NEW-1", "Zebulon Quixote", NEW_EMAIL),
              {"event_id": "n2", "kind": "nps_answered", "at": "2030-01-03T10:00:00", "response_id": "R-NEW-1",
               "name": "Zebulon Quixote", "email": NEW_EMAIL, "score": 2}]
    with warehouse.connect(s, read_only=True) as con:
        highest = con.execute("SELECT max(customer_id) FROM identity_customers").fetchone()[0]
    placed = place(s, events)
    new = placed[0].customer_id
    assert new is not None and new > highest and placed[1].customer_id == new
    crosswalk, customers = live_identity.pending(s)
    assert set(crosswalk["record_id"]) == {"support/tickets:T-NEW-1", "feedback/nps:R-NEW-1"}
    assert list(customers.columns) == list(live_identity.CUSTOMER_COLUMNS)
    assert customers.set_index("customer_id").loc[new, "emails"] == [NEW_EMAIL]
    with warehouse.connect(s, read_only=True) as con:
        columns = con.execute("SELECT * FROM identity_crosswalk LIMIT 0").df().columns
    assert list(crosswalk.columns) == list(columns)

    assert event_log.accept(s, events)["accepted"] == 2
    with warehouse.connect(s) as con:
        event_log.fold(s, con)
        report = identity.resolve(con, s.identity_model, ledger=Ledger(s))
        kept = dict(con.execute("SELECT record_id, customer_id FROM identity_crosswalk WHERE record_id IN "
                                "('support/tickets:T-NEW-1', 'feedback/nps:R-NEW-1')").fetchall())
    assert kept == {"support/tickets:T-NEW-1": new, "feedback/nps:R-NEW-1": new}
    assert report.live == {"records": 2, "customers": 1, "events": 0}  # `placements` records no event
    assert all(len(frame) == 0 for frame in live_identity.pending(s))
    # the next new person is numbered past every id, provisional ones included
    assert place(s, [ticket("n3", "T-NEW-2", "Ottilie Brandywine", "ottilie@elsewhere-unknown.test")])[0] \
        .customer_id > new


def test_the_new_people_of_a_batch_take_the_next_numbers_in_turn(s: Settings) -> None:
    """Each new person of a batch gets an id of its own, their numbers following each other from the first free
    one; the next batch's new person numbers after them."""
    names = ["Aurelio Pendergast", "Bathsheba Quillfeather", "Cornelius Vantablack", "Dagny Oxenstierna"]
    events = [ticket(f"m{i}", f"T-MANY-{i}", name, f"{name.split()[0].lower()}@nowhere-{i}.test")
              for i, name in enumerate(names)]
    ids = [p.customer_id for p in [*place(s, events[:3]), *place(s, events[3:])]]
    assert all(ids)
    numbers = [int(str(c)[1:]) for c in ids]
    assert numbers == list(range(numbers[0], numbers[0] + len(names)))


def test_a_provisional_customer_merged_by_resolve_redirects_to_the_survivor(s: Settings) -> None:
    _, email, customer = a_contact(s)
    provisional = place(s, [ticket("m1", "T-MERGE", "Zebulon Quixote", NEW_EMAIL)])[0].customer_id
    event_log.accept(s, [ticket("m1", "T-MERGE", "Zebulon Quixote", NEW_EMAIL)])
    with warehouse.connect(s) as con:
        event_log.fold(s, con)
        # the company's CRM learns that this person is a contact of an existing account
        con.execute("""INSERT INTO crm_contacts SELECT * REPLACE ('CON-MERGE' AS contact_id, 'Zebulon' AS first_name,
            'Quixote' AS last_name, ? AS email) FROM crm_contacts WHERE email = ? LIMIT 1""", [NEW_EMAIL, email])
        identity.resolve(con, s.identity_model, ledger=Ledger(s))
        merged = con.execute("SELECT merged_into FROM identity_merges WHERE customer_id = ?",
                             [provisional]).fetchone()
    assert merged == (customer,)

    def reader() -> Any:
        return warehouse.connect(s, read_only=True)

    assert live_identity.merged_into(s, provisional, reader) == customer
    assert live_identity.merged_into(s, customer, reader) is None
    assert place(s, [{**ticket("m2", "T-X", "a", "b@c.test"), "customer_id": provisional}])[0].customer_id == customer

    app = FastAPI()
    errors.install(app)

    @app.get("/customers/{customer_id}/profile")
    def profile(customer_id: str) -> dict[str, str]:
        if (survivor := live_identity.merged_into(s, customer_id, reader)) is not None:
            raise errors.Moved(customer_id, survivor)
        return {"customer_id": customer_id}

    client = TestClient(app)
    moved = client.get(f"/customers/{provisional}/profile?details=true", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == f"/customers/{customer}/profile?details=true"
    assert moved.json()["merged_into"] == customer
    assert client.get(f"/customers/{provisional}/profile").json() == {"customer_id": customer}


def _place_in_process(home: str, event: dict[str, Any], out: Any) -> None:
    s = Settings(home=Path(home))
    out.put(place(s, [event])[0].customer_id)


def test_two_processes_placing_the_same_new_person_make_one_customer(s: Settings) -> None:
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    workers = [spawn.Process(target=_place_in_process,
                             args=(str(s.home), ticket(f"p{i}", f"T-RACE-{i}", "Zebulon Quixote", NEW_EMAIL), out))
               for i in range(2)]
    for w in workers:
        w.start()
    ids = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert ids[0] is not None and ids[0] == ids[1]
    assert len(live_identity.pending(s)[1]) == 1


def test_erasure_removes_the_person_from_identity_db(s: Settings) -> None:
    place(s, [ticket("x1", "T-ERASE", "Zebulon Quixote", NEW_EMAIL),
              ticket("x2", "T-KEEP", "Ottilie Brandywine", "ottilie@elsewhere-unknown.test")])
    path = Ledger(s).path
    assert personal.owner(s, path).name == "live_identity"
    assert NEW_EMAIL.encode() in path.read_bytes() + _wal(path)
    with warehouse.connect(s, read_only=True) as con:
        person = privacy.resolve(s, con, email=NEW_EMAIL)
        exported = live_identity.LiveIdentity.export(personal.Work(s, con), person)
    assert [r["record_id"] for r in exported["crosswalk"]] == ["support/tickets:T-ERASE"]
    report = privacy.erase(s, person)
    assert report["live_identity"].rows == 2  # the record, and the provisional customer left without records
    assert NEW_EMAIL.encode() not in path.read_bytes() + _wal(path)
    assert b"ottilie@elsewhere-unknown.test" in path.read_bytes() + _wal(path)
    (kept,) = live_identity.pending(s)[1]["customer_id"]
    with warehouse.connect(s, read_only=True) as con:  # a provisional customer is found by its id too
        by_id = privacy.resolve(s, con, customer_id=kept)
    assert by_id.found and privacy.erase(s, by_id)["live_identity"].rows >= 1
    assert b"ottilie@elsewhere-unknown.test" not in path.read_bytes() + _wal(path)
    assert live_identity.pending(s)[1].empty


def _wal(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_the_known_people_are_reloaded_after_a_resolve(s: Settings) -> None:
    place(s, [ticket("r1", "T-R1", "Zebulon Quixote", NEW_EMAIL)])
    before = live_identity._known[s.warehouse].stamp
    with duckdb.connect(str(s.warehouse)) as con:
        identity.resolve(con, s.identity_model)
    place(s, [ticket("r2", "T-R2", "Zebulon Quixote", NEW_EMAIL)])
    assert live_identity._known[s.warehouse].stamp != before


def test_splink_scores_the_same_pairs_as_its_own_predict_between_over_a_table_per_source(s: Settings) -> None:
    # New records like known people (the same names and companies, other e-mails and phones, some e-mails kept)
    with warehouse.connect(s, read_only=True) as con:
        known = live_identity._load(s, con)
    # and a second ticket of five of them: pairs within the new records too
    sampled = known.prepared.sample(40, random_state=0)
    new = pd.concat([sampled, sampled.head(5)], ignore_index=True)
    new["record_id"] = [f"support/tickets:T-BLOCK-{i}" for i in range(len(new))]
    new["source"] = "support/tickets"
    new.loc[new.index % 2 == 0, ["email", "email_local", "phone"]] = None
    empty = pd.DataFrame(columns=["record_id", "email"])
    assert known.blocks is not None
    assert 0 < len(known.blocks.candidates(new)) < len(known.prepared) / 10  # the blocks do narrow the search
    columns = ["record_id_l", "record_id_r"]
    blocked = live_identity._scores(known, new, new, empty).sort_values(columns, ignore_index=True)
    everyone = live_identity._scores(replace(known, blocks=None), new, new, empty)
    assert len(blocked) > len(new) / 2
    assert blocked["record_id_l"].isin(new["record_id"]).sum() >= 5
    assert blocked.equals(everyone.sort_values(columns, ignore_index=True))
    own = splinks_own_pairs(known, new).sort_values(columns, ignore_index=True)
    assert blocked[columns].equals(own[columns])
    assert blocked["match_probability"].to_numpy() == pytest.approx(own["match_probability"].to_numpy())


def splinks_own_pairs(known: Any, new: pd.DataFrame) -> pd.DataFrame:
    """splink's predict_between as its documentation calls it: the linker's own input tables (a table per source)
    against the new records, a table per source; pairs over 0.01, a record not paired with itself."""
    db_api = known.linker._db_api
    columns = [c for c in known.prepared.columns if c in new.columns]
    right = [db_api.register(frame.reindex(columns=columns), table_name=f"test_new_{i}", dataset_display_name=source)
             for i, (source, frame) in enumerate(new.groupby("source"))]
    left = [*known.linker._input_tables_dict.values(), *right]
    scored = known.linker.inference.predict_between(left, right, threshold_match_probability=0.01,
                                                    warning_mode="never")
    pairs = scored.as_pandas_dataframe()[["record_id_l", "record_id_r", "match_probability"]]
    return pairs[pairs["record_id_l"] != pairs["record_id_r"]]


def _open_from_threads(home: str, out: Any) -> None:
    """Eight threads opening identity.db, one in three to write, the others to read; their SQLite errors to `out`."""
    ledger = Ledger(Settings(home=Path(home)))
    errors: list[str] = []

    def work(thread: int) -> None:
        for i in range(150):
            try:
                if i % 3 == 0:
                    with ledger.writing() as db:
                        db.execute("INSERT INTO numbering (next) VALUES (?)", [thread * 1000 + i])
                else:
                    db = ledger.reading()
                    db.execute("SELECT count(*) FROM numbering").fetchall()
                    db.close()
            except sqlite3.Error as e:
                errors.append(f"{e.sqlite_errorname}: {e}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(errors)


def test_threads_of_two_processes_opening_identity_db_get_no_error(tmp_path: Path) -> None:
    """Two server processes of eight threads each open identity.db at once: none gets an I/O error (opening the
    file with a descriptor of its own, then closing it, dropped its process's locks under the other threads)."""
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    workers = [spawn.Process(target=_open_from_threads, args=(str(tmp_path / "home"), out)) for _ in range(2)]
    for w in workers:
        w.start()
    errors = [e for _ in workers for e in out.get(timeout=240)]
    for w in workers:
        w.join(timeout=30)
    assert errors == [], errors[:3]


def test_settling_forgets_where_the_folded_events_were_placed(s: Settings) -> None:
    """identity.db keeps where the live update placed each event (the profiles' live events read it) until the
    warehouse holds the event: a resolve's settling deletes the rows of the folded events, not the others'."""
    name, email, customer = a_contact(s)
    events = [ticket("f1", "T-FOLD-1", name, email), ticket("f2", "T-FOLD-2", name, email)]
    with warehouse.connect(s, read_only=True) as con:
        assert live_identity.place(s, con, events) == [customer, customer]
    assert live_identity.placed_of(s, ["f1", "f2"]) == {"f1": customer, "f2": customer}
    event_log.accept(s, events[:1])
    with warehouse.connect(s) as con:
        event_log.fold(s, con)
        assert Ledger(s).settle(con)["events"] == 1
    assert live_identity.placed_of(s, ["f1", "f2"]) == {"f2": customer}
