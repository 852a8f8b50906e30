"""Live features: a few customers' features recomputed from the events just logged, by the batch's own definitions.

`recompute(s, con, customer_ids, as_of)` is `compute.build` restricted to those customers, over the warehouse
behind `con` (a reader's), the events logged but not folded yet and the live identity's records
(`live_identity.pending`). It gathers the rows that reach these customers — their crosswalk records, then each
table's rows through them, as `compute.SQL` joins them, and only the columns it names — into tables named like the
warehouse's in an in-memory DuckDB connection of the thread (`_Tables`), and runs `compute.SQL` there (as
`compute.each_sql`, prepared once): every feature is defined once, in `compute.SQL`. The warehouse's rows come
from the process's index of each table it reads (those columns, sorted by the column that reaches them): read
whole at the first update, again when the warehouse file changes, so that a round takes its customers' rows by
position rather than scan each table. The unfolded events' rows are the ones `c360 ingest` will write
(`event_log.folded`: the same parsing, an update kind replacing the row with its key), so the live features of a
moment are what the batch computes after the fold.

`recompute_each` takes one as-of per customer (the live clock: just after the customer's newest event) and builds
the tables once for all of them, each row with the customer it reaches (`compute.OWNER`): the lateral run of one
customer reads its own rows, so a round costs its rows, not its rows times its customers. The process keeps what the
fold will write for the unfolded events, taking only the records appended since (`event_log.read_log_from`), and
which of their keys the warehouse holds, until an erasure rewrites the log or a fold changes the warehouse; those
rows are indexed by the columns that reach them, so that a round's cost does not grow with the unfolded log.

`events_of(s, customer_id, connect)` is the profile's `past.live_events`: the customer's unfolded events, newest
first, from a per-process index of the log by customer: where `live_identity.place` put each event, read from
identity.db (whichever process placed it) unless this process `remember`s it.

`write_history(s, features)` adds recomputed rows to the offline store: one Parquet file per applied batch beside
the snapshots (`live-<UTC time>-<pid>.parquet`), which Feast's source (`snapshots/*.parquet`) and
`store.history` read, and the batch's snapshot list (`as_of=*.parquet`) does not; `compact` merges those files
(64 at a time into one, `live-...-L<level>.parquet`, in a thread of its own: not in the round), so that their
number grows with the log of the rounds.
`updated_since(s, day)` reads them back: the customers the live update recomputed as of a time after `day`, whose
online row is newer than a snapshot of that day.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from c360.core import connections, contract
from c360.core.at_rest import file_stamp
from c360.core.settings import Settings
from c360.features import compute, event_log, live_identity, store, versions
from c360.features.ingest import TEXT, q, to_datetime

log = logging.getLogger(__name__)

# How compute.SQL reaches a table's rows from a customer (the owners of live identity, defined once): through the
# crosswalk records of a source (record_id '<source>:<value of the column>'), or through the rows reached of a
# parent table (the column is its key).
BY_RECORD = {t: (o.column, o.source) for t, o in live_identity.OWNERS.items() if o.via is None}
BY_PARENT = {t: o.via[0] for t, o in live_identity.OWNERS.items() if o.via is not None}
LIVE_GLOB = "live-*.parquet"
MERGE_FILES = 64  # live files of one level merged into one of the next (`compact`)
TOP_LEVEL = 2  # the level of the largest merged live files: 64² rounds' rows
GRACE_SECONDS = 600.0  # how long a merged file's sources stay, for the readers that listed them
MERGED_FROM = b"c360.merged_from"  # a merged live file's metadata: the names of the files it merged
CLOCK = "c360_clock"  # the customers' as-ofs, a table in the in-memory connection
FEATURES_CONNECTION = "live features"  # `connections.local`'s purpose of the connection the feature SQL runs in
PREPARED = "c360_live_features"  # the feature SQL, prepared in that connection
_thread = threading.local()

_lock = threading.Lock()
_unfolded: dict[Path, _Unfolded] = {}  # by log
_unfolded_lock = threading.Lock()
_placed: dict[str, str | None] = {}  # event id → customer id, as placed by this process
_logs: dict[Path, _LogIndex] = {}  # by log
_index_lock = threading.Lock()
_known: dict[tuple[Path, str], tuple[Any, set[str], set[str]]] = {}  # (warehouse, table) → stamp, checked, held
# warehouse → its file stamp, its tables' indexes by (table, column, columns)
_tables: dict[Path, tuple[Any, dict[tuple[str, str, tuple[str, ...] | None], _Index]]] = {}
_indexes_lock = threading.Lock()
_sources: dict[Path, tuple[Any, list[str]]] = {}  # merged live file → its stamp, the names of the files it merged
_compacting = threading.Lock()  # held by the process's one merging thread
COMPACT_THREAD = "c360-live-compact"


def recompute(s: Settings, con: duckdb.DuckDBPyConnection, customer_ids: Iterable[str],
              as_of: pd.Timestamp) -> pd.DataFrame:
    """`compute.build(…, as_of)` of `customer_ids` alone, over the warehouse, the unfolded events and the live
    identity; a customer not known before `as_of` has no row."""
    return recompute_each(s, con, dict.fromkeys(customer_ids, pd.Timestamp(as_of)))


def recompute_each(s: Settings, con: duckdb.DuckDBPyConnection, as_of: Mapping[str, pd.Timestamp]) -> pd.DataFrame:
    """`recompute` with each customer at its own as-of; the rows gathered once for all."""
    tables = _Tables.of_thread()
    try:
        _gather(s, con, tables, list(as_of))
        tables.fill(CLOCK, pa.table({"customer_id": pa.array(list(as_of), pa.string()),
                                     "as_of": pa.array(pd.Series(as_of.values(), dtype="datetime64[us]"),
                                                       pa.timestamp("us"))}))
        return compute.finish(tables.features())
    finally:
        tables.empty()


def warm(s: Settings, con: duckdb.DuckDBPyConnection) -> None:
    """Build what a round reads of the warehouse behind `con` for no customer — each table's index, the unfolded
    events' rows, live identity's known people — so that the next round takes its customers' rows at once: the
    first round after a start or a fold built them itself (1.4 s against 0.3 s warm, on the demo home)."""
    tables = _Tables.of_thread()
    try:
        _gather(s, con, tables, [])
    finally:
        tables.empty()
    live_identity.warm(s, con)


# ---------------------------------------------------------------- gathering the rows


class _Rows:
    """A table of a round's rows as DuckDB scans it: registered once under its name, its rows replaced from round to
    round. DuckDB asks for the rows (`__arrow_c_stream__`) at each scan, and the prepared statement stays planned."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema, self.rows = schema, schema.empty_table()

    def __arrow_c_schema__(self) -> Any:
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.rows.__arrow_c_stream__(requested_schema)


@dataclass
class _Tables:
    """A thread's in-memory connection where the feature SQL runs over a round's rows. Each table it reads is a
    `_Rows` registered once and kept from round to round, so that the SQL, prepared once, is not planned again
    (planning took 65 ms of each round) and the rows are not copied into DuckDB (inserting them took 2–3 ms a table,
    of 19, and 85 ms for the product events of 300 customers). A table is registered again when its columns change
    (a fold, a new contract), and DuckDB plans the statement again then. The rows are let go after each round: no
    customer's rows stay in memory."""

    con: duckdb.DuckDBPyConnection
    tables: dict[str, _Rows] = field(default_factory=dict)
    prepared: bool = False

    @classmethod
    def of_thread(cls) -> _Tables:
        con = connections.local(FEATURES_CONNECTION)
        tables: _Tables | None = getattr(_thread, "tables", None)
        if tables is None or tables.con is not con:
            tables = _thread.tables = cls(con)
        return tables

    def fill(self, name: str, rows: pa.Table) -> None:
        """`name` holding `rows`."""
        table = self.tables.get(name)
        if table is None or table.schema != rows.schema:
            table = self.tables[name] = _Rows(rows.schema)
            self.con.register(name, table)
        table.rows = rows

    def features(self) -> pd.DataFrame:
        """`compute.each_sql(CLOCK)`'s result over the tables."""
        if not self.prepared:
            self.con.execute(f"PREPARE {PREPARED} AS {compute.each_sql(CLOCK)}")
            self.prepared = True
        return self.con.execute(f"EXECUTE {PREPARED}").df()

    def empty(self) -> None:
        for table in self.tables.values():
            table.rows = table.schema.empty_table()


def _gather(s: Settings, con: duckdb.DuckDBPyConnection, tables: _Tables, customers: list[str]) -> None:
    """`tables` named like the warehouse's, holding the rows that reach `customers`."""
    live_crosswalk, provisional = live_identity.pending(s)
    linked = ["record_id", "customer_id"]  # what the feature SQL reads of the crosswalk
    live_crosswalk = live_crosswalk.loc[live_crosswalk["customer_id"].isin(customers), linked]
    crosswalk = _rows(s, con, "identity_crosswalk", "customer_id", customers, linked)
    _table(tables, "identity_crosswalk", crosswalk, _arrow(live_crosswalk), "record_id")
    golden = _rows(s, con, "identity_customers", "customer_id", customers, None)
    _table(tables, "identity_customers", golden, _arrow(provisional[provisional["customer_id"].isin(customers)]),
           "customer_id")
    by_source = _by_source(tables.con.execute("SELECT record_id, customer_id FROM identity_crosswalk").fetchall())
    pending = _pending_rows(s, con)
    for table_id, (column, source) in BY_RECORD.items():
        _reach(s, con, tables, contract.table(table_id), column, by_source.get(source, {}), pending.get(table_id))
    for table_id, parent_id in BY_PARENT.items():
        parent = contract.table(parent_id)
        owners = dict(tables.con.execute(f"SELECT CAST({q(parent.key)} AS VARCHAR), {compute.OWNER} "
                                         f"FROM {q(parent.sql_name)}").fetchall())
        _reach(s, con, tables, contract.table(table_id), parent.key, owners, pending.get(table_id))


def _by_source(linked: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """The crosswalk's (record_id, customer_id) pairs by source: the value after '<source>:' → customer, in one
    pass over the records, not one per table reached."""
    out: dict[str, dict[str, str]] = {}
    for record, customer in linked:
        source, _, value = record.partition(":")
        out.setdefault(source, {})[value] = customer
    return out


def _reach(s: Settings, con: duckdb.DuckDBPyConnection, tables: _Tables, table: contract.Table, column: str,
           owners: Mapping[str, str], pending: _Pending | None) -> None:
    """The table's rows whose `column` is one of `owners`' keys (each row with the customer it reaches,
    `compute.OWNER`): the warehouse's, with the unfolded events' in place, and their old versions, both in
    `tables`."""
    columns, values = _read(table, column), list(owners)
    found = _rows(s, con, table.sql_name, column, values, [*columns, versions.VALID_FROM])
    events, replaced = None, None
    if pending is not None:
        with _unfolded_lock:
            events, replaced = pending.rows(column, values, found.schema), pa.array(list(pending.held), pa.string())
    _table(tables, table.sql_name, found, events, table.key, replaced=replaced, owners=(column, owners))
    history = versions.history(table)
    old = _rows(s, con, history, column, values, [*columns, versions.VALID_FROM, versions.VALID_TO])
    _table(tables, history, old, None, table.key, owners=(column, owners))


@cache
def _read(table: contract.Table, column: str) -> list[str]:
    """The table's columns the feature SQL names, its key and `column` (how it is reached): a scan reads only those
    (the product events' other columns would double its time)."""
    named = {c for c in table.column_names if re.search(rf"\b{re.escape(c)}\b", compute.SQL)}
    return [c for c in table.column_names if c in named | {table.key, column}]


# ---------------------------------------------------------------- the warehouse's rows, indexed per process


@dataclass(frozen=True)
class _Index:
    """Some columns of a warehouse table, its rows sorted by one of them, each value's first row and count: a
    round takes its customers' rows by position instead of scanning the table for them."""

    rows: pa.Table
    values: np.ndarray  # the column's distinct values, sorted
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, rows: pa.Table, column: str) -> _Index:
        # stable: a value's rows keep their order; one chunk, so that a take is one (DuckDB reads a chunk at a time)
        rows = rows.take(pc.sort_indices(rows, [(column, "ascending")])).combine_chunks()
        keys = rows[column].cast(pa.string()).combine_chunks()
        held = len(keys) - keys.null_count  # the nulls last: SQL's `IN` matches none of them
        changed = pc.not_equal(keys[1:held], keys[:held - 1]).to_numpy(zero_copy_only=False) if held else []
        starts = np.concatenate([[0], np.flatnonzero(changed) + 1]) if held else np.empty(0, np.int64)
        values = np.asarray(keys.take(pa.array(starts, pa.int64())).to_pylist(), dtype=str)
        return cls(rows, values, starts, np.diff(np.append(starts, held)))

    def take(self, values: Sequence[str]) -> pa.Table:
        """The rows whose column is one of `values`."""
        # In the index's own width: numpy would otherwise copy the whole index to a wider one to compare (a few
        # ms per table and round); a value wider than every indexed one is not in it.
        wanted = np.asarray(values, dtype=str)
        wanted = wanted[np.char.str_len(wanted) <= self.values.dtype.itemsize // 4].astype(self.values.dtype)
        at = np.searchsorted(self.values, wanted)
        inside = at < len(self.values)
        at = np.unique(at[inside][self.values[at[inside]] == wanted[inside]])
        counts = self.counts[at]
        # the k-th row taken is its value's first row plus k less the rows taken of the values before it
        shift = np.repeat(self.starts[at] - (np.cumsum(counts) - counts), counts)
        return self.rows.take(shift + np.arange(len(shift)))


def _rows(s: Settings, con: duckdb.DuckDBPyConnection, name: str, column: str, values: list[str],
          columns: list[str] | None) -> pa.Table:
    """`SELECT columns FROM name WHERE column IN values`, from this process's index of the warehouse table: read
    whole once (a table scan per round was most of a round's cost), again when the warehouse file changed."""
    stamp = file_stamp(s.warehouse.stat())
    key = (name, column, None if columns is None else tuple(columns))
    with _indexes_lock:
        held = _tables.get(s.warehouse)
        if held is None or held[0] != stamp:
            held = _tables[s.warehouse] = (stamp, {})
        index = held[1].get(key)
        if index is None:
            selected = "*" if columns is None else ", ".join(map(q, columns))
            index = held[1][key] = _Index.of(con.execute(f"SELECT {selected} FROM {q(name)}").to_arrow_table(),
                                             column)
    return index.take(values)


def _table(tables: _Tables, name: str, rows: pa.Table, added: pa.Table | None, key: str,
           replaced: pa.Array | None = None, owners: tuple[str, Mapping[str, str]] | None = None) -> None:
    """`name` in `tables`: `rows`, less those whose key is one of `replaced` (default: `added`'s keys), plus `added`
    (cast to the warehouse's types, as the fold inserts them); with `owners` (column, value → customer), each row's
    customer as `compute.OWNER`."""
    gone = _texts(added[key]) if replaced is None and added is not None else replaced
    if gone is not None and len(gone):
        held = pc.is_in(rows[key].cast(pa.string()), value_set=gone)
        rows = rows.filter(pc.invert(held))
    if added is not None and len(added):
        rows = pa.concat_tables([rows, _typed_as(rows.schema, added)])
    if owners is not None:
        column, customers = owners
        index = pc.index_in(rows[column].cast(pa.string()), value_set=pa.array(list(customers), pa.string()))
        rows = rows.append_column(compute.OWNER, pa.array(list(customers.values()), pa.string()).take(index))
    tables.fill(name, rows)


def _texts(column: pa.ChunkedArray) -> pa.Array:
    """A key column's values as text, the missing ones left out (no key is missing)."""
    return pc.drop_null(column.cast(pa.string())).combine_chunks()


def _arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def _typed_as(schema: pa.Schema, table: pa.Table) -> pa.Table:
    """`table` in `schema`'s columns and types (a column it lacks is missing), as `INSERT ... BY NAME` casts."""
    return pa.table([table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
                     for f in schema], schema=schema)


# ---------------------------------------------------------------- the unfolded events, kept per process


@dataclass
class _Unfolded:
    """What the fold will write for one log's unfolded events, by table, as of the warehouse file `stamp` (a new
    fold changes which events are folded) and the log's first `read` records of file `inode`."""

    stamp: Any
    inode: int | None = None
    read: int = 0
    tables: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Pending:
    """One table's rows that the fold will write for the unfolded events read so far (`event_log.folded`: a key's
    last event wins), indexed by the columns that reach them: a round takes its customers' rows without going
    through every pending row. The log grows until the next fold, and a round that copied and scanned them all cost
    3.5 ms more per thousand unfolded events on the demo home. Read and written under `_unfolded_lock`."""

    table: contract.Table
    reads: list[pa.Table] = field(default_factory=list)  # the rows of each read of the log's tail, in order
    standing: dict[str, tuple[int, int]] = field(default_factory=dict)  # key → its row now: (read, position)
    held: set[str] = field(default_factory=set)  # the standing keys the warehouse holds: those rows give way
    by: dict[str, dict[str | None, set[str]]] = field(default_factory=dict)  # column → value → keys of its rows

    def add(self, s: Settings, con: duckdb.DuckDBPyConnection, events: list[tuple[int, dict[str, Any]]]) -> None:
        """The rows the fold writes for `events` ((line, record) of the log), which it reads after the earlier
        ones: a pending row's key counts as held."""
        table = self.table

        def held(keys: list[str]) -> set[str]:
            return _held(s, con, table, keys) | (self.standing.keys() & set(keys))

        rows = event_log.folded(table, events, held).rows
        keys = rows[table.key].tolist()
        for column, index in self.by.items():
            for key in filter(self.standing.__contains__, keys):
                index[self._value(key, column)].discard(key)
        self.reads.append(_arrow(rows))
        self.standing.update(zip(keys, ((len(self.reads) - 1, at) for at in range(len(rows))), strict=True))
        self.held.update(_held(s, con, table, keys))
        for column, index in self.by.items():
            self._index(index, column, keys)

    def rows(self, column: str, values: Sequence[str], schema: pa.Schema) -> pa.Table:
        """The rows whose `column` is one of `values`, in log order, in `schema`'s columns and types (Arrow: a
        round took a pandas selection per read of the log, 5 % of its time)."""
        index = self.by.get(column)
        if index is None:
            index = self.by[column] = {}
            self._index(index, column, list(self.standing))
        keys = set().union(*(index.get(v, ()) for v in values))
        at = sorted(self.standing[k] for k in keys)
        parts = [_typed_as(schema, self.reads[read].take([i for _, i in taken]))
                 for read, taken in groupby(at, key=itemgetter(0))]
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def _value(self, key: str, column: str) -> str | None:
        read, at = self.standing[key]
        value = self.reads[read][column][at].as_py()
        return None if value is None else str(value)

    def _index(self, index: dict[str | None, set[str]], column: str, keys: list[str]) -> None:
        for key in keys:
            index.setdefault(self._value(key, column), set()).add(key)


def _pending_rows(s: Settings, con: duckdb.DuckDBPyConnection) -> dict[str, _Pending]:
    """Per table, the rows the fold will write for the unfolded events (`event_log.folded`), brought up to date
    with the log's tail: a round parses only the records appended since the last one."""
    path, stamp = event_log.log_path(s), file_stamp(s.warehouse.stat())
    with _unfolded_lock:
        state = _unfolded.get(path)
        if state is None or state.stamp != stamp:
            state = _Unfolded(stamp)
        inode, records = event_log.read_log_from(path, state.read, state.inode)
        if inode != state.inode:
            state = _Unfolded(stamp, inode)
        done = event_log.folded_ids(s, lambda: nullcontext(con)) if records else frozenset()
        by_table: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for line, record in records:
            if record["event"]["event_id"] not in done:
                by_table.setdefault(contract.EVENTS_BY_KIND[record["event"]["kind"]].table, []).append((line, record))
        for table_id, events in by_table.items():
            state.tables.setdefault(table_id, _Pending(contract.table(table_id))).add(s, con, events)
        state.read += len(records)
        _unfolded[path] = state
        return dict(state.tables)


def _held(s: Settings, con: duckdb.DuckDBPyConnection, table: contract.Table, keys: list[str]) -> set[str]:
    """Which of `keys` the warehouse table holds; each key looked up once until the warehouse changes."""
    stamp = file_stamp(s.warehouse.stat())
    with _lock:
        cached = _known.get((s.warehouse, table.id))
        if cached is None or cached[0] != stamp:
            cached = _known[(s.warehouse, table.id)] = (stamp, set(), set())
        _, checked, held = cached
        new = [k for k in keys if k not in checked]
    found = event_log.existing_keys(con, table, new) if new else set()
    with _lock:
        checked.update(new)
        held.update(found)
        return held & set(keys)


# ---------------------------------------------------------------- a customer's live events


def events_of(s: Settings, customer_id: str, connect: event_log.Connect, limit: int = 20) -> list[dict[str, Any]]:
    """The customer's logged events not folded yet that the live update placed, newest first, at most `limit`:
    event_id, kind and at only (no personal value). The process indexes the log's events by customer as it grows,
    taking where `live_identity.place` put each (in identity.db, whichever process placed it): a profile reads its
    customer's few events, neither the whole log nor placing events again (a profile polled while another worker
    took events placed them all, splink included, at every read). `connect()` opens the warehouse to see which
    events are folded, and only then."""
    mine = _indexed(s, connect).get(customer_id, [])
    if not mine:  # most profiles: parsing no times with pandas was half of a profile's CPU
        return []
    at = to_datetime(pd.Series([e["at"] for e in mine], dtype=TEXT))
    return [dict(mine[i]) for i in at.sort_values(ascending=False, kind="stable").index[:limit]]


@dataclass
class _LogIndex:
    """One log's unfolded events by customer (id, kind and time), as of its first `read` records of file `inode`
    and of the warehouse file `stamp` (the events folded then are left out); `waiting`: events read that no live
    update has placed yet, looked up again at the next read."""

    inode: int | None = None
    read: int = 0
    stamp: Any = None
    by_customer: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    waiting: list[dict[str, Any]] = field(default_factory=list)


def _indexed(s: Settings, connect: event_log.Connect) -> dict[str, list[dict[str, Any]]]:
    """The log's placed events by customer, brought up to date with what was appended and placed since (a log
    rewritten by an erasure is indexed again)."""
    path = event_log.log_path(s)
    with _index_lock:
        index = _logs.get(path) or _LogIndex()
        inode, records = event_log.read_log_from(path, index.read, index.inode)
        if inode != index.inode:  # rewritten (a fold took its events out, or an erasure): indexed again
            index = _LogIndex(inode)
            _forget_placed_but({r["event"]["event_id"] for _, r in records})
        new = [*index.waiting, *(r["event"] for _, r in records)]
        unknown = [e["event_id"] for e in new if e["event_id"] not in _placed]
        if unknown:
            with _lock:
                _placed.update(live_identity.placed_of(s, unknown))
        index.read += len(records)
        index.waiting = [e for e in new if e["event_id"] not in _placed]
        for e in new:
            if customer := _placed.get(e["event_id"]):
                index.by_customer.setdefault(customer, []).append({k: e[k] for k in ("event_id", "kind", "at")})
        if (index.by_customer or index.waiting) and file_stamp(s.warehouse.stat()) != index.stamp:
            _forget_folded(s, connect, index)
        elif index.waiting:  # a folded event is placed by the warehouse's crosswalk, not here
            done = event_log.folded_ids(s, connect)
            index.waiting = [e for e in index.waiting if e["event_id"] not in done]
        _logs[path] = index
        return index.by_customer


def _forget_folded(s: Settings, connect: event_log.Connect, index: _LogIndex) -> None:
    """The folded events out of `index` and of where this process knows events were placed (once per fold): a
    process serving for weeks would otherwise hold every event of the log."""
    index.stamp = file_stamp(s.warehouse.stat())
    done = event_log.folded_ids(s, connect)
    index.waiting = [e for e in index.waiting if e["event_id"] not in done]
    for customer in list(index.by_customer):
        kept = [e for e in index.by_customer[customer] if e["event_id"] not in done]
        if kept:
            index.by_customer[customer] = kept
        else:
            del index.by_customer[customer]
    with _lock:
        for event_id in done.intersection(_placed):
            del _placed[event_id]


def _forget_placed_but(logged: set[str]) -> None:
    """Where this process placed events, for the events of the log only (a rewritten log lost the others)."""
    with _lock:
        for event_id in [e for e in _placed if e not in logged]:
            del _placed[event_id]


def remember(events: Iterable[dict[str, Any]], customers: Iterable[str | None]) -> None:
    """Where the live identity placed these events (`events_of` reads it)."""
    with _lock:
        _placed.update(zip((e["event_id"] for e in events), customers, strict=True))


# ---------------------------------------------------------------- the offline store


def write_history(s: Settings, features: pd.DataFrame) -> Path | None:
    """Add recomputed rows to the offline store (one file per call, see the module docstring), and `compact` it
    in a thread of its own when a merge is due; None when empty."""
    if features.empty:
        return None
    s.snapshots.mkdir(parents=True, exist_ok=True)
    path = _live_path(s, 0)
    _write(path, _like_snapshots(s, _arrow(features)))
    if _merge_due(s, MERGE_FILES) and _compacting.acquire(blocking=False):
        threading.Thread(target=_compact_then_release, args=(s,), name=COMPACT_THREAD).start()
    return path


def _compact_then_release(s: Settings) -> None:
    """`compact` off the round that found a merge due: on the demo's rows a merge of 64 live files took 0.28 s, and
    of 64 merged ones 3.5 s, which that round's events waited for. Not a daemon thread: a process that ends
    (`c360 events push`) finishes the merge first."""
    try:
        compact(s)
    except Exception:  # the next merge due tries again; the round's events are in the history already
        log.exception("merging the live files failed")
    finally:
        _compacting.release()


def _merge_due(s: Settings, merge_files: int) -> bool:
    return sum(_level(f) == 0 for f in s.snapshots.glob(LIVE_GLOB)) >= merge_files


def compact(s: Settings, merge_files: int = MERGE_FILES, grace: float = GRACE_SECONDS) -> list[Path]:
    """Merge the live files of the offline store, so that a day of rounds is not a day of files for every reader to
    open: once `merge_files` files of one level are ready, they become one file of the next (a history of n rounds
    in about `merge_files` · log(n) / log(`merge_files`) files). A merged file names its sources in its metadata:
    it is merged again only once they are gone, so no row is merged twice. They are
    deleted `grace` seconds after it was written, not at once: a reader that listed them just before (Feast, a
    profile's history) still opens them, and meanwhile their rows are there twice, the same values (`store.history`
    and `updated_since` read distinct rows, Feast's point-in-time join takes one). One process compacts at a time,
    and never while an erasure rewrites the files (`store.rewriting_snapshots`). The files of `TOP_LEVEL` are not
    merged again: one of them holds 64² rounds' rows. Returns the files written."""
    if not _merge_due(s, merge_files):  # most rounds: the names only
        return []
    with store.rewriting_snapshots(s, wait=False) as mine:
        if not mine:
            return []
        for merged, names in _merged_files(s).items():
            if time.time() - merged.stat().st_mtime >= grace:
                for name in names:
                    (s.snapshots / name).unlink(missing_ok=True)
        files, merged_from = sorted(s.snapshots.glob(LIVE_GLOB)), _merged_files(s)
        written = []
        for level in range(TOP_LEVEL):  # a file a merge writes is not ready yet: its sources are there
            ready = _settled(files, merged_from, level)
            if len(ready) >= merge_files:
                written.append(_merge(s, ready, level + 1))
        return written


def _live_path(s: Settings, level: int) -> Path:
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%f")
    return s.snapshots / f"live-{stamp}-{os.getpid()}{f'-L{level}' if level else ''}.parquet"


def _level(path: Path) -> int:
    found = re.search(r"-L(\d+)\.parquet$", path.name)
    return int(found.group(1)) if found else 0


def _write(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # a reader's glob never sees half a file
    pq.write_table(table, tmp)
    tmp.replace(path)


def _merged_files(s: Settings) -> dict[Path, list[str]]:
    """Each merged live file and the names of the files it merged (its metadata, read once per file)."""
    out = {}
    for path in s.snapshots.glob(LIVE_GLOB):
        if _level(path) > 0:
            stamp = file_stamp(path.stat())
            if _sources.get(path, (None,))[0] != stamp:
                metadata = pq.read_schema(path).metadata or {}
                _sources[path] = (stamp, json.loads(metadata.get(MERGED_FROM, b"[]")))
            out[path] = _sources[path][1]
    for gone in [p for p in _sources if p.parent == s.snapshots and p not in out]:
        del _sources[gone]
    return out


def _settled(files: list[Path], merged_from: dict[Path, list[str]], level: int) -> list[Path]:
    """The live `files` of `level` a merge may take: merged into no file yet, and (a merged one) whose own sources
    are gone, so that no row is merged twice."""
    present = {p.name for p in files}
    taken = {name for names in merged_from.values() for name in names}
    return [p for p in files if _level(p) == level and p.name not in taken
            and not present.intersection(merged_from.get(p, ()))]


def _merge(s: Settings, files: list[Path], level: int) -> Path:
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    metadata = {**(table.schema.metadata or {}), MERGED_FROM: json.dumps([f.name for f in files]).encode()}
    path = _live_path(s, level)
    _write(path, table.replace_schema_metadata(metadata))
    return path


def updated_since(s: Settings, day: pd.Timestamp) -> set[str]:
    """The customers whose features the live update recomputed as of a time after `day` (their rows in the
    offline store): the online store may hold those newer values instead of the snapshot's of `day`."""
    if not any(s.snapshots.glob(LIVE_GLOB)):
        return set()
    rows = connections.local().execute(
        f"SELECT DISTINCT customer_id FROM read_parquet('{s.snapshots / LIVE_GLOB}') WHERE as_of > $day",
        {"day": day.to_pydatetime()}).fetchall()
    return {r[0] for r in rows}


def _like_snapshots(s: Settings, table: pa.Table) -> pa.Table:
    """`table` with the latest snapshot's column types (a few customers' all-missing column has no type of its
    own), so the files read as one."""
    dates = store.snapshot_dates(s)
    if not dates:
        return table
    schema = pq.read_schema(store.snapshot_path(s, dates[-1])).remove_metadata()
    return table.select(schema.names).cast(schema)
