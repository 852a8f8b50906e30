"""The service over HTTP: in-process through its ASGI app, and as a real `bentoml serve` on a free port, checked
against its own OpenAPI document by schemathesis (no 500 anywhere, every response as documented)."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from bench.serve import get, load
from c360.core.settings import Settings
from c360.features import store
from c360.serving.errors import ECHO
from c360.training import tracking
from c360.training.tracking import CHAMPION

API = r"^/(customers|predict/|admin|status)"  # the REST routes; the BentoML APIs: test_bentoml_api


def a_customer(s: Settings) -> str:
    return str(store.read_snapshot(s, store.snapshot_dates(s)[-1])["customer_id"].iloc[0])


# ---------------------------------------------------------------- in process (ASGI)


def test_asgi_profile_and_errors(client: TestClient, served: Settings) -> None:
    customer = a_customer(served)
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    ok = client.get(f"/customers/{customer}/profile")
    assert ok.status_code == 200 and ok.json()["future"]["churn"]["model"]["source"] == "batch"
    unknown = client.get("/customers/C99999999/profile")
    assert unknown.status_code == 404 and "unknown customer" in unknown.json()["detail"]
    malformed = client.get("/customers/not%20an%20id/profile")
    assert malformed.status_code == 422 and malformed.json()["detail"]
    assert client.post("/predict/clv", json={}).status_code == 422
    too_many = client.post("/predict/clv", json={"customer_ids": [customer] * 101})
    assert too_many.status_code == 422
    bad_row = client.post("/predict/churn", json={"rows": [{"seats": "many"}]})
    assert bad_row.status_code == 422 and {"seats", "mrr"} <= {e["loc"][-1] for e in bad_row.json()["detail"]}
    assert client.get("/status").json()["ready"] is True


# ---------------------------------------------------------------- a real server


def test_real_server_serves_a_profile_and_polls_the_registry(server: str, served: Settings, admin: dict) -> None:
    customer = a_customer(served)
    response = httpx.get(f"{server}/customers/{customer}/profile", headers=admin, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json()["future"]["next_best_action"]["model"]["name"] == "c360-nba"
    client = tracking.configure(served.home)
    current = tracking.version_by_alias(client, "c360-clv", CHAMPION)
    copy = client.create_model_version("c360-clv", current.source, current.run_id)
    try:
        client.set_registered_model_alias("c360-clv", CHAMPION, copy.version)
        deadline, version = time.time() + 60, None
        while version != int(copy.version) and time.time() < deadline:
            time.sleep(1)
            version = httpx.get(f"{server}/status", headers=admin, timeout=30).json()["models"]["clv"]
        assert version == int(copy.version), "the poll did not pick up the new @champion"
        clv = httpx.get(f"{server}/customers/{customer}/profile", headers=admin, timeout=30).json()["future"]["clv"]
        assert clv["model"]["version"] == int(copy.version) and clv["model"]["source"] == "live"
    finally:
        client.set_registered_model_alias("c360-clv", CHAMPION, current.version)


@pytest.mark.parametrize("query", ["?details=true", ""], ids=["details", "plain"])
def test_real_server_holds_eight_clients(server: str, served: Settings, query: str, api_keys: dict) -> None:
    """The profile page's calls under a bounded loopback load, 8 clients with a csm's key for 10 s: every answer a
    200 (with `?details=true` about half failed when the worker's threads shared DuckDB's default connection)."""
    port = int(server.rsplit(":", 1)[1])
    ids = store.read_snapshot(served, store.snapshot_dates(served)[-1])["customer_id"].sample(
        500, random_state=1).tolist()
    requests = [get(f"/customers/{c}/profile{query}", f"127.0.0.1:{port}", api_keys["csm"]) for c in ids]
    result = load(port, requests, 8, 10.0)
    assert result["requests"] > 8 and not result["errors"], result["errors"][:5]


def profile_requests(server: str, admin: dict) -> dict[str, float]:
    """`c360_requests_total` of the profile route by status, as `/metrics` reports it."""
    text = httpx.get(f"{server}/metrics", headers=admin, timeout=30).text
    return {sample.labels["status"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "c360_requests_total"
            and sample.labels["route"] == "/customers/{customer_id}/profile"}


def test_real_server_metrics_count_requests_by_route(server: str, served: Settings, admin: dict) -> None:
    """One series per route and status, whatever the customer ids (BentoML's own metrics, switched off, open
    series per raw path: one per customer)."""
    ids = store.read_snapshot(served, store.snapshot_dates(served)[-1])["customer_id"].iloc[:3].tolist()
    before = profile_requests(server, admin)
    for customer in [*ids, "C99999999"]:
        httpx.get(f"{server}/customers/{customer}/profile", headers=admin, timeout=30)
    after = profile_requests(server, admin)
    assert after.get("200", 0) - before.get("200", 0) == 3 and after.get("404", 0) - before.get("404", 0) == 1
    text = httpx.get(f"{server}/metrics", headers=admin, timeout=30).text
    assert not any(customer in text for customer in [*ids, "C99999999"])


def test_openapi_contract_holds(server: str, admin: dict) -> None:
    """Every operation of the service's own OpenAPI document, with generated valid and invalid requests: no 5xx,
    status codes, content types and bodies as documented. (schemathesis' pytest plugin does not load under this
    pytest, so the operations are driven through Hypothesis here.)"""
    # not erasure: it would erase the shared home's customers (tests/serving/test_privacy_http.py has its own home)
    api = schemathesis.openapi.from_url(f"{server}/docs.json").include(path_regex=API).exclude(
        method="POST", path="/admin/privacy/erase")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /customers/{customer_id}/profile", "POST /predict/churn",
                                               "POST /predict/clv", "POST /predict/nba", "POST /admin/reload"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            case.call_and_validate(headers=admin, timeout=60)

        check()


HOSTILE_BODIES = {
    "NaN id": {"customer_ids": [math.nan]},
    "NaN feature": {"rows": [{"mrr": math.nan}]},
    "Infinity feature": {"rows": [{"mrr": math.inf, "seats": -math.inf}]},
    "overflowing number": {"customer_ids": [1e308 * 10]},
    "long id": {"customer_ids": ["C" * 900_000]},
    "oversized body": {"customer_ids": ["C00000001"] * 200_000},
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_openapi_contract_holds_for_hostile_bodies(server: str, body: dict, admin: dict) -> None:
    """NaN, Infinity (which Python's JSON writer emits and its parser accepts), overflowing numbers and oversized
    bodies, sent to every POST operation: no 5xx, answers as documented, and no answer repeats more than a short
    prefix of what it was sent."""
    api = schemathesis.openapi.from_url(f"{server}/docs.json").include(path_regex="^/predict/")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 3
    for operation in operations:
        case = operation.Case()
        # As raw bytes: the client libraries refuse to write NaN and Infinity, Python's json module does not.
        response = case.call(data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **admin},
                             timeout=60)
        case.validate_response(response)
        assert response.status_code in (413, 422) and "C" * (ECHO + 1) not in response.text
