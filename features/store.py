"""The Feast feature store of c360: configuration from settings, snapshots in, features out (thin I/O)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from c360.core import connections, engine, locks
from c360.core.definitions import BY_NAME
from c360.core.settings import Settings

# Feast takes about 5 s to import: it is imported where a function needs it, so that a command reading only the
# snapshot files (and `c360 --help`) starts without it.
if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView, RepoConfig
    from feast.data_source import DataSource

    from c360.features.online_store import C360OnlineStore
    from c360.features.redis_store import C360RedisOnlineStore

    BulkStore = C360OnlineStore | C360RedisOnlineStore


def online_store_config(s: Settings) -> dict:
    from c360.features import online_store, redis_store

    path = str((s.feast / "online.db").resolve())
    return {
        "c360": {"type": online_store.STORE_TYPE, "path": path},
        "sqlite": {"type": "sqlite", "path": path},
        "redis": {"type": redis_store.STORE_TYPE, "connection_string": s.redis_url},
    }[s.online_store]


def offline_store_config(s: Settings) -> dict:
    """Feast's offline store of the settings' engine: its DuckDB store, or its Spark store with c360's Spark
    settings (for Feast's own tools; in c360's processes `offline` starts c360's session first, which Feast's
    store then uses)."""
    if s.engine == "spark":
        return {"type": "spark", "spark_conf": engine.spark_conf(s)}
    return {"type": "duckdb"}


def bulk_writer(config: RepoConfig) -> BulkStore | None:
    """The store to call `write_views` and `read_columns` on when feature_store.yaml selects one of c360's (SQLite,
    or Redis on a single server); None for Feast's own stores."""
    from c360.features import online_store, redis_store

    return online_store.bulk_writer(config) or redis_store.bulk_writer(config)


def repo_config(s: Settings) -> RepoConfig:
    from feast import RepoConfig
    from feast.repo_config import RegistryConfig

    s.feast.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project="c360",
        provider="local",
        registry=RegistryConfig(path=str((s.feast / "registry.db").resolve()), cache_ttl_seconds=60),
        offline_store=offline_store_config(s),
        online_store=online_store_config(s),
        entity_key_serialization_version=3,
        # Without a batch size Feast 0.67's materialize converts only the first record batch: rows vanish.
        materialization_config={"online_write_batch_size": 20_000},
        repo_path=s.feast.resolve(),
    )


def write_yaml(s: Settings) -> Path:
    """Write `repo_config(s)` as `C360_HOME/feast/feature_store.yaml`, for Feast's own tools (`feast -c FOLDER`);
    returns the folder."""
    # Not RepoConfig.write_to_path: it writes the field names (`registry_config:`), which Feast cannot read back.
    config = repo_config(s).model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"repo_path"})
    (s.feast / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return s.feast


def feature_store(s: Settings) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(s))


class EngineMismatch(ValueError):
    """The registry's sources are for another engine's offline store than the settings name."""


def offline(s: Settings) -> FeatureStore:
    """The feature store for reads through the offline store (historical retrievals, Feast's materialize), on the
    settings' engine: with Spark, c360's session is started first, so that Feast's store runs in it (one session
    per process, with c360's settings). EngineMismatch when the registry was applied on the other engine."""
    store = feature_store(s)
    applied = source_engine(store.get_data_source("customer_features"))
    if applied != s.engine:
        raise EngineMismatch(f"the feature registry was applied for the {applied} engine, C360_ENGINE is {s.engine}: "
                             f"run `c360 features apply` on {s.engine}")
    if s.engine == "spark":
        engine.spark()
    return store


def source_engine(source: DataSource) -> str:
    """The engine whose offline store reads `source` (feature_repo.sources.parquet_source)."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    return "spark" if isinstance(source, SparkSource) else "duckdb"


def write_snapshot(s: Settings, snapshot: pd.DataFrame) -> Path:
    """Write (or replace) the snapshot of one as-of date: into a hidden file swapped in whole, so a run killed
    midway never leaves a truncated snapshot for training, scoring or the service to read."""
    as_of = pd.Timestamp(snapshot["as_of"].iloc[0])
    s.snapshots.mkdir(parents=True, exist_ok=True)
    path = snapshot_path(s, as_of)
    part = path.with_name(f".{path.name}.part")
    snapshot.to_parquet(part, index=False)
    part.replace(path)
    return path


def snapshot_dates(s: Settings) -> list[pd.Timestamp]:
    return sorted(pd.Timestamp(p.stem.split("=")[1]) for p in s.snapshots.glob("as_of=*.parquet"))


def latest_snapshot_date(s: Settings) -> pd.Timestamp:
    """The latest snapshot's as-of date; a clear error when none was built."""
    dates = snapshot_dates(s)
    if not dates:
        raise FileNotFoundError(f"no feature snapshots in {s.snapshots}: run `c360 features build` first")
    return dates[-1]


def snapshot_path(s: Settings, as_of: pd.Timestamp) -> Path:
    return s.snapshots / f"as_of={as_of:%Y-%m-%d}.parquet"


def snapshot_rows(s: Settings, as_of: pd.Timestamp) -> int:
    """The customers of one snapshot, from its Parquet footer."""
    return int(pq.ParquetFile(snapshot_path(s, as_of)).metadata.num_rows)


def read_snapshot(s: Settings, as_of: pd.Timestamp) -> pd.DataFrame:
    return pd.read_parquet(snapshot_path(s, as_of))


def rewriting_snapshots(s: Settings, wait: bool = True) -> AbstractContextManager[bool]:
    """The lock of the processes that rewrite the snapshots folder's files (`locks.flocked`: False at once when
    another process holds it and not `wait`). The live files' merge (`live.compact`) and an erasure take it: a merge
    reading the files while an erasure rewrites them would bring back the erased rows."""
    s.snapshots.mkdir(parents=True, exist_ok=True)
    return locks.flocked(s.snapshots / ".rewrite.lock", wait)


def history(s: Settings, customer_id: str) -> pd.DataFrame:
    """All snapshots of one customer, oldest first (distinct rows: a merged live file's sources stay a while,
    `live.compact`)."""
    glob = str(s.snapshots / "*.parquet")
    return connections.local().execute(f"SELECT DISTINCT * FROM read_parquet('{glob}') WHERE customer_id = $id "
                                       "ORDER BY as_of", {"id": customer_id}).df()


def apply(s: Settings) -> FeatureStore:
    from c360.feature_repo import definitions

    latest_snapshot_date(s)  # the registry's sources need a snapshot: say so, before Feast does
    store = feature_store(s)
    store.apply(definitions(str(s.snapshots.resolve()), str(s.scores.resolve()), s.engine))
    write_yaml(s)
    return store


def plan(s: Settings) -> str:
    """Feast's plan of what `apply` would change in the registry, as text."""
    from feast.project import Project
    from feast.repo_contents import RepoContents

    from c360.feature_repo import definitions

    objects = definitions(str(s.snapshots.resolve()), str(s.scores.resolve()), s.engine)
    kinds = {"entities": "Entity", "feature_views": "FeatureView", "feature_services": "FeatureService"}
    contents = RepoContents(
        projects=[Project(name="c360")], data_sources=[], on_demand_feature_views=[], stream_feature_views=[],
        label_views=[], permissions=[],
        **{field: [o for o in objects if type(o).__name__ == kind] for field, kind in kinds.items()})
    registry_diff, infra_diff, _ = feature_store(s).plan(contents)
    return registry_diff.to_string() + infra_diff.to_string()


def materialize(s: Settings, as_of: pd.Timestamp | None = None) -> int:
    """Load the latest snapshot (or the one of `as_of`) into the online store; returns rows written per view.

    c360's stores take the rows straight from Arrow. The SQLite one switches all views at once: one transaction, so
    readers see the old snapshot or the new one, and a run killed midway leaves the old one serving (the next run
    starts over). The Redis one switches each customer's views at once, a few hundred customers at a time. Feast's
    stores go through Feast's own materialize (which reads through the offline store of the settings' engine), view
    by view and batch by batch: a killed run leaves some views (or customers) on the new snapshot and the rest on the
    old.
    """
    store = feature_store(s)
    latest = latest_snapshot_date(s)
    as_of = as_of or latest
    views = snapshot_views(store.list_feature_views())
    path = snapshot_path(s, as_of)
    writer = bulk_writer(store.config)
    if writer is None:
        offline(s).materialize(start_date=datetime(1970, 1, 1), end_date=as_of.to_pydatetime(),
                               feature_views=[v.name for v in views])
        return len(pd.read_parquet(path, columns=["customer_id"]))
    table = pq.read_table(path)
    writer.write_views(store.config, [(view, table.select(["customer_id", "as_of", *(f.name for f in view.features)]))
                                      for view in views])
    return table.num_rows


def snapshot_views(views: Iterable[FeatureView]) -> list[FeatureView]:
    """Those of `views` that hold the snapshots' features; `predictions` is filled by `c360 score`
    (serving.batch)."""
    return [v for v in views if v.batch_source is not None and v.batch_source.name == "customer_features"]


def write_online(store: FeatureStore, rows: list[tuple[FeatureView, Any]]) -> None:
    """Rows of several views (each an Arrow table: customer_id, the view's timestamp and features): in c360's stores
    `write_views` (readers see a customer's rows of all views switch at once; a row older than the stored one is
    ignored); in Feast's stores `write_to_online_store` view by view."""
    writer = bulk_writer(store.config)
    if writer is None:
        for view, table in rows:
            store.write_to_online_store(view.name, table.to_pandas())
        return
    writer.write_views(store.config, rows)


def online_features(store: FeatureStore, customer_ids: list[str], service: str = "profile_v1") -> pd.DataFrame:
    """Features of customers from the online store, by name (Feast's column order is not stable)."""
    result = store.get_online_features(features=store.get_feature_service(service),
                                       entity_rows=[{"customer_id": c} for c in customer_ids]).to_df()
    return result[["customer_id", *[n for n in BY_NAME if n in result.columns]]]


@dataclass
class OnlineReader:
    """A fixed set of features read for many requests: what Feast's
    `get_online_features(refs, entity_rows).to_dict(include_event_timestamps=True)` returns, straight from c360's
    store when feature_store.yaml selects one (`read_columns`), through Feast for any other."""

    store: FeatureStore
    views: list[tuple[FeatureView, list[str]]]
    direct: BulkStore | None

    @classmethod
    def of(cls, store: FeatureStore, keep: Callable[[FeatureView, str], bool]) -> OnlineReader:
        """The features `keep(view, feature_name)` selects of the registry's views (read once, here)."""
        views = [(v, [f.name for f in v.features if keep(v, f.name)]) for v in store.list_feature_views()]
        return cls(store, [(v, names) for v, names in views if names], bulk_writer(store.config))

    @property
    def refs(self) -> list[str]:
        return [f"{v.name}:{name}" for v, names in self.views for name in names]

    def read(self, customer_ids: list[str]) -> dict[str, list[Any]]:
        rows = [{"customer_id": c} for c in customer_ids]
        if self.direct is not None:
            return self.direct.read_columns(self.store.config, self.views, rows)
        return self.store.get_online_features(features=self.refs, entity_rows=rows).to_dict(
            include_event_timestamps=True)
