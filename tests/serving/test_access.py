"""Keys, roles, masking and the audit trail of the service (`serving.access`, `serving.auth`, `serving.masking`).

Against a real `bentoml serve`: every route × every role answers as the route table says, and no key is a 401;
the analyst's profile holds none of the customer's e-mails, phones or names as the warehouse holds them, the
csm's holds them, the service role's holds no personal data at all; keys created or revoked while the server runs
count within a second; each read leaves an audit record with the key's name and no personal value. In process: the
table covers every route the app has, the settings that open routes, `C360_AUTH=off`, and the README's table.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from c360.core import audit, keys, warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.serving import access
from c360.serving.auth import Auth
from c360.serving.masking import MASK
from tests.serving.conftest import bearer

ROOT = Path(__file__).resolve().parents[2]
PARAMS = {"customer_id": "{customer}", "request_id": "0123456789abcdef", "file": "swagger-ui.css",
          "name": "no-such-name"}
BODIES = {"/profile": {"customer_id": "{customer}", "details": True}, "/admin/reload": None,
          "/events": {"events": []}, "/admin/privacy/export": {"customer_id": "{customer}"},
          "/admin/privacy/erase": {"customer_id": "{customer}"},
          "/audiences": {"name": "never_created", "where": "no_such_field = 1"},
          "/models/{name}/predict": {"rows": [{"x": 1}]}}
NOT_CALLED_WITH_A_ROLE_THAT_MAY = {"POST /admin/privacy/erase"}  # it would erase the shared home's customer
# What a role that may call the route gets for the request above, when not a 2xx: no such request, audience or
# table model (404), a filter refused (422) so the shared home gains no audience; never 401/403.
ANSWER_TO_A_ROLE_THAT_MAY = {"GET /admin/privacy/requests/{request_id}": 404, "GET /audiences/{name}": 404,
                             "GET /audiences/{name}/export": 404, "POST /audiences": 422,
                             "POST /models/{name}/predict": 404}


# ---------------------------------------------------------------- the customer and what the warehouse holds on them


@pytest.fixture(scope="module")
def customer(served: Settings) -> str:
    """A customer of the latest snapshot with the most source records, e-mails and phones: a profile full of
    personal data."""
    ids = store.read_snapshot(served, store.snapshot_dates(served)[-1])["customer_id"].tolist()
    with warehouse.connect(served, read_only=True) as con:
        row = con.execute("SELECT customer_id FROM identity_customers WHERE customer_id IN (SELECT unnest(?)) "
                          "AND len(emails) > 0 AND len(phones) > 0 AND display_name IS NOT NULL "
                          "ORDER BY records DESC, customer_id LIMIT 1", [ids]).fetchone()
    if row is None:
        pytest.skip("no customer with e-mails, phones and a name in the served home")
    return str(row[0])


@pytest.fixture(scope="module")
def personal(served: Settings, customer: str) -> dict[str, set[str]]:
    """The customer's names, e-mails and phones as the warehouse holds them: golden record and CRM contacts."""
    with warehouse.connect(served, read_only=True) as con:
        golden = con.execute("SELECT display_name, company, emails, phones FROM identity_customers "
                             "WHERE customer_id = ?", [customer]).fetchone()
        contacts = con.execute("SELECT first_name || ' ' || last_name, email, phone FROM crm_contacts WHERE "
                               "contact_id IN (SELECT source_key FROM identity_crosswalk WHERE customer_id = ? "
                               "AND source = 'crm/contacts')", [customer]).fetchall()
    values = {"names": {golden[0], *(c[0] for c in contacts)}, "emails": {*golden[2], *(c[1] for c in contacts)},
              "phones": {*golden[3], *(c[2] for c in contacts)}}
    return {kind: {v for v in found if v and len(v) >= 5} for kind, found in values.items()}


def found_in(text: str, personal: dict[str, set[str]]) -> set[str]:
    lowered = text.lower()
    return {v for values in personal.values() for v in values if v.lower() in lowered}


# ---------------------------------------------------------------- every route × every role, on a real server


def request_of(route: access.Route, customer: str, email: str) -> dict[str, Any]:
    path = re.sub(r"\{(\w+)(:path)?\}", lambda m: PARAMS[m[1]], route.path).replace("{customer}", customer)
    out: dict[str, Any] = {"method": route.method, "url": path}
    if route.path == "/customers":
        out["params"] = {"email": email}
    if route.method == "POST":
        body = BODIES.get(route.path, {"customer_ids": ["{customer}"]})
        out["json"] = None if body is None else {k: (customer if v == "{customer}" else
                                                     [customer] if v == ["{customer}"] else v)
                                                 for k, v in body.items()}
    return out


@pytest.fixture(scope="module")
def an_email(served: Settings, customer: str) -> str:
    with warehouse.connect(served, read_only=True) as con:
        return str(con.execute("SELECT emails[1] FROM identity_customers WHERE customer_id = ?",
                               [customer]).fetchone()[0])


def test_every_route_answers_every_role_as_the_table_says(server: str, served: Settings, api_keys: dict[str, str],
                                                          customer: str, an_email: str, app_routes: set) -> None:
    s = Settings(home=served.home)  # the server's settings: the defaults
    wrong: list[str] = []
    with httpx.Client(base_url=server, timeout=60) as http:
        for route in access.ROUTES:
            request = request_of(route, customer, an_email)
            roles = route.admits(s)
            no_key = http.request(**request).status_code
            if (roles is None and no_key >= 400) or (roles is not None and no_key != 401):
                wrong.append(f"{route.action} without a key: {no_key}")
            for role in keys.ROLES if roles is not None else ():
                allowed = role in roles
                if allowed and route.action in NOT_CALLED_WITH_A_ROLE_THAT_MAY:
                    continue
                status = http.request(**request, headers=bearer(api_keys[role])).status_code
                expected = ANSWER_TO_A_ROLE_THAT_MAY.get(route.action)
                ok = status == expected if expected else 200 <= status < 300
                if (allowed and not ok) or (not allowed and status != 403):
                    wrong.append(f"{route.action} as {role}: {status}")
        unknown = http.get("/no/such/route", headers=bearer(api_keys["admin"])).status_code
    assert not wrong, wrong
    assert unknown == 404


def test_refusals_say_why_as_json(server: str, api_keys: dict[str, str], customer: str) -> None:
    url = f"{server}/customers/{customer}/profile"
    none = httpx.get(url, timeout=30)
    assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in none.json()["detail"]
    assert httpx.get(url, headers=bearer("c360_forged"), timeout=30).json() == {"detail": "unknown API key"}
    assert httpx.get(url, headers={"Authorization": f"Basic {api_keys['admin']}"}, timeout=30).status_code == 401
    lookup = httpx.get(f"{server}/customers", params={"email": "a@b.example"}, headers=bearer(api_keys["analyst"]),
                       timeout=30)
    assert lookup.status_code == 403 and lookup.json() == {"detail": "the role analyst may not GET /customers"}


# ---------------------------------------------------------------- what each role sees


def profile_as(server: str, key: str, customer: str) -> httpx.Response:
    return httpx.get(f"{server}/customers/{customer}/profile", params={"details": "true"}, headers=bearer(key),
                     timeout=60)


def test_personal_data_by_role(server: str, api_keys: dict[str, str], customer: str,
                               personal: dict[str, set[str]]) -> None:
    assert all(personal.values()), personal  # the check below means something
    csm = profile_as(server, api_keys["csm"], customer)
    assert csm.status_code == 200
    assert found_in(csm.text, personal) >= {*personal["emails"] & set(csm.json()["identity"]["emails"]),
                                            csm.json()["identity"]["display_name"]}
    assert personal["emails"] & set(csm.json()["identity"]["emails"])

    analyst = profile_as(server, api_keys["analyst"], customer)
    assert analyst.status_code == 200 and not found_in(analyst.text, personal)
    shown = analyst.json()
    assert shown["identity"]["customer_id"] == customer and shown["identity"]["display_name"] == MASK
    assert shown["identity"]["emails"] == [MASK] * len(csm.json()["identity"]["emails"])
    assert shown["details"]["contacts"] and all(c["email"] in (MASK, None) for c in shown["details"]["contacts"])
    assert shown["future"]["churn"]["probability"] == csm.json()["future"]["churn"]["probability"]

    service = profile_as(server, api_keys["service"], customer)
    assert service.status_code == 200 and not found_in(service.text, personal)
    assert "identity" not in service.json() and "details" not in service.json()
    assert service.json()["present"] == csm.json()["present"]
    bento = httpx.post(f"{server}/profile", json={"customer_id": customer, "details": True},
                       headers=bearer(api_keys["service"]), timeout=60)
    assert bento.status_code == 200 and not found_in(bento.text, personal) and bento.json().get("details") is None
    for role in ("analyst", "service"):
        for kind in ("churn", "clv", "nba"):
            predicted = httpx.post(f"{server}/predict/{kind}", json={"customer_ids": [customer]},
                                   headers=bearer(api_keys[role]), timeout=60)
            assert predicted.status_code == 200 and not found_in(predicted.text, personal)


def test_masking_fails_when_a_personal_value_slips_through(server: str, api_keys: dict[str, str], customer: str,
                                                           personal: dict[str, set[str]]) -> None:
    """The counter-test of the checks above: the same search finds the values in the admin's answer."""
    admin = profile_as(server, api_keys["admin"], customer).text
    assert personal["names"] & found_in(admin, personal) and personal["phones"] & found_in(admin, personal)


# ---------------------------------------------------------------- keys on a running server, and the audit trail


def answers_within(url: str, key: str, status: int, seconds: float = 1.0) -> int:
    """Requests sent until `url` answers `status` to `key`; fails after `seconds`."""
    started = time.perf_counter()
    sent = 0
    while True:
        sent += 1
        if httpx.get(url, headers=bearer(key), timeout=30).status_code == status:
            return sent
        assert time.perf_counter() - started < seconds, f"no {status} within {seconds} s"
        time.sleep(0.05)


def test_keys_created_and_revoked_on_a_running_server(server: str, served: Settings, customer: str) -> None:
    name = f"live-{time.time_ns()}"
    key = keys.create(served, name, "analyst")
    url = f"{server}/customers/{customer}/profile"
    sent = answers_within(url, key, 200)
    keys.revoke(served, name)
    sent += answers_within(url, key, 401)
    assert httpx.get(url, headers=bearer(key), timeout=30).json() == {"detail": f"key {name!r} was revoked"}
    # the last record lands after its answer: wait for it, or it falls into the next test's trail
    settled(lambda: len(audit.records(served, key=name)) >= sent + 1)


def settled(done: Callable[[], bool]) -> None:
    """Wait (up to 5 s) until the server has appended the records `done` looks for."""
    deadline = time.monotonic() + 5
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_reads_are_audited_with_the_key_and_no_personal_value(server: str, served: Settings,
                                                              api_keys: dict[str, str], customer: str,
                                                              an_email: str, personal: dict[str, set[str]]) -> None:
    since = audit.records(served)[-1]["seq"] if audit.records(served) else 0
    profile_as(server, api_keys["csm"], customer)
    httpx.post(f"{server}/predict_churn", json={"customer_ids": [customer]}, headers=bearer(api_keys["service"]),
               timeout=60)
    httpx.get(f"{server}/customers", params={"email": an_email}, headers=bearer(api_keys["csm"]), timeout=60)
    httpx.get(f"{server}/customers/{customer}/profile", timeout=60)  # refused: no key
    httpx.post(f"{server}/predict/clv", json={"rows": [{"mrr": 10.0}]}, headers=bearer(api_keys["analyst"]),
               timeout=60)
    settled(lambda: sum(r["seq"] > since for r in audit.records(served)) >= 5)  # appended once answered
    mine = [r for r in audit.records(served, customer=customer) if r["seq"] > since]
    assert [(r["key"], r["role"], r["action"], r["status"]) for r in mine] == [
        ("test-csm", "csm", "GET /customers/{customer_id}/profile", 200),
        ("test-service", "service", "POST /predict_churn", 200),
        ("test-csm", "csm", "GET /customers", 200),
        ("-", "-", "GET /customers/{customer_id}/profile", 401)]
    rows = [r for r in audit.records(served, key="test-analyst") if r["seq"] > since]
    assert [(r["action"], r["customers"]) for r in rows] == [("POST /predict/clv", [])]  # rows: no customer
    assert audit.verify(served).ok
    trail = audit.path(served).read_text()
    assert not found_in(trail, personal) and an_email not in trail


# ---------------------------------------------------------------- the table itself, in process


@pytest.fixture(scope="module")
def app_routes(client: TestClient, asgi_app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the running app has: BentoML's, and the FastAPI app's mounted on it."""
    from c360.serving.service import app

    found: set[tuple[str, str]] = set()

    def add(routes: list[Any]) -> None:
        for r in routes:
            if isinstance(r, Mount) and r.path:
                found.add(("GET", f"{r.path}/{{file:path}}"))
            elif hasattr(r, "original_router"):  # FastAPI's included routers
                add(r.original_router.routes)
            elif getattr(r, "methods", None) and getattr(r, "path", None):
                found.update((m, r.path) for m in r.methods - {"HEAD"})

    add(asgi_app.routes)
    add(app.routes)
    return found


def test_the_table_covers_every_route_of_the_app(app_routes: set[tuple[str, str]]) -> None:
    assert ("GET", "/customers/{customer_id}/profile") in app_routes and ("POST", "/predict_nba") in app_routes
    rows = {(r.method, r.path) for r in access.ROUTES}
    assert not app_routes - rows, f"routes without a row in serving.access.ROUTES: {sorted(app_routes - rows)}"
    assert not rows - app_routes, f"rows of no route: {sorted(rows - app_routes)}"


def test_the_readme_shows_the_route_table() -> None:
    assert access.markdown(Settings()) in (ROOT / "README.md").read_text()


def echo_app() -> Starlette:
    """A plain app answering 200 on a few of the table's routes."""
    async def ok(_: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route(p, ok) for p in ("/docs.json", "/metrics", "/status", "/healthz")])


def test_settings_open_or_close_the_docs_and_metrics(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, public_docs=False, public_metrics=True)
    key = keys.create(s, "a", "analyst")
    with TestClient(Auth(echo_app(), s)) as http:
        assert http.get("/docs.json").status_code == 401 and http.get("/metrics").status_code == 200
        assert http.get("/docs.json", headers=bearer(key)).status_code == 200
    closed = Settings(home=tmp_path, public_metrics=False)
    with TestClient(Auth(echo_app(), closed)) as http:
        assert http.get("/metrics", headers=bearer(key)).status_code == 403
        assert http.get("/docs.json").status_code == 200


def test_auth_off_is_the_local_admin_on_loopback_only(tmp_path: Path) -> None:
    from c360.serving.server import serve_command

    s = Settings(home=tmp_path, auth="off")
    with TestClient(Auth(echo_app(), s), base_url="http://127.0.0.1") as local:
        assert local.get("/status").status_code == 200 and local.get("/healthz").status_code == 200
    with TestClient(Auth(echo_app(), s), base_url="http://10.1.2.3") as remote:
        refused = remote.get("/status")
        assert refused.status_code == 403 and "loopback only" in refused.json()["detail"]
        assert remote.get("/healthz").status_code == 200
    with pytest.raises(ValueError, match="C360_AUTH=off serves this machine only"):
        serve_command(3000, "0.0.0.0", 1, s)
    assert serve_command(3000, "127.0.0.1", 1, s)[0]
