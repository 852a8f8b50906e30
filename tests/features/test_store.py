"""The online store is one setting away: the same features through c360's and Feast's SQLite stores and through
c360's Redis store; feature_store.yaml on either engine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from c360.core.settings import Settings
from c360.features import compute, store

AS_OF = pd.Timestamp("2026-06-01")


@pytest.fixture(scope="module")
def snapshot(resolved: tuple[Path, Path]) -> pd.DataFrame:
    with duckdb.connect(str(resolved[0] / "warehouse.duckdb"), read_only=True) as con:
        return compute.build(con, AS_OF)


def round_trip(s: Settings, snapshot: pd.DataFrame) -> None:
    store.write_snapshot(s, snapshot)
    fs = store.apply(s)
    assert store.materialize(s) == len(snapshot)
    some = snapshot.sample(25, random_state=6)["customer_id"].tolist()
    got = store.online_features(fs, some).set_index("customer_id")
    want = snapshot.set_index("customer_id").loc[some, got.columns]
    pd.testing.assert_frame_equal(got.loc[some], want, check_dtype=False)


@pytest.mark.parametrize("kind", ["sqlite", "c360"])
def test_sqlite_stores_serve_the_snapshot(kind: str, snapshot: pd.DataFrame, tmp_path: Path) -> None:
    round_trip(Settings(home=tmp_path, online_store=kind), snapshot)


def test_redis_store_serves_the_snapshot(redis_url: str, snapshot: pd.DataFrame, tmp_path: Path) -> None:
    round_trip(Settings(home=tmp_path, online_store="redis", redis_url=redis_url), snapshot)


@pytest.mark.parametrize("name", ["duckdb", "spark"])
def test_feast_cli_reads_the_written_feature_store_yaml(name: str, snapshot: pd.DataFrame, tmp_path: Path) -> None:
    """`apply` writes feature_store.yaml equal to the RepoConfig built in code (on Spark: Feast's Spark offline
    store with c360's session settings), and Feast's own CLI reads it."""
    from feast.repo_config import load_repo_config

    if name == "spark" and importlib.util.find_spec("pyspark") is None:
        pytest.skip("pyspark is not installed (the `spark` extra)")
    s = Settings(home=tmp_path, engine=name)
    store.write_snapshot(s, snapshot)
    fs = store.apply(s)
    loaded, built = load_repo_config(s.feast, s.feast / "feature_store.yaml"), store.repo_config(s)
    for part in ("project", "registry", "online_store", "offline_store", "materialization_config",
                 "entity_key_serialization_version"):
        assert getattr(loaded, part) == getattr(built, part), part
    feast = Path(sys.executable).with_name("feast")
    listed = subprocess.run([str(feast), "-c", str(s.feast), "feature-views", "list"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert {v.name for v in fs.list_feature_views()} <= set(listed.stdout.split())
