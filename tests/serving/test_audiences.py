"""Audiences over a scored home: predictions as fields, membership history across two scoring runs, the HTTP
routes by role (analysts' exports masked, 403, 409, 422), 8 concurrent clients, and erasure of a member.

Creating audiences and scoring again change the home, so these tests work on a copy of the served one; they run in
order (the audiences created first are used later)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from starlette.testclient import TestClient

from c360.core import audit, consent
from c360.core.settings import Settings
from c360.features import audience_profile, audiences
from c360.serving.masking import MASK
from tests.conftest import cli_json as invoke

from .conftest import bearer, home_copy, running


@pytest.fixture(scope="module")
def home(served: Settings, api_keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A copy of the served home, its keys of each role included."""
    with home_copy(served, tmp_path_factory.mktemp("audiences")) as copy:
        yield copy


@pytest.fixture(scope="module")
def http(home: Settings, asgi_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_RELOAD_SECONDS", "0")
        patch.setenv("BENTOML_HOME", str(tmp_path_factory.mktemp("bentoml")))
        with TestClient(asgi_app, raise_server_exceptions=False) as client:
            yield client


def latest_scores(s: Settings) -> pd.DataFrame:
    """Each customer's latest wide score row (the newest features date, then the newest run), read apart from the
    profile table's code: the shared served home may hold runs of a few customers beside the full ones."""
    runs = [pd.read_parquet(p / "wide").assign(_at=json.loads((p / "_run.json").read_text())["scored_at"])
            for p in s.scores.glob("as_of=*/run=*")]
    latest = pd.concat(runs).sort_values(["as_of", "_at"]).groupby("customer_id").tail(1)
    return latest.drop(columns="_at").reset_index(drop=True)


def test_predictions_are_fields_and_select_as_scored(home: Settings) -> None:
    fields = audience_profile.fields(home)
    assert fields["churn_band"] == "text" and fields["clv_12m"] == "number" and "next_best_action" in fields
    scores = latest_scores(home)
    expected = scores[(scores["churn_band"] == "high") & (scores["clv_value"] > 500)]
    created = invoke("audience", "create", "high_risk", "--where", "churn_band = 'high' and clv_12m > 500")
    assert created["size"] == len(expected) > 0
    assert audiences.members(home, "high_risk") == sorted(expected["customer_id"])
    shown = invoke("audience", "show", "high_risk")
    assert shown["distribution"]["counts"]["churn_band"] == {"high": len(expected)}
    assert shown["distribution"]["quartiles"]["clv_12m"]["min"] > 500


def test_membership_history_follows_two_scoring_runs(home: Settings) -> None:
    invoke("audience", "create", "phone_ok", "--where", "opted_out_other_channels = false")
    invoke("audience", "create", "phone_off", "--where", "opted_out_other_channels")
    invoke("score")  # the first run: nothing changed, nobody moves
    history = invoke("audience", "show", "phone_ok")["history"]
    assert [h["left"] for h in history] == [0]
    customer = audiences.members(home, "phone_ok")[0]
    consent.record(home, customer, "other_channels")
    scored = invoke("score")  # the second run, with the opt-out: the customer moves from one audience to the other
    moved = {c["audience"]: c for c in scored["audiences"]}
    assert (moved["phone_ok"]["left"], moved["phone_off"]["entered"]) == (1, 1)
    assert customer not in audiences.members(home, "phone_ok") and customer in audiences.members(home, "phone_off")
    stays = audiences.Audiences.export(_work(home), _person(customer))["membership"]
    ok = [m for m in stays if m["audience"] == "phone_ok"]
    off = [m for m in stays if m["audience"] == "phone_off"]
    assert len(ok) == 1 and ok[0]["left_at"] is not None and off[0]["left_at"] is None
    assert off[0]["entered_at"] == ok[0]["left_at"]
    assert invoke("audience", "show", "phone_ok")["history"][-1] == {"at": ok[0]["left_at"], "entered": 0, "left": 1}


def _work(s: Settings) -> Any:
    from c360.core.personal import Work

    return Work(s, None)  # type: ignore[arg-type]  # the audiences' store needs no warehouse connection


def _person(customer: str, emails: tuple[str, ...] = ()) -> Any:
    from c360.core.personal import Person

    return Person("customer_id", (customer,), (customer,), {}, emails, ())


def test_http_roles(home: Settings, http: TestClient, api_keys: dict[str, str]) -> None:
    as_ = {role: bearer(key) for role, key in api_keys.items()}
    listed = http.get("/audiences", headers=as_["analyst"])
    assert listed.status_code == 200
    assert {a["name"]: a["size"] for a in listed.json()["audiences"]}["high_risk"] == len(
        audiences.members(home, "high_risk"))
    assert http.get("/audiences", headers=as_["service"]).status_code == 403
    ask = {"name": "emea_high", "where": "churn_band = 'high' and region = 'EMEA'"}
    assert http.post("/audiences", json=ask, headers=as_["analyst"]).status_code == 403
    created = http.post("/audiences", json=ask, headers=as_["csm"])
    assert created.status_code == 201, created.text
    assert created.json()["size"] == len(audiences.members(home, "emea_high"))
    assert http.post("/audiences", json=ask, headers=as_["admin"]).status_code == 409
    bad = http.post("/audiences", json={"name": "x", "where": "churn_bnd = 'high'"}, headers=as_["admin"])
    assert bad.status_code == 422 and "did you mean churn_band" in bad.json()["detail"][0]["msg"]
    injected = http.post("/audiences", json={"name": "y", "where": "1=1; DROP TABLE audiences"}, headers=as_["admin"])
    assert injected.status_code == 422 and "one condition only" in injected.json()["detail"][0]["msg"]
    assert "x" not in {a["name"] for a in audiences.listed(home)} and "y" not in {a["name"] for a in
                                                                                audiences.listed(home)}
    shown = http.get("/audiences/high_risk", headers=as_["analyst"])
    assert shown.status_code == 200 and shown.json()["size"] == len(audiences.members(home, "high_risk"))
    assert "members" not in shown.json()
    assert http.get("/audiences/nope", headers=as_["admin"]).status_code == 404
    record = [r for r in audit.records(home) if r["action"] == "GET /audiences/{name}" and r["status"] == 200][-1]
    assert set(record["customers"]) == set(audiences.members(home, "high_risk"))


def test_analysts_export_is_masked_and_a_csms_is_not(home: Settings, http: TestClient,
                                                     api_keys: dict[str, str]) -> None:
    full = http.get("/audiences/high_risk/export", headers=bearer(api_keys["csm"]))
    masked = http.get("/audiences/high_risk/export", headers=bearer(api_keys["analyst"]))
    assert full.status_code == masked.status_code == 200
    a, b = pd.read_csv(io.StringIO(full.text), dtype=str), pd.read_csv(io.StringIO(masked.text), dtype=str)
    assert list(a["customer_id"]) == list(b["customer_id"]) and len(a) > 0
    assert a["email"].str.contains("@").any() and set(b["email"].dropna()) == {MASK} and set(b["name"]) == {MASK}
    assert (a["churn_band"] == b["churn_band"]).all()
    left_out = json.loads(full.headers["X-C360-Left-Out"])
    assert sum(left_out.values()) + len(a) == len(audiences.members(home, "high_risk"))
    assert http.get("/audiences/high_risk/export", headers=bearer(api_keys["service"])).status_code == 403


def test_eight_concurrent_clients(home: Settings, api_keys: dict[str, str],
                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def client(i: int, url: str) -> None:
        role = ("admin", "csm", "analyst")[i % 3]
        with httpx.Client(base_url=url, headers=bearer(api_keys[role]), timeout=120) as session:
            answers = [session.get("/audiences"), session.get("/audiences/high_risk"),
                       session.get("/audiences/phone_off/export")]
            if role != "analyst":
                answers.append(session.post("/audiences", json={"name": f"c{i}", "where": f"clv_12m > {i * 100}"}))
        with lock:
            statuses.extend(a.status_code for a in answers)

    with running(home, 1, 0, tmp_path_factory.mktemp("audience-server")) as url:
        threads = [threading.Thread(target=client, args=(i, url)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(set(statuses)) == [200, 201], statuses
    created = {a["name"]: a["size"] for a in audiences.listed(home)}
    scores = latest_scores(home)
    for i in (0, 1, 3, 4, 6, 7):  # the admins' and csms' audiences, each with its own count
        assert created[f"c{i}"] == int((scores["clv_value"] > i * 100).sum())


def test_erasure_of_a_member(home: Settings, tmp_path: Path) -> None:
    inside = home.home / "audiences" / "exports" / "high_risk.csv"
    outside = tmp_path / "crm.csv"
    invoke("audience", "export", "high_risk", "--out", str(inside))
    invoke("audience", "export", "high_risk", "--out", str(outside))
    customer = pd.read_csv(inside, dtype=str)["customer_id"].iloc[0]
    report = invoke("privacy", "erase", "--customer-id", customer)
    erased = report["stores"]["audiences"]
    assert "audiences/exports/high_risk.csv" in erased["files"]
    assert str(outside.resolve()) in report["recall"]
    assert customer not in set(pd.read_csv(inside, dtype=str)["customer_id"])
    assert customer in set(pd.read_csv(outside, dtype=str)["customer_id"]), "a file outside the home is recalled"
    assert audiences.Audiences.export(_work(home), _person(customer)) == {"membership": [], "exports": []}
    assert customer not in audiences.members(home, "high_risk")
