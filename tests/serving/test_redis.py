"""The serving tests' core with `C360_ONLINE_STORE=redis`, on a redis-server from Debian the tests start (skipped
with the reason when it is not installed).

This module's `served` is a copy of the session's served home whose online store is Redis, filled by
`c360 features materialize` and the batch scores' push, its SQLite online file removed (nothing may read it). The
profile, batch and live-event tests below are the SQLite home's own, imported to run again on it; the erasure test
is this module's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import keys
from c360.core.settings import Settings
from c360.features import store
from c360.serving import batch
from tests.serving import test_live
from tests.serving.conftest import bearer, home_copy
from tests.serving.test_batch import (  # noqa: F401  (run here again, on the Redis home)
    test_live_scores_equal_batch_scores,
    test_online_store_holds_the_latest_scores,
)
from tests.serving.test_service import (  # noqa: F401
    service,
    test_profile_has_past_present_future_from_the_batch,
    test_unknown_customer_is_not_found,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def served(served: Settings, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The session's served home copied, its online store Redis (a database of its own): materialized and the
    batch scores pushed there."""
    from redis import Redis

    host, port = redis_url.split(":")
    Redis(host=host, port=int(port), db=5).flushdb()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_ONLINE_STORE", "redis")
        patch.setenv("C360_REDIS_URL", f"{redis_url},db=5")
        with home_copy(served, tmp_path_factory.mktemp("redis_served")) as s:
            assert s.online_store == "redis"
            (s.feast / "online.db").unlink()
            assert store.materialize(s) == len(store.read_snapshot(s, store.snapshot_dates(s)[-1]))
            batch.score(s, chunk_size=1000)
            yield s


@pytest.fixture(scope="module")
def admin(served: Settings) -> dict[str, str]:
    """An admin key of this module's home (the session's keys belong to the session's home)."""
    return bearer(keys.create(served, "redis-admin", "admin", replace_active=True))


def redis_keys(s: Settings) -> int:
    from redis import Redis

    host, rest = s.redis_url.split(":", 1)
    port, db = rest.split(",db=")
    return Redis(host=host, port=int(port), db=int(db)).dbsize()


def test_the_online_store_is_redis(served: Settings) -> None:
    fs = store.feature_store(served)
    assert type(store.bulk_writer(fs.config)).__name__ == "C360RedisOnlineStore"
    assert redis_keys(served) == len(store.read_snapshot(served, store.snapshot_dates(served)[-1]))
    assert not (served.feast / "online.db").exists()


def test_erasure_deletes_the_customers_redis_key(served: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    with pytest.MonkeyPatch.context() as patch:  # a copy of its own: the other tests keep every customer
        patch.setenv("C360_REDIS_URL", f"{served.redis_url.split(',')[0]},db=6")
        with home_copy(served, tmp_path_factory.mktemp("redis_erase")) as s:
            store.materialize(s)
            customer = store.read_snapshot(s, store.snapshot_dates(s)[-1])["customer_id"].iloc[0]
            fs = store.feature_store(s)
            before = redis_keys(s)
            assert store.online_features(fs, [customer])["customer_id"].tolist() == [customer]
            result = runner.invoke(app, ["privacy", "erase", "--customer-id", customer, "--json"])
            assert result.exit_code == 0, result.output
            assert redis_keys(s) == before - 1
            reader = store.OnlineReader.of(fs, lambda view, feature: True)
            assert not any(v[0] for k, v in reader.read([customer]).items() if k.endswith("__ts"))


# Last: its events change customers' online rows, which the tests above compare with the batch scores.
live = test_live.live
test_an_event_is_in_the_profile_when_the_post_answers = test_live.test_an_event_is_in_the_profile_when_the_post_answers
