"""The privacy endpoints through the service's ASGI app, on a small resolved home of its own (no models needed):
an erasure request answers 202 and hides the person at once; `c360 privacy run` carries it out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit, keys, locks
from c360.core.settings import Settings
from tests.serving.conftest import bearer

runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = Settings(home=tmp_path_factory.mktemp("privacy_http") / "home")
    env = {"C360_HOME": str(s.home)}
    for command in (["generate", "--customers", "300"], ["ingest", "--source", str(s.generated)], ["resolve"]):
        result = runner.invoke(app, [*command, "--json"], env=env)
        assert result.exit_code == 0, result.output
    return s


@pytest.fixture(scope="module")
def http(small: Settings, asgi_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(small.home))
        patch.setenv("C360_RELOAD_SECONDS", "0")
        patch.setenv("BENTOML_HOME", str(tmp_path_factory.mktemp("bentoml")))
        admin = bearer(keys.create(small, "privacy-admin", "admin", replace_active=True))
        with TestClient(asgi_app, raise_server_exceptions=False, headers=admin) as client:
            yield client


def consumers(s: Settings, n: int) -> list[tuple[str, str]]:
    with duckdb.connect(str(s.warehouse), read_only=True) as con:
        return con.execute("""SELECT customer_id, emails[1] FROM identity_customers
            WHERE segment = 'consumer' AND len(emails) = 1 ORDER BY customer_id LIMIT ?""", [n]).fetchall()


def test_export_answers_at_once(http: TestClient, small: Settings) -> None:
    customer, email = consumers(small, 1)[0]
    answer = http.post("/admin/privacy/export", json={"email": email})
    assert answer.status_code == 200, answer.text
    assert answer.json()["customers"] == [customer] and answer.json()["warehouse_sources"]
    assert http.post("/admin/privacy/export", json={"email": email, "customer_id": customer}).status_code == 422
    assert http.post("/admin/privacy/export", json={"customer_id": "C99999999"}).status_code == 404


def test_erasure_request_hides_at_once_and_runs_later(http: TestClient, small: Settings) -> None:
    customer, email = consumers(small, 2)[1]
    assert http.get("/customers", params={"email": email}).status_code == 200
    with locks.writer(small):  # a writer holds the warehouse: the service cannot erase now
        answer = http.post("/admin/privacy/erase", json={"email": email})
        assert answer.status_code == 202, answer.text
        request_id = answer.json()["request_id"]
        assert http.get(f"/customers/{customer}/profile").status_code == 404
        assert http.get("/customers", params={"email": email}).status_code == 404
    assert http.get(f"/admin/privacy/requests/{request_id}").json()["state"] == "pending"
    # its own process, as in production: this one serves, and DuckDB refuses a writer beside a reader in a process
    result = subprocess.run([sys.executable, "-m", "c360.cli", "privacy", "run", "--json"], capture_output=True,
                            text=True, env={**os.environ, "C360_HOME": str(small.home)}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in json.loads(result.stdout)["requests"]] == [request_id]
    state = http.get(f"/admin/privacy/requests/{request_id}").json()
    assert state["state"] == "done" and state["report"]["warehouse_sources"]["rows"] > 0
    assert email.encode() not in small.warehouse.read_bytes()
    assert email.encode() not in (small.home / "privacy" / "requests" / f"{request_id}.json").read_bytes()
    assert http.get(f"/customers/{customer}/profile").status_code == 404
    assert http.get("/admin/privacy/requests/0123456789abcdef").status_code == 404
    erased = [r for r in audit.records(small, customer=customer) if r["action"] == "POST /admin/privacy/erase"]
    assert [(r["key"], r["status"]) for r in erased] == [("privacy-admin", 202)]
    assert email not in audit.path(small).read_text()


def test_erasure_request_runs_at_once_when_the_warehouse_is_free(http: TestClient, small: Settings) -> None:
    customer, email = consumers(small, 3)[2]
    request_id = http.post("/admin/privacy/erase", json={"email": email}).json()["request_id"]
    deadline, state = time.monotonic() + 120, "pending"
    while state == "pending" and time.monotonic() < deadline:  # `c360 privacy run`, started by the service
        time.sleep(0.5)
        state = http.get(f"/admin/privacy/requests/{request_id}").json()["state"]
    assert state == "done"
    assert email.encode() not in small.warehouse.read_bytes()
    assert http.get(f"/customers/{customer}/profile").status_code == 404
