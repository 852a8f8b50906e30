"""c360's Feast online store against Feast's own SQLite store, on a tiny real Feast repo.

Three stores hold the same data: Feast's SQLite store and ours filled by Feast's `materialize`, and ours filled by
`write_arrow`. `get_online_features` (by feature list and by feature service) must answer the same on all three,
and our direct read (`C360OnlineStore.read_columns`) the same as `get_online_features`.
"""

from __future__ import annotations

import random
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp

from c360.features import online_store
from c360.features.online_store import C360OnlineStore, bulk_writer

N = 200
VIEW = "customer_profile"
BASE = datetime(2025, 3, 1, tzinfo=UTC)
SCHEMA: dict[str, Any] = {
    "age": Int64, "n_orders": Int32, "balance_cents": Int64, "clv": Float64, "churn_score": Float32,
    "avg_basket": Float64, "segment": String, "city": String, "is_active": Bool, "has_app": Bool,
    "last_order_at": UnixTimestamp, "tags": Array(String),
}
FEATURES = [f"{VIEW}:{name}" for name in SCHEMA]
CITIES = ["Zürich", "São Paulo", "Kraków", "", "X" * 300]  # non-ASCII, empty, longer than a 1-byte varint


def rows(seed: int, when: datetime, ids: list[str]) -> pa.Table:
    """One row per customer of mixed types with nulls everywhere (and NaN, which Feast also treats as null)."""
    r = random.Random(seed)

    def maybe(value: Any, p: float = 0.15) -> Any:
        return None if r.random() < p else value

    n = len(ids)
    return pa.table({
        "customer_id": ids,
        "event_timestamp": pa.array([when + timedelta(seconds=r.randrange(3600)) for _ in ids],
                                    pa.timestamp("us", "UTC")),
        "age": pa.array([maybe(r.randrange(18, 90)) for _ in ids], pa.int64()),
        "n_orders": pa.array([maybe(r.randrange(0, 500)) for _ in ids], pa.int32()),
        "balance_cents": pa.array([r.choice([-1, 0, 2**40, -(2**50), r.randrange(-10**6, 10**6)]) for _ in ids],
                                  pa.int64()),
        "clv": pa.array([maybe(r.choice([r.uniform(0, 5000), float("nan"), 0.0, -0.0])) for _ in ids], pa.float64()),
        "churn_score": pa.array([maybe(r.random()) for _ in ids], pa.float32()),
        "avg_basket": pa.array([r.uniform(1, 200) for _ in ids], pa.float64()),
        "segment": pa.array([maybe(r.choice(["gold", "silver", "bronze"])) for _ in ids], pa.string()),
        "city": pa.array([r.choice(CITIES) for _ in ids], pa.string()),
        "is_active": pa.array([maybe(r.random() < 0.5) for _ in ids], pa.bool_()),
        "has_app": pa.array([r.random() < 0.5 for _ in ids], pa.bool_()),
        "last_order_at": pa.array([when - timedelta(days=r.randrange(1, 400)) for _ in range(n)],
                                  pa.timestamp("us", "UTC")),
        "tags": pa.array([r.sample(["web", "app", "store", "promo"], r.randrange(1, 3)) for _ in ids],
                         pa.list_(pa.string())),
    })


def definitions(parquet: Path) -> tuple[FeatureView, FeatureService, list[Any]]:
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    view = FeatureView(
        name=VIEW, entities=[customer], ttl=timedelta(days=3650), online=True,
        schema=[Field(name="customer_id", dtype=String)] + [Field(name=n, dtype=t) for n, t in SCHEMA.items()],
        source=FileSource(name="customer_profile_source", path=str(parquet), timestamp_field="event_timestamp"),
    )
    service = FeatureService(name="churn_inputs", features=[view[["age", "clv", "segment", "is_active", "tags"]]])
    return view, service, [customer, view, service]


def make_store(root: Path, parquet: Path, online_store: dict[str, Any]) -> FeatureStore:
    root.mkdir(parents=True)
    (root / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "c360_test", "provider": "local", "registry": str(root / "registry.db"),
        "offline_store": {"type": "duckdb"}, "online_store": online_store,
        "entity_key_serialization_version": 3,
        "materialization_config": {"online_write_batch_size": 64},  # several batches even on 200 rows
    }))
    store = FeatureStore(repo_path=str(root))
    store.apply(definitions(parquet)[2])
    return store


def ours(path: Path) -> dict[str, Any]:
    return {"type": "c360.features.online_store.C360OnlineStore", "path": str(path), "write_batch_size": 70}


def online(store: FeatureStore, ids: list[str], features: Any = None) -> dict[str, list[Any]]:
    return store.get_online_features(features=features or FEATURES,
                                     entity_rows=[{"customer_id": c} for c in ids]).to_dict()


def dump(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT entity_key, event_ts, created_ts, vals FROM c360_test_{VIEW} "
                            "ORDER BY entity_key").fetchall()


IDS = [f"C{i:05d}" for i in range(N)]
OLDER, NEWER = rows(1, BASE, IDS), rows(2, BASE + timedelta(days=30), IDS)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("online")
    parquet = tmp / "profile.parquet"
    pq.write_table(pa.concat_tables([OLDER, NEWER]), parquet)
    feast_sqlite = make_store(tmp / "feast_sqlite", parquet, {"type": "sqlite", "path": str(tmp / "feast.db")})
    ours_mat = make_store(tmp / "ours_mat", parquet, ours(tmp / "ours_mat.db"))
    ours_arrow = make_store(tmp / "ours_arrow", parquet, ours(tmp / "ours_arrow.db"))
    for store in (feast_sqlite, ours_mat):
        store.materialize(BASE - timedelta(days=1), BASE + timedelta(days=60))
    # Older and newer rows in one table, newer last: the newer must win inside one write too.
    assert bulk_writer(feast_sqlite.config) is None  # Feast's stores: materialize is the way in
    writer = bulk_writer(ours_arrow.config)
    assert writer is not None
    written = writer.write_arrow(ours_arrow.config, ours_arrow.get_feature_view(VIEW), pq.read_table(parquet))
    assert written == 2 * N
    return {"feast": feast_sqlite, "ours_mat": ours_mat, "ours_arrow": ours_arrow, "tmp": tmp}


def test_all_three_stores_answer_alike_and_hold_the_newest_rows(stores: dict[str, Any]) -> None:
    sample = [*random.Random(0).sample(IDS, 40), "nobody", "C99999"]
    answers = {name: online(stores[name], sample) for name in ("feast", "ours_mat", "ours_arrow")}
    assert answers["ours_mat"] == answers["feast"]
    assert answers["ours_arrow"] == answers["feast"]

    got = answers["ours_arrow"]
    newest = {c: i for i, c in enumerate(NEWER.column("customer_id").to_pylist())}
    for name in SCHEMA:
        expected = [NEWER.column(name)[newest[c]].as_py() if c in newest else None for c in sample]
        if name == "clv":
            expected = [None if v != v else v for v in expected]  # NaN → null, as Feast does
        if name == "last_order_at":
            expected = [v and int(v.timestamp()) for v in expected]
            got_name = [v and int(v.timestamp()) for v in got[name]]
        else:
            got_name = got[name]
        assert got_name == expected, name
    assert got["age"][-2:] == [None, None]  # unknown customers


def test_feature_service_reads_alike(stores: dict[str, Any]) -> None:
    sample = [*IDS[:25], "nobody"]
    answers = [online(stores[name], sample, stores[name].get_feature_service("churn_inputs"))
               for name in ("feast", "ours_mat", "ours_arrow")]
    assert answers[0] == answers[1] == answers[2]
    assert set(answers[0]) == {"customer_id", "age", "clv", "segment", "is_active", "tags"}


def test_direct_read_answers_as_feasts_get_online_features(stores: dict[str, Any]) -> None:
    """`OnlineReader` (the service's read): Feast's `to_dict(include_event_timestamps=True)`, value for value,
    straight from our store and through Feast for Feast's own store."""
    from c360.features.store import OnlineReader

    sample = [*random.Random(1).sample(IDS, 30), "nobody"]
    for name in ("ours_arrow", "feast"):
        store = stores[name]
        reader = OnlineReader.of(store, lambda view, feature: True)
        assert (reader.direct is not None) == (name == "ours_arrow")
        feast = store.get_online_features(features=reader.refs, entity_rows=[{"customer_id": c} for c in sample])
        expected = feast.to_dict(include_event_timestamps=True)
        got = reader.read(sample)
        names = [n for _, features in reader.views for n in features]
        assert len(names) == len(SCHEMA)
        for key in [*names, *(f"{n}__ts" for n in names)]:
            assert got[key] == expected[key], (name, key)
        assert got["age__ts"][-1] == 0 and got["age"][-1] is None


def test_bulk_write_stores_the_same_bytes_as_feasts_materialize(stores: dict[str, Any]) -> None:
    tmp = stores["tmp"]
    assert dump(tmp / "ours_arrow.db") == dump(tmp / "ours_mat.db")
    assert len(dump(tmp / "ours_arrow.db")) == N


def test_online_read_returns_only_requested_features_and_none_for_missing(stores: dict[str, Any]) -> None:
    store = stores["ours_arrow"]
    view = store.get_feature_view(VIEW)
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=c)]) for c in ("C00003", "zz")]
    (ts, values), missing = C360OnlineStore().online_read(store.config, view, keys, ["segment", "age"])
    assert missing == (None, None)
    assert values is not None and set(values) == {"segment", "age"} and isinstance(values["age"], Value)
    assert ts is not None and ts.tzinfo is not None and ts >= BASE + timedelta(days=30)


@pytest.fixture
def fresh(tmp_path: Path) -> FeatureStore:
    parquet = tmp_path / "profile.parquet"
    pq.write_table(NEWER, parquet)
    return make_store(tmp_path / "repo", parquet, ours(tmp_path / "ours.db"))


def test_newer_event_wins_and_rewriting_is_idempotent(fresh: FeatureStore, tmp_path: Path) -> None:
    view, ours_store = fresh.get_feature_view(VIEW), C360OnlineStore()
    ours_store.write_arrow(fresh.config, view, NEWER)
    before = dump(tmp_path / "ours.db")
    ours_store.write_arrow(fresh.config, view, NEWER)  # the same rows again
    ours_store.write_arrow(fresh.config, view, OLDER)  # older rows: ignored
    assert dump(tmp_path / "ours.db") == before
    assert online(fresh, IDS[:5], [f"{VIEW}:age"])["age"] == NEWER.column("age").to_pylist()[:5]

    # Feast's own write path (online_write_batch) honours the timestamps as well.
    older_row = OLDER.slice(0, 1).to_pandas()
    fresh.write_to_online_store(VIEW, older_row)
    assert dump(tmp_path / "ours.db") == before
    newer_row = NEWER.slice(0, 1).to_pandas().assign(age=123, event_timestamp=BASE + timedelta(days=90))
    fresh.write_to_online_store(VIEW, newer_row)
    assert online(fresh, [IDS[0]], [f"{VIEW}:age"])["age"] == [123]

    # Through write_arrow: a newer row replaces, whatever the order inside one table.
    newest = NEWER.slice(1, 1).set_column(2, "age", pa.array([77], pa.int64())).set_column(
        1, "event_timestamp", pa.array([BASE + timedelta(days=91)], pa.timestamp("us", "UTC")))
    ours_store.write_arrow(fresh.config, view, pa.concat_tables([newest, NEWER.slice(1, 1)]))
    assert online(fresh, [IDS[1]], [f"{VIEW}:age"])["age"] == [77]
    assert len(dump(tmp_path / "ours.db")) == N


def test_teardown_removes_the_data(fresh: FeatureStore, tmp_path: Path) -> None:
    view = fresh.get_feature_view(VIEW)
    C360OnlineStore().write_arrow(fresh.config, view, NEWER)
    assert online(fresh, IDS[:3], [f"{VIEW}:has_app"])["has_app"] != [None] * 3
    C360OnlineStore().teardown(fresh.config, [view], [])  # another store object, as another process would
    assert not (tmp_path / "ours.db").exists()
    assert online(fresh, IDS[:3], [f"{VIEW}:has_app"])["has_app"] == [None] * 3
    fresh.teardown()  # the FeatureStore's own teardown is fine with a store already gone
    assert not (tmp_path / "ours.db").exists()


def test_bulk_write_falls_back_to_feasts_conversion_where_it_would_differ(
        fresh: FeatureStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Feast reads an int64 column with nulls through float64, so 2**60 + 1 comes out as 2**60; the fast encoder
    # would keep it exact. write_arrow notices on its probe rows and stores what Feast would, also after writing
    # the column's ordinary values (compared once per shape) in the same process.
    view = fresh.get_feature_view(VIEW)
    ages = [2**60 + 1, None, *NEWER.column("age").to_pylist()[2:]]
    table = NEWER.set_column(NEWER.schema.get_field_index("age"), "age", pa.array(ages, pa.int64()))
    C360OnlineStore().write_arrow(fresh.config, view, NEWER.set_column(
        NEWER.schema.get_field_index("age"), "age", pa.array([None, *ages[2:], 5], pa.int64())))
    with caplog.at_level("WARNING", logger="c360.features.online_store"):
        C360OnlineStore().write_arrow(fresh.config, view, table)
    assert "['age']" in caplog.text
    assert online(fresh, IDS[:2], [f"{VIEW}:age"])["age"] == [2**60, None]


def test_bulk_write_of_the_test_data_needs_no_fallback(fresh: FeatureStore, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="c360.features.online_store"):
        C360OnlineStore().write_arrow(fresh.config, fresh.get_feature_view(VIEW), pa.concat_tables([OLDER, NEWER]))
    assert "write_arrow" not in caplog.text


def test_rows_stay_readable_when_the_view_gains_and_loses_features(fresh: FeatureStore, tmp_path: Path) -> None:
    C360OnlineStore().write_arrow(fresh.config, fresh.get_feature_view(VIEW), NEWER)
    view = fresh.get_feature_view(VIEW)
    changed = FeatureView(
        name=VIEW, entities=[fresh.get_entity("customer")], ttl=view.ttl, online=True, source=view.batch_source,
        schema=[Field(name="customer_id", dtype=String), Field(name="loyalty_points", dtype=Int64)]
        + [Field(name=n, dtype=t) for n, t in SCHEMA.items() if n != "city"],
    )
    fresh.apply([changed])
    got = online(fresh, IDS[:3], [f"{VIEW}:loyalty_points", f"{VIEW}:segment"])
    assert got["loyalty_points"] == [None] * 3  # not written yet
    assert got["segment"] == NEWER.column("segment").to_pylist()[:3]



def two_views(store: FeatureStore) -> list[FeatureView]:
    """The test view and a second one over the same source (city only)."""
    profile = store.get_feature_view(VIEW)
    extra = FeatureView(name="customer_extra", entities=[store.get_entity("customer")], ttl=profile.ttl, online=True,
                        source=profile.batch_source,
                        schema=[Field(name="customer_id", dtype=String), Field(name="city", dtype=String)])
    store.apply([extra])
    return [profile, extra]


def event_seconds(store: FeatureStore, reader: C360OnlineStore, views: list[FeatureView]) -> tuple[list[int], ...]:
    """Event times of the first 20 customers in both views, through one `read_columns`."""
    got = reader.read_columns(store.config, [(views[0], ["age"]), (views[1], ["city"])],
                              [{"customer_id": c} for c in IDS[:20]])
    return got["age__ts"], got["city__ts"]


def seconds(table: pa.Table, shift: int = 0) -> list[int]:
    return [int(t.timestamp()) + shift for t in table.column("event_timestamp").to_pylist()[:20]]


def test_a_transaction_commits_all_its_views_at_once_or_nothing(fresh: FeatureStore) -> None:
    views, writer, reader = two_views(fresh), C360OnlineStore(), C360OnlineStore()
    with pytest.raises(RuntimeError, match="killed"), writer.transaction(fresh.config):
        writer.write_arrow(fresh.config, views[0], OLDER)  # the first write of each view's layout, rolled back
        raise RuntimeError("killed")
    assert event_seconds(fresh, reader, views) == ([0] * 20, [0] * 20)
    for view in views:
        writer.write_arrow(fresh.config, view, OLDER)  # the same writer: it writes the rolled-back layout again
    with writer.transaction(fresh.config):
        for view in views:
            writer.write_arrow(fresh.config, view, NEWER)
        # Unseen until the commit, from a new connection too.
        assert event_seconds(fresh, C360OnlineStore(), views) == (seconds(OLDER), seconds(OLDER))
    assert event_seconds(fresh, reader, views) == (seconds(NEWER), seconds(NEWER))


def test_a_small_commit_is_checkpointed_by_a_thread_and_a_large_one_at_once(
        fresh: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit writes its frames to the WAL; the copy into the database file follows in a thread (the main file
    alone, read `immutable`, shows the rows within seconds, the WAL keeps its size), unless the WAL is over
    `WAL_TRUNCATE_BYTES`: then at once, the WAL truncated."""
    db, view = tmp_path / "ours.db", fresh.get_feature_view(VIEW)
    wal = db.with_name(db.name + "-wal")

    def in_the_file() -> int:
        with closing(sqlite3.connect(f"file:{db}?immutable=1", uri=True)) as con:
            try:
                return con.execute(f"SELECT count(*) FROM c360_test_{VIEW}").fetchone()[0]
            except sqlite3.OperationalError:  # the table itself is not copied yet
                return 0

    C360OnlineStore().write_arrow(fresh.config, view, OLDER)
    deadline = time.monotonic() + 10
    while in_the_file() < len(IDS) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_the_file() == len(IDS) and wal.stat().st_size > 0
    monkeypatch.setattr(online_store, "WAL_TRUNCATE_BYTES", 1)
    C360OnlineStore().write_arrow(fresh.config, view, NEWER)
    assert wal.stat().st_size == 0


def test_a_read_of_several_views_sees_one_commit(fresh: FeatureStore, tmp_path: Path) -> None:
    """`read_columns` reads its views in one statement: a write committing right before the statement that reads the
    second view (SQLite's trace hook) is seen in both views or in neither, never a mix of the two."""
    views, reader = two_views(fresh), C360OnlineStore()
    for view in views:
        reader.write_arrow(fresh.config, view, OLDER)
    assert event_seconds(fresh, reader, views) == (seconds(OLDER), seconds(OLDER))
    with closing(sqlite3.connect(tmp_path / "ours.db")) as other:
        for view in views:
            other.execute(f"UPDATE c360_test_{view.name} SET event_ts = event_ts + 1000000")  # one second later

        def commit_before_the_second_view(sql: str) -> None:
            if "customer_extra" in sql:
                other.commit()

        assert reader._conn is not None
        reader._conn.set_trace_callback(commit_before_the_second_view)
        first, second = event_seconds(fresh, reader, views)
        assert first == second and first in (seconds(OLDER), seconds(OLDER, 1))
        reader._conn.set_trace_callback(None)
    assert event_seconds(fresh, reader, views) == (seconds(OLDER, 1), seconds(OLDER, 1))


def test_a_read_over_sqlites_variable_limit_reads_view_by_view(fresh: FeatureStore) -> None:
    """One statement binds every view's keys; past SQLite's limit on bound values the views are read one by one,
    with the same answer."""
    views, reader = two_views(fresh), C360OnlineStore()
    for view in views:
        reader.write_arrow(fresh.config, view, OLDER)
    whole = event_seconds(fresh, reader, views)
    assert reader._conn is not None
    reader._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 30)  # 2 views x 20 keys over it, one view's under
    assert event_seconds(fresh, reader, views) == whole == (seconds(OLDER), seconds(OLDER))
