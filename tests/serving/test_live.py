"""The live update against a real `bentoml serve` (two workers) over a copy of the served home: an event's effect
is in the profile when `POST /events` answers (features, flags, health, predictions scored live), a repeated event
changes nothing, a late event changes history and not the online value, a malformed event is rejected beside the
accepted ones and lands in the quarantine at the fold, and concurrent writers and readers get no error."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest

from c360.core import audit, warehouse
from c360.core.at_rest import file_stamp
from c360.core.settings import Settings
from c360.features import event_log, store
from c360.features import live as features_live
from c360.serving import live as serving_live
from c360.serving import online
from tests.serving.conftest import home_copy, running


class Live:
    def __init__(self, s: Settings, url: str, headers: dict[str, str], now: pd.Timestamp) -> None:
        self.s, self.url, self.headers, self.now = s, url, headers, now
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)

    def post(self, *events: dict[str, Any]) -> dict[str, Any]:
        answer = self.http.post("/events", json={"events": list(events)})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def profile(self, customer: str) -> dict[str, Any]:
        answer = self.http.get(f"/customers/{customer}/profile")
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def live(served: Settings, admin: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A copy of the served home (its registry applied again to point at the copy) served by `bentoml serve`."""
    root = tmp_path_factory.mktemp("live")
    with home_copy(served, root) as s:
        with warehouse.connect(s, read_only=True) as con:
            now = warehouse.data_end(con)
        with running(s, 2, 0, root) as url:
            yield Live(s, url, admin, now)


def customers(live: Live, n: int, skip: int = 0) -> list[str]:
    """`n` customers of the online store without an open high-severity ticket."""
    with warehouse.connect(live.s, read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT customer_id FROM identity_customers ORDER BY customer_id "
                                         "LIMIT 400 OFFSET ?", [skip]).fetchall()]
    calm = [c for c in ids if live.profile(c)["present"]["support"]["open_high_severity_tickets"] == 0]
    if len(calm) < n:
        pytest.skip("the served company has too few customers without an open high-severity ticket")
    return calm[:n]


def ticket(event_id: str, customer: str, at: pd.Timestamp, **more: Any) -> dict[str, Any]:
    return {"event_id": event_id, "kind": "ticket_opened", "at": at.isoformat(), "customer_id": customer,
            "ticket_id": f"T-{event_id}", "channel": "email", "topic": "bug", "severity": "high", "status": "open",
            **more}


def test_an_event_is_in_the_profile_when_the_post_answers(live: Live) -> None:
    warm, customer = customers(live, 2)
    live.post(ticket("warm-1", warm, live.now + pd.Timedelta(minutes=1)))  # the workers' first reads, not timed
    before = live.profile(customer)
    answer = live.post(ticket("hs-1", customer, live.now + pd.Timedelta(minutes=5)))
    after = live.profile(customer)  # read once, right after the answer: how long it takes is bench/events.py's
    assert answer["accepted"] == 1 and answer["live"] == {"updated": 1}
    support = after["present"]["support"]
    assert support["open_high_severity_tickets"] == before["present"]["support"]["open_high_severity_tickets"] + 1
    assert "open_high_severity" in [f["code"] for f in after["present"]["red_flags"]]
    assert "open_high_severity" not in [f["code"] for f in before["present"]["red_flags"]]
    assert after["present"]["health"]["health_score"] < before["present"]["health"]["health_score"]
    churn = after["future"]["churn"]["model"]
    assert churn["source"] == "live" and churn["scored_at"] > before["future"]["churn"]["model"]["scored_at"]
    assert after["past"]["live_events"][0] == {"event_id": "hs-1", "kind": "ticket_opened",
                                               "at": (live.now + pd.Timedelta(minutes=5)).isoformat()}
    assert customer in audit.records(live.s, customer=customer)[-1]["customers"]
    written = max(live.s.snapshots.glob("live-*.parquet"), key=lambda p: p.stat().st_mtime)
    assert written.stat().st_mode & 0o077 == 0, oct(written.stat().st_mode)  # owner-only, whichever process wrote it

    again = live.post(ticket("hs-1", customer, live.now + pd.Timedelta(minutes=5)))
    assert (again["accepted"], again["duplicates"], again["live"]["updated"]) == (0, 1, 0)
    unchanged = live.profile(customer)
    assert {k: unchanged[k] for k in ("past", "present", "future")} == {k: after[k] for k in ("past", "present",
                                                                                                 "future")}


def test_a_late_event_changes_history_not_the_online_value(live: Live) -> None:
    (customer,) = customers(live, 1, skip=100)
    live.post(ticket("late-new", customer, live.now + pd.Timedelta(hours=2)))
    current = live.profile(customer)
    late_at = live.now + pd.Timedelta(hours=1)
    answer = live.post(ticket("late-old", customer, late_at))
    assert answer["accepted"] == 1 and answer["live"]["updated"] == 0
    assert live.profile(customer)["present"] == current["present"]
    history = store.history(live.s, customer).set_index("as_of")
    assert history.loc[late_at + pd.Timedelta(microseconds=1), "open_high_severity_tickets"] >= 1


def test_a_malformed_event_is_rejected_and_the_rest_applied(live: Live) -> None:
    (customer,) = customers(live, 1, skip=200)
    bad = ticket("bad-1", customer, live.now + pd.Timedelta(minutes=9), severity="catastrophic")
    answer = live.post(bad, ticket("good-1", customer, live.now + pd.Timedelta(minutes=10)))
    assert answer["accepted"] == 1 and answer["live"]["updated"] == 1
    assert [(r["index"], r["event_id"]) for r in answer["rejected"]] == [(0, "bad-1")]
    assert answer["rejected"][0]["reason"].startswith("severity: not one of")
    assert live.profile(customer)["present"]["support"]["open_high_severity_tickets"] == 1
    with warehouse.connect(live.s) as con:
        event_log.fold(s=live.s, con=con)
        quarantined = con.execute('SELECT "column", reason FROM quarantine WHERE key = ?', ["T-bad-1"]).fetchall()
    assert quarantined and quarantined[0][0] == "severity"


def test_concurrent_writers_and_readers_get_no_error_and_each_its_own_update(live: Live) -> None:
    chosen = customers(live, 8, skip=300)
    statuses: list[int] = []
    firsts: list[int] = []  # what each client's first answer says it updated (rounds share an update)
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int, customer: str) -> None:
        with httpx.Client(base_url=live.url, headers=live.headers, timeout=60) as http:
            for k in range(4):
                at = live.now + pd.Timedelta(minutes=20 + k)
                posted = http.post("/events", json={"events": [ticket(f"c{i}-{k}", customer, at)]})
                read = http.get(f"/customers/{customer}/profile")
                with lock:
                    statuses.extend([posted.status_code, read.status_code])
                    if posted.status_code == 200 and posted.json()["live"].get("error"):
                        statuses.append(599)  # an update that failed is an error here too
                        errors.append(posted.json()["live"]["error"])
                    if k == 0 and posted.status_code == 200:  # the first event of each: its own customer, updated
                        firsts.append(posted.json()["live"]["updated"])

    threads = [threading.Thread(target=client, args=(i, c)) for i, c in enumerate(chosen)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [200], (statuses, errors)
    assert firsts == [1] * len(chosen), firsts


def test_the_page_lists_the_live_events_and_marks_the_new_ones(live: Live, api_keys: dict[str, str], page) -> None:
    """The page of a customer open while an event arrives lists it as new, without a reload."""
    (customer,) = customers(live, 1, skip=1000)
    page.goto(f"{live.url}/ui?customer={customer}")
    page.get_by_label("API key").fill(api_keys["csm"])
    page.get_by_role("button", name="Use key").click()
    page.locator("#profile:not([hidden])").wait_for(timeout=60_000)
    event_id = f"ui-{uuid.uuid4().hex}"
    sent = live.post({"event_id": event_id, "kind": "login", "at": (live.now + pd.Timedelta(hours=1)).isoformat(),
                      "customer_id": customer, "user_id": f"U-{customer}"})
    assert sent["accepted"] == 1, sent
    new = page.locator(f"#live-events li.changed[data-event='{event_id}']")
    new.wait_for(timeout=15_000)
    assert "login" in new.inner_text() and new.get_attribute("title") == "new since the page opened"
    assert page.locator("#changes li").filter(has_text="1 new live event").count() == 1


def _until(condition: Any, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(condition())


def test_the_updater_warms_at_start_and_after_each_fold(home_over_resolved: Any) -> None:
    """`keep_warm` (the live updater's thread) builds what rounds read as it starts and again once a fold changed
    the warehouse, not in the next round; the connection it keeps open lets the fold's writer in, and readers see
    what the fold wrote, not the file as it was; it ends when told."""
    s = home_over_resolved("warm")
    stop = threading.Event()
    warming = threading.Thread(target=serving_live.keep_warm, args=(s, stop, 0.05))
    warming.start()
    try:
        def warmed() -> bool:
            return features_live._tables.get(s.warehouse, (None,))[0] == file_stamp(s.warehouse.stat())

        assert _until(warmed)
        event_log.accept(s, [{"event_id": "warm-1", "kind": "login", "at": "2030-01-01T00:00:00Z",
                              "user_id": "U-WARM"}])
        with warehouse.connect(s) as con:
            event_log.fold(s, con)
        assert _until(warmed)
        with online.warehouse(s) as con:
            assert con.execute("SELECT count(*) FROM events_folded WHERE id = 'warm-1'").fetchone() == (1,)
    finally:
        stop.set()
        warming.join(30)
    assert not warming.is_alive()
