"""Customer features: point-in-time correct, equal through Feast and direct, and sensible."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from c360.core.settings import Settings
from c360.core.warehouse import DATED
from c360.features import compute, store

AS_OF = pd.Timestamp("2026-05-04")
# Every dated source table and the column that dates its rows; the features of AS_OF may only see earlier rows.
EVENT_TIMES = {**DATED, "billing_payments": "attempted_at", "billing_plan_changes": "changed_at",
               "feedback_nps": "responded_at", "feedback_feature_requests": "created_at", "crm_contacts": "created_at"}


def equal_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


def test_every_declared_feature_is_computed(resolved: tuple[Path, Path]) -> None:
    with duckdb.connect(str(resolved[0] / "warehouse.duckdb"), read_only=True) as con:
        features = compute.build(con, AS_OF)
    assert list(features.columns) == ["customer_id", "as_of", *compute.BY_NAME]
    assert features["customer_id"].is_unique and len(features) > 1000


def shift_to_future(con: duckdb.DuckDBPyConnection, table: str, column: str) -> None:
    """Add copies of 200 rows dated at or after AS_OF, and change every row already dated there."""
    key = con.execute(f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' "
                      "ORDER BY ordinal_position LIMIT 1").fetchone()[0]
    con.execute(f"""INSERT INTO {table} SELECT * REPLACE ({key} || '-future' AS {key},
        $as_of + to_days((random() * 30)::INT) AS {column}) FROM {table} USING SAMPLE 200 ROWS""",
                {"as_of": AS_OF.to_pydatetime()})
    numeric = con.execute(f"""SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'
        AND data_type IN ('DOUBLE', 'BIGINT') AND column_name NOT LIKE '\\_%' ESCAPE '\\'""").fetchall()
    for (name,) in numeric:
        con.execute(f"UPDATE {table} SET {name} = {name} + 1 WHERE {column} >= $as_of",
                    {"as_of": AS_OF.to_pydatetime()})


def test_events_at_or_after_the_as_of_change_nothing(warehouse_copy: duckdb.DuckDBPyConnection) -> None:
    con = warehouse_copy
    before = compute.build(con, AS_OF)
    for table, column in EVENT_TIMES.items():
        shift_to_future(con, table, column)
    con.execute("UPDATE support_tickets SET closed_at = $as_of + INTERVAL 1 DAY WHERE closed_at >= $as_of",
                {"as_of": AS_OF.to_pydatetime()})
    equal_frames(compute.build(con, AS_OF), before)


def test_an_event_before_the_as_of_does_change_the_features(warehouse_copy: duckdb.DuckDBPyConnection) -> None:
    """The counter-test: the leakage test above would pass on features that ignore all events."""
    con = warehouse_copy
    before = compute.build(con, AS_OF).set_index("customer_id")
    con.execute("""INSERT INTO product_events SELECT * REPLACE (event_id || '-past' AS event_id,
        $day AS event_time) FROM product_events WHERE event_type = 'login' LIMIT 1""",
                {"day": (AS_OF - pd.Timedelta(days=2)).to_pydatetime()})
    after = compute.build(con, AS_OF).set_index("customer_id")
    changed = (after["active_days_7d"] != before["active_days_7d"]) | (after["sessions_30d"] != before["sessions_30d"])
    assert changed.sum() == 1


def test_more_failed_payments_never_raise_billing_health() -> None:
    rows = pd.DataFrame({"payment_failures_90d": [0, 1, 2, 5], "downgrades_180d": 0, "refunds_12m": 0,
                         "campaigns_opened_180d": 0, "campaigns_sent_180d": 0, "campaigns_clicked_180d": 0,
                         "nps_last": np.nan, "csat_180d": np.nan, "active_days_30d": 5, "features_used_90d": 3,
                         "open_tickets": 0, "open_high_severity_tickets": 0})
    parts = compute.health(rows)
    assert parts["health_billing"].is_monotonic_decreasing
    assert parts["health_score"].is_monotonic_decreasing
    assert parts["health_score"].between(0, 100).all()


@pytest.fixture(scope="module")
def feature_store(resolved: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("feast_home")
    s = Settings(home=home)
    with duckdb.connect(str(resolved[0] / "warehouse.duckdb"), read_only=True) as con:
        for day in (AS_OF - pd.Timedelta(days=28), AS_OF, AS_OF + pd.Timedelta(days=28)):
            store.write_snapshot(s, compute.build(con, day))
    return s, store.apply(s)


@pytest.mark.parametrize("service", ["profile_v1", "churn_v1", "clv_v1", "nba_v1"])
def test_historical_features_through_each_service_equal_the_direct_computation(
        feature_store, resolved: tuple[Path, Path], service: str) -> None:
    _, fs = feature_store
    with duckdb.connect(str(resolved[0] / "warehouse.duckdb"), read_only=True) as con:
        direct = compute.build(con, AS_OF)
    sample = direct.sample(60, random_state=3)[["customer_id"]]
    entities = sample.assign(event_timestamp=AS_OF + pd.Timedelta(days=3))
    got = fs.get_historical_features(entity_df=entities, features=fs.get_feature_service(service)).to_df()
    names = [n for n in compute.BY_NAME if n in got.columns]
    assert names, "the service returned no features"
    got = got.set_index("customer_id").loc[sample["customer_id"], names]
    equal_frames(got, direct.set_index("customer_id").loc[sample["customer_id"], names])


def test_plan_after_apply_changes_nothing(feature_store) -> None:
    s, _ = feature_store
    assert "No changes to registry" in store.plan(s)


def test_materialized_features_read_back_by_name(feature_store) -> None:
    s, fs = feature_store
    rows = store.materialize(s)
    latest = pd.read_parquet(sorted(s.snapshots.glob("*.parquet"))[-1])
    some = latest.sample(20, random_state=4)["customer_id"].tolist()
    online = store.online_features(fs, [*some, "no-such-customer"]).set_index("customer_id")
    assert rows == len(latest)
    equal_frames(online.loc[some, ["mrr", "health_score", "plan"]],
                 latest.set_index("customer_id").loc[some, ["mrr", "health_score", "plan"]])
    assert online.loc["no-such-customer"].drop(labels=["customer_id"], errors="ignore").isna().all()


def test_detail_lists_see_only_the_past(resolved: tuple[Path, Path]) -> None:
    from c360.features.details import details

    with duckdb.connect(str(resolved[0] / "warehouse.duckdb"), read_only=True) as con:
        busy = con.execute("""SELECT customer_id FROM identity_crosswalk WHERE source = 'support/tickets'
                              GROUP BY ALL ORDER BY count(*) DESC LIMIT 1""").fetchone()[0]
        lists = details(con, busy, AS_OF, timeline=50)
    assert len(lists["timeline"]) > 0 and (lists["timeline"]["happened_at"] < AS_OF).all()
    assert lists["timeline"]["happened_at"].is_monotonic_decreasing
    assert (lists["latest_issue"]["opened_at"] < AS_OF).all()
    assert set(lists["contacts"]["role"]) <= {"admin", "billing", "end_user", "executive_sponsor"}


def test_a_red_flag_is_dated_from_the_start_of_its_current_run() -> None:
    from c360.features.details import flags_since

    days = pd.date_range("2026-01-05", periods=5, freq="28D")
    history = pd.DataFrame({"as_of": days, **{n: False for n in compute.BY_NAME if n.startswith("flag_")}})
    history["flag_detractor"] = [True, False, True, True, True]
    history["flag_silence"] = [True, True, True, True, False]
    since = flags_since(history)
    assert since["code"].tolist() == ["detractor"]
    assert since["since"].iloc[0] == days[2]
