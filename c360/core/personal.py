"""The registry of the stores that hold personal data: export and erasure of a person iterate over it.

A person is resolved once (`c360.features.privacy.resolve`) into a `Person`: the source records to remove, the
customer ids touched, and the identifiers (normalised e-mails, phones, source keys). Each `Store` then acts on it
through a handler of its own (a module or a class with the two functions), named by a dotted path and
loaded only when used, so this core module lists stores of
every layer (features, serving, training) without importing upward. A handler has two functions:

* `export(work, person) -> rows` — what the store holds on the person (JSON-able), also how it is located;
* `erase(work, person) -> Erased` — remove it, bytes included (a file is rewritten, a database copied or vacuumed
  with secure delete), and return what was removed.

`work` is a `Work`: the settings and the warehouse connection of the run. Every later feature that writes personal
data (event logs, audience exports, briefs, Spark outputs) adds one `Store` to `STORES`, with the files it owns:
a test scans a home for known e-mails and fails on a file that no store claims.
"""

from __future__ import annotations

import fnmatch
import importlib
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from c360.core.settings import Settings


@dataclass(frozen=True)
class Person:
    """Who is exported or erased: the records, the customers and the identifiers to look for."""

    asked: str  # "email" or "customer_id"
    customers: tuple[str, ...]  # c360 customer ids touched
    whole: tuple[str, ...]  # customers removed entirely (an account, or a person who was their customer's only one)
    records: dict[str, tuple[str, ...]]  # source table id -> keys of the rows to remove
    emails: tuple[str, ...]  # normalised as identity resolution normalises them
    phones: tuple[str, ...]  # E.164

    @property
    def record_ids(self) -> list[str]:
        return [f"{table}:{key}" for table, keys in self.records.items() for key in keys]

    def values(self) -> list[str]:
        """Every identifying value to look for in free-form files (logs, CSV exports)."""
        return [*self.emails, *self.phones, *self.whole, *(k for keys in self.records.values() for k in keys)]

    @property
    def found(self) -> bool:
        """Whether c360 holds any record of them."""
        return bool(self.customers or self.records)


@dataclass
class Erased:
    """What one store removed: rows (or lines, entries), and files that held the person and left c360 (recall)."""

    rows: int = 0
    files: list[str] = field(default_factory=list)
    recall: list[str] = field(default_factory=list)
    kept: str | None = None  # why a store keeps what it holds (the audit trail)


@dataclass
class Work:
    """One export or erasure run: settings, and the warehouse connection (a writer's, for an erasure)."""

    s: Settings
    con: duckdb.DuckDBPyConnection


@dataclass(frozen=True)
class Store:
    name: str
    holds: str
    handler: str  # dotted path of the object (module or class) with `export` and `erase`
    files: tuple[str, ...]  # globs, relative to C360_HOME, of the files this store owns

    def function(self, name: str) -> Callable[[Work, Person], Any]:
        module, _, attribute = self.handler.rpartition(".")
        return getattr(getattr(importlib.import_module(module), attribute), name)

    def owns(self, relative: str) -> bool:
        return any(fnmatch.fnmatch(relative, pattern) for pattern in self.files)


_STORES = "c360.features.privacy_stores"
STORES: tuple[Store, ...] = (
    Store("warehouse_sources", "the source rows of every silo (contract tables), and the rows that reference them",
          f"{_STORES}.Sources", ("warehouse.duckdb", "warehouse.duckdb.wal")),
    Store("consent_overrides", "opt-outs recorded with `c360 privacy opt-out` (customer id, purpose, when)",
          f"{_STORES}.ConsentOverrides", ()),
    Store("quarantine", "rows that broke the contract, with their raw text", f"{_STORES}.Quarantine", ()),
    Store("event_log", "live events as received (`POST /events`, `c360 events push`) until a fold takes them "
          "into the warehouse, the rejected ones with their reasons, the ids of the events folded",
          "c360.features.event_log.EventLogs", ("events/events.jsonl", "events/rejects.jsonl",
                                                "events/folded.jsonl", "events/events.lock")),
    Store("live_identity", "person records placed live (e-mail, name, phone), provisional customers' golden "
          "records and the customer each live event was placed on (events/identity.db)",
          "c360.features.live_identity.LiveIdentity",
          ("events/identity.db", "events/identity.db-wal", "events/identity.db-shm")),
    Store("identity", "crosswalk, golden records, normalised records and links, merge/split events, stewards' "
          "link/unlink decisions (record ids, who, why)",
          f"{_STORES}.Identity", ()),
    Store("identity_model", "splink's trained model (parameters; no term frequencies are saved)",
          f"{_STORES}.IdentityModel", ("identity/*",)),
    Store("spark_identity", "Spark's checkpoints of `c360 resolve` on C360_ENGINE=spark (normalised records, compared "
          "pairs), removed when the run ends: only an interrupted run leaves them",
          "c360.features.linkage.SparkScratch", ("spark/identity/*",)),
    Store("generated_exports", "the demo's generated silo exports and their ground truth",
          f"{_STORES}.Generated", ("data/generated/*", "data/generated/*/*")),
    # before the snapshots: it finds the person's rows in the input examples by their snapshot rows
    Store("mlflow", "models' input examples (feature rows without ids); datasets hold schema and profile only",
          f"{_STORES}.Mlflow", ("mlflow.db", "mlartifacts/*")),
    Store("feature_snapshots", "features per customer and as-of date (Parquet, Feast's offline source)",
          f"{_STORES}.Snapshots", ("features/customer_features/*",)),
    Store("online_store", "the latest features and the `predictions` view per customer (SQLite, Feast's, Redis)",
          f"{_STORES}.Online", ("feast/*",)),
    Store("spark_exports", "the warehouse's tables a Spark feature build reads (the columns its features name), as "
          "Parquet (none with a key): removed when the build ends, erased whole if a killed build left one",
          "c360.features.spark_build.SparkExports", ("spark/warehouse/*",)),
    Store("batch_scores", "`c360 score` output: scores and reasons per customer (Parquet)", f"{_STORES}.Scores",
          ("scores/*",)),
    Store("audiences", "audience membership history (customer ids, entered, left) and the record of every audience "
          "export (path, when, who, customer ids); exports written under audiences/exports/",
          "c360.features.audiences.Audiences", ("audiences/audiences.db", "audiences/audiences.db-wal",
                                                "audiences/audiences.db-shm", "audiences/exports/*")),
    Store("campaigns", "the decision log of campaigns: each assignment's customer id, arm, action, propensity, "
          "model version, when and by which role", "c360.features.campaigns.Campaigns", ("campaigns/*",)),
    Store("run_log", "runs.jsonl: commands and their summaries", f"{_STORES}.RunLog", ("runs.jsonl",)),
    Store("audit", "who touched which customer (ids only): kept on erasure, for accountability",
          f"{_STORES}.Audit", ("audit/*",)),
    Store("privacy", "erasure requests and suppression hashes (salted, no plain values)", f"{_STORES}.Privacy",
          ("privacy/*",)),
)


def owner(s: Settings, path: Path) -> Store | None:
    """The store that owns a file under C360_HOME, or None."""
    relative = str(Path(path).relative_to(s.home))
    return next((store for store in STORES if store.owns(relative)), None)


def sqlite_delete(path: Path, deletes: Iterable[tuple[str, list[Any]]]) -> int:
    """Run `deletes` (sql, params) on a SQLite file with secure delete on, then VACUUM and truncate its WAL, so the
    deleted rows' bytes are overwritten, not just unlinked; returns the rows deleted."""
    if not path.is_file():
        return 0
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA secure_delete = ON")
        removed = 0
        with con:
            for sql, params in deletes:
                removed += con.execute(sql, params).rowcount
        con.execute("VACUUM")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return removed
