"""c360's Redis online store against Feast's own Redis store, on the tiny Feast repo of test_online_store.py and a
redis-server from Debian (skipped with the reason when it is not installed).

Feast's store filled by its `materialize` (Redis database 1) and ours filled by `write_arrow` (database 2) must hold
the same keys with the same bytes, so that Feast's reads (`get_online_features`, `feast serve`) answer alike.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from redis import Redis
from redis.exceptions import ResponseError

from c360.features.redis_store import C360RedisOnlineStore, bulk_writer
from c360.features.store import OnlineReader
from tests.features.test_online_store import BASE, IDS, SCHEMA, VIEW, make_store, online, rows

# Microseconds on every event time (Timestamp's nanos field), and one before 1970 (negative seconds).
MICROS = pa.array([random.Random(3).randrange(1_000_000) for _ in IDS], pa.duration("us"))
OLDER = rows(11, BASE, IDS)
NEWER = rows(12, BASE + timedelta(days=30), IDS)
NEWER = NEWER.set_column(1, "event_timestamp", pc.add(NEWER.column("event_timestamp"), MICROS))


def ours(url: str, db: int, **options: Any) -> dict[str, Any]:
    return {"type": "c360.features.redis_store.C360RedisOnlineStore", "connection_string": f"{url},db={db}",
            "write_batch_size": 70, "rows_per_call": 16, **options}


def client(url: str, db: int) -> Redis:
    host, port = url.split(":")
    return Redis(host=host, port=int(port), db=db)


def dump(url: str, db: int) -> dict[bytes, dict[bytes, bytes]]:
    r = client(url, db)
    return {key: r.hgetall(key) for key in r.scan_iter()}


@pytest.fixture(scope="module")
def stores(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, FeatureStore]:
    tmp = tmp_path_factory.mktemp("redis_online")
    parquet = tmp / "profile.parquet"
    pq.write_table(pa.concat_tables([OLDER, NEWER]), parquet)
    for db in (1, 2):
        client(redis_url, db).flushdb()
    feast = make_store(tmp / "feast", parquet, {"type": "redis", "connection_string": f"{redis_url},db=1"})
    feast.materialize(BASE - timedelta(days=1), BASE + timedelta(days=60))
    assert bulk_writer(feast.config) is None  # Feast's own Redis store: materialize is the way in
    arrow = make_store(tmp / "ours", parquet, ours(redis_url, 2))
    writer = bulk_writer(arrow.config)
    assert writer is not None
    # Older and newer rows in one table, newer last: the newer must win inside one write too.
    assert writer.write_arrow(arrow.config, arrow.get_feature_view(VIEW), pq.read_table(parquet)) == 2 * len(IDS)
    return {"feast": feast, "ours": arrow}


def test_bulk_write_stores_the_same_bytes_as_feasts_redis_materialize(stores: dict[str, FeatureStore],
                                                                      redis_url: str) -> None:
    feast, ours_ = dump(redis_url, 1), dump(redis_url, 2)
    assert len(ours_) == len(IDS)
    assert ours_ == feast


def test_feast_reads_what_the_bulk_path_wrote(stores: dict[str, FeatureStore]) -> None:
    sample = [*random.Random(0).sample(IDS, 40), "nobody"]
    assert online(stores["ours"], sample) == online(stores["feast"], sample)
    newest = {c: i for i, c in enumerate(NEWER.column("customer_id").to_pylist())}
    got = online(stores["ours"], sample, [f"{VIEW}:segment"])["segment"]
    assert got == [NEWER.column("segment")[newest[c]].as_py() if c in newest else None for c in sample]


def test_direct_read_answers_as_feasts_get_online_features(stores: dict[str, FeatureStore]) -> None:
    sample = [*random.Random(1).sample(IDS, 30), "nobody"]
    store = stores["ours"]
    reader = OnlineReader.of(store, lambda view, feature: True)
    assert isinstance(reader.direct, C360RedisOnlineStore)
    expected = store.get_online_features(features=reader.refs, entity_rows=[{"customer_id": c} for c in sample]
                                         ).to_dict(include_event_timestamps=True)
    got = reader.read(sample)
    names = [n for _, features in reader.views for n in features]
    assert len(names) == len(SCHEMA)
    for key in [*names, *(f"{n}__ts" for n in names)]:
        assert got[key] == expected[key], key
    assert got["age__ts"][-1] == 0 and got["age"][-1] is None


def empty_store(redis_url: str, tmp_path: Path, **options: Any) -> FeatureStore:
    """A repo over the newer rows, its online store ours in Redis database 3, emptied."""
    client(redis_url, 3).flushdb()
    parquet = tmp_path / "profile.parquet"
    pq.write_table(NEWER, parquet)
    return make_store(tmp_path / "repo", parquet, ours(redis_url, 3, **options))


@pytest.fixture
def fresh(redis_url: str, tmp_path: Path) -> FeatureStore:
    return empty_store(redis_url, tmp_path)


def test_newer_event_wins_and_a_tie_goes_to_the_later_write(fresh: FeatureStore, redis_url: str) -> None:
    view, store = fresh.get_feature_view(VIEW), C360RedisOnlineStore()
    store.write_arrow(fresh.config, view, NEWER)
    before = dump(redis_url, 3)
    store.write_arrow(fresh.config, view, OLDER)  # older rows: ignored
    assert dump(redis_url, 3) == before
    ages = pa.array(range(len(IDS)), pa.int64())
    store.write_arrow(fresh.config, view, NEWER.set_column(NEWER.schema.get_field_index("age"), "age", ages))
    assert online(fresh, IDS[:3], [f"{VIEW}:age"])["age"] == [0, 1, 2]  # same times: the later write wins


def test_a_row_before_1970_and_a_key_ttl(redis_url: str, tmp_path: Path) -> None:
    """Negative seconds are 10-byte varints in the Timestamp, and a later row still replaces such a row; Feast's
    `key_ttl_seconds` sets each key's expiry."""
    fresh = empty_store(redis_url, tmp_path, key_ttl_seconds=3600)
    view, config = fresh.get_feature_view(VIEW), fresh.config
    moon = datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC)
    row = NEWER.slice(0, 1)
    C360RedisOnlineStore().write_arrow(config, view, row.set_column(1, "event_timestamp", pa.array(
        [moon], pa.timestamp("us", "UTC"))))
    (key,) = list(client(redis_url, 3).scan_iter())
    assert 0 < client(redis_url, 3).ttl(key) <= 3600
    reader = OnlineReader.of(fresh, lambda view, feature: feature == "city")
    assert reader.read([IDS[0]])["city__ts"] == [int(moon.timestamp())]
    C360RedisOnlineStore().write_arrow(config, view, row)
    assert reader.read([IDS[0]])["city__ts"] == [int(row.column("event_timestamp")[0].as_py().timestamp())]


def test_a_redis_error_is_raised(fresh: FeatureStore, redis_url: str) -> None:
    """A key holding another type (here a string) makes the script fail: the error comes back to the caller."""
    view = fresh.get_feature_view(VIEW)
    store = C360RedisOnlineStore()
    store.write_arrow(fresh.config, view, NEWER.slice(0, 1))
    (key,) = list(client(redis_url, 3).scan_iter())
    client(redis_url, 3).set(key, b"not a hash")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        store.write_arrow(fresh.config, view, NEWER.slice(0, 40))
    store.write_arrow(fresh.config, view, NEWER.slice(1, 3))  # the next write on the same client works
    assert online(fresh, IDS[1:4], [f"{VIEW}:age"])["age"] == NEWER.column("age").to_pylist()[1:4]


def test_no_bulk_path_on_a_cluster(redis_url: str, tmp_path: Path) -> None:
    assert bulk_writer(empty_store(redis_url, tmp_path, redis_type="redis_cluster").config) is None
