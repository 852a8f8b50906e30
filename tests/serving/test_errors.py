"""Errors as clients see them: 413 before a large body is read, 422 that repeat only a prefix of the input, 503 that
name the failing component without paths or process ids, and a customer whose views hold two snapshots refused."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from c360.core.settings import Settings
from c360.features import store
from c360.features.online_store import C360OnlineStore
from c360.serving.errors import ECHO, Unavailable, echo
from c360.serving.online import Context, read_online
from tests.conftest import copy_home


def a_customer(s: Settings) -> str:
    return str(store.read_snapshot(s, store.snapshot_dates(s)[-1])["customer_id"].iloc[0])


def no_internals(text: str, *paths: Path) -> bool:
    """True when an answer shows none of these paths, no process id and no traceback."""
    return not any(str(p) in text for p in paths) and "pid" not in text.lower() and "Traceback" not in text


@pytest.mark.parametrize(("value", "expected"), [
    ("C00000001", "C00000001"), (12, 12), (1.5, 1.5), (None, None), (True, True), (math.nan, "nan"),
    (math.inf, "inf"), ({"a": 1}, None), ([1, 2], None)])
def test_echo_repeats_scalars(value: object, expected: object) -> None:
    assert echo(value) == expected


def test_echo_cuts_long_values_to_a_prefix() -> None:
    cut = echo("x" * 1_000_000)
    assert cut.startswith("x" * ECHO) and "x" * (ECHO + 1) not in cut and "1,000,000 characters" in cut
    assert len(echo(10**400)) < 2 * ECHO


def test_body_over_the_limit_is_413_before_it_is_read(client: TestClient) -> None:
    big = b'{"customer_ids": ["' + b"C" * 2_000_000 + b'"]}'
    response = client.post("/predict/churn", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "1,000,000 bytes" in response.json()["detail"]
    chunked = client.post("/predict/churn", content=iter([big[:600_000], big[600_000:]]),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    under = client.post("/predict/churn", json={"customer_ids": ["C" * 900_000]})
    assert under.status_code == 422 and len(under.content) < 5_000


@pytest.mark.parametrize("raw", [b'{"customer_ids": [NaN]}', b'{"rows": [{"mrr": NaN}]}',
                                 b'{"rows": [{"mrr": Infinity}]}', b'{"customer_ids": [1e999]}'])
def test_non_finite_numbers_are_422(client: TestClient, raw: bytes) -> None:
    response = client.post("/predict/nba", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"]


def test_nan_in_a_feature_is_named(client: TestClient) -> None:
    response = client.post("/predict/churn", content=b'{"rows": [{"mrr": NaN}]}',
                           headers={"content-type": "application/json"})
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == "mrr" and "finite" in e["msg"] for e in errors)


def test_online_store_missing_is_503_without_paths(client: TestClient, served: Settings) -> None:
    online = served.feast / "online.db"
    moved = online.with_name("online.db.away")
    online.rename(moved)
    try:
        response = client.get(f"/customers/{a_customer(served)}/profile")
        body = response.json()
        assert response.status_code == 503 and body["component"] == "online store"
        assert "c360 features materialize" in body["detail"] and no_internals(response.text, served.home)
        status = client.get("/status")
        assert status.status_code == 503 and no_internals(status.text, served.home)
    finally:
        moved.rename(online)
    assert client.get("/readyz").status_code == 200


HOLD = """
import duckdb, sys, time
for attempt in range(300):
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        time.sleep(0.1)
else:
    sys.exit("the warehouse stayed locked by another process")
print("held", flush=True)
time.sleep(60)
"""


def test_locked_warehouse_is_503_without_paths_or_pids(client: TestClient, served: Settings) -> None:
    """A writer in another process holds the warehouse: DuckDB's error names the file and the writer's pid. (The
    writer waits for the file: a server that served this home just before keeps it open a few seconds more.)"""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(served.warehouse)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        response = client.get(f"/customers/{a_customer(served)}/profile?details=true")
        assert response.status_code == 503 and response.json()["component"] == "warehouse"
        assert "retry" in response.json()["detail"] and no_internals(response.text, served.home)
        assert str(holder.pid) not in response.text
    finally:
        holder.kill()
        holder.wait()


def test_a_customer_with_two_snapshots_in_its_views_is_refused(served: Settings, tmp_path: Path) -> None:
    """One view of one customer rewritten at a later as-of date (what an interrupted per-view materialize leaves):
    that customer's read is a 503, the others still read one snapshot each."""
    s = Settings(home=tmp_path / "home")
    copy_home(served.feast, s.feast)
    feast = store.feature_store(s)
    ctx = Context(s, feast, champions=None)  # reads only
    view = ctx.online().views[0][0]
    latest = store.snapshot_dates(served)[-1]
    snapshot = pq.read_table(served.snapshots / f"as_of={latest:%Y-%m-%d}.parquet")
    mixed, other = snapshot["customer_id"][:2].to_pylist()
    row = snapshot.filter(pc.equal(snapshot["customer_id"], mixed))
    later = pa.array([latest + pd.Timedelta(days=7)], row.schema.field("as_of").type)
    row = row.set_column(row.schema.get_field_index("as_of"), "as_of", later)
    assert read_online(ctx, [mixed])[0] is not None
    C360OnlineStore().write_arrow(feast.config, view, row.select(["customer_id", "as_of",
                                                                  *(f.name for f in view.features)]))
    with pytest.raises(Unavailable, match="two feature snapshots"):
        read_online(ctx, [mixed])
    assert read_online(ctx, [other])[0] is not None
