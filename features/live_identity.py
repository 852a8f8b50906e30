"""Identity, incrementally: the customer of each live event, decided when the event arrives.

An event names its customer by `customer_id`, or by the source key of its row. `OWNERS` says, once, which
identity-bearing record a contract table's row belongs to — the joins of the batch feature SQL (`features.compute`):
a product event to its user's record, a payment through its invoice to the billing account, a send or a consent to
its marketing contact, an activity to its CRM account; a ticket, an NPS answer or a feature request is a person
record itself. Then (`place`):

* a record the crosswalk knows — the warehouse's `identity_crosswalk`, or the live crosswalk below — maps directly;
* a new person record (a ticket whose id the crosswalk does not know yet) is matched against the people c360 knows
  by the rules of `c360 resolve`: the same normalised e-mail links (probability 1), else splink scores it against the
  known records with the model `c360 resolve` saved (`predict_between`: splink 5's form of
  `find_matches_to_new_records`, the known records on one side, the new ones on the other, resolve's blocking rules)
  and the best match at or over `C360_MATCH_THRESHOLD` gives its customer. The people placed live count as known;
* no match: a new *provisional customer*, with an id of the same numbering as resolve's (`C00003001`), reserved in
  identity.db so that `c360 resolve` never hands it to someone else. The shared-key rules of resolve (an e-mail
  domain or a company name only one CRM account has) are left to the next resolve: it may merge the provisional
  customer into that account, which is recorded (`identity_merges`) and redirects the old id.

Decisions live in `C360_HOME/events/identity.db` (SQLite, WAL, owner-only): the live crosswalk (record, customer, how,
probability, when, and the person record itself for the records matched here) and the provisional customers (the
`identity_customers` columns, their golden fields from their records). New records are decided inside one write
transaction (`BEGIN IMMEDIATE`) that first reads what other processes decided: the service's workers and the CLI may
place at once, and two events of the same new person in two processes still make one customer.

The splink linker over the known records is built once per process and built again when the warehouse's identity
changes (a new `c360 resolve`); that reload also settles identity.db (below), so a crash between resolve and its own
settling heals at the next event. Matching one new record against 25,000 known ones takes about 150 ms; a record
with a known e-mail (most tickets) skips splink.

`c360 resolve` takes the live crosswalk as part of the previous ids and reserves its numbers (`Ledger.numbering`):
a provisional customer keeps its id, or is merged into the customer its records join. Afterwards `Ledger.settle`
drops from identity.db what the warehouse now holds. `pending(s)` hands the live rows to the live feature update.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow
from splink import Linker

from c360.core import connections, contract, warehouse
from c360.core.at_rest import file_stamp
from c360.core.contract import EVENTS_BY_KIND
from c360.core.personal import Erased, Person, Work, sqlite_delete
from c360.core.settings import Settings
from c360.features import event_log, identity, linkage

CROSSWALK_COLUMNS = ("source", "source_key", "record_id", "customer_id", "method", "match_probability",
                     "resolved_at")
CUSTOMER_COLUMNS = ("customer_id", "display_name", "company", "segment", "region", "emails", "phones", "sources",
                    "records", "first_seen", "unlinked")
PERSON_COLUMNS = ("record_id", "source", "source_key", "first_name", "surname", "email", "phone", "company",
                  "country", "anchor", "seen_at")
DDL = """
CREATE TABLE IF NOT EXISTS crosswalk (record_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, method TEXT NOT NULL,
    probability REAL, at TEXT NOT NULL, email TEXT, phone TEXT, record TEXT);
CREATE INDEX IF NOT EXISTS crosswalk_customer ON crosswalk (customer_id);
CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, display_name TEXT, company TEXT, segment TEXT,
    region TEXT, emails TEXT, phones TEXT, sources TEXT, records INTEGER, first_seen TEXT, unlinked INTEGER,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS numbering (next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS placed (event_id TEXT PRIMARY KEY, customer_id TEXT);
CREATE INDEX IF NOT EXISTS placed_customer ON placed (customer_id);
"""


# ---------------------------------------------------------------- which record an event's row belongs to


@dataclass(frozen=True)
class Owner:
    """The identity-bearing record of a table's row: `source`'s record keyed by the row's `column`, or by the
    `via[1]` column of the `via[0]` row the row's `column` names (a payment's invoice holds its billing account)."""

    source: str
    column: str
    via: tuple[str, str] | None = None


_PEOPLE = {t: Owner(t, contract.table(t).key) for t in (*identity.RECORD_SQLS, "crm/accounts")}
OWNERS: dict[str, Owner] = _PEOPLE | {
    "product/events": Owner("product/users", "user_id"),
    "billing/payments": Owner("billing/customers", "invoice_id", via=("billing/invoices", "billing_account_id")),
    "billing/plan_changes": Owner("billing/customers", "subscription_id",
                                  via=("billing/subscriptions", "billing_account_id")),
    "billing/invoices": Owner("billing/customers", "billing_account_id"),
    "billing/subscriptions": Owner("billing/customers", "billing_account_id"),
    "marketing/sends": Owner("marketing/contacts", "mkt_contact_id"),
    "marketing/consents": Owner("marketing/contacts", "mkt_contact_id"),
    "crm/activities": Owner("crm/accounts", "account_id"),
}  # marketing/campaigns: company-wide, no customer
# New person records an event may bring: the sources whose record SQL reads the event's own row alone
MATCHED = frozenset(("support/tickets", "feedback/nps", "feedback/feature_requests"))


@dataclass(frozen=True)
class Placed:
    """Where an event landed: its customer, and how (`customer_id`, `crosswalk`, `live crosswalk`, `rule: same
    e-mail`, `model`, `provisional`) — or, with no customer, why not."""

    customer_id: str | None
    how: str
    probability: float | None = None


def _table(event: dict[str, Any]) -> str:
    return EVENTS_BY_KIND[event["kind"]].table


def _rows(events: Sequence[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Per contract table, the typed rows of the batch's events of it (indexed by position in the batch)."""
    out: dict[str, pd.DataFrame] = {}
    for table_id in dict.fromkeys(_table(e) for e in events):
        positions = [i for i, e in enumerate(events) if _table(e) == table_id]
        out[table_id] = event_log.typed_rows(contract.table(table_id), [events[i] for i in positions], positions)
    return out


def _record_ids(con: duckdb.DuckDBPyConnection, events: Sequence[dict[str, Any]],
                rows: dict[str, pd.DataFrame]) -> list[str | Placed]:
    """Each event's identity-bearing record id, or why it has none."""
    owners = [OWNERS.get(_table(event)) for event in events]
    keys = [None if owner is None else rows[_table(event)].at[i, owner.column]
            for i, (event, owner) in enumerate(zip(events, owners, strict=True))]
    parents = _parents(con, rows, {(owner.via, key) for owner, key in zip(owners, keys, strict=True)
                                   if owner is not None and owner.via is not None and not pd.isna(key)})
    out: list[str | Placed] = []
    for owner, key in zip(owners, keys, strict=True):
        if owner is None:
            out.append(Placed(None, "company-wide event: no customer"))
            continue
        if owner.via is not None and not pd.isna(key):
            key = parents.get((owner.via, key))
        if pd.isna(key):
            parent = owner.via[0] if owner.via else owner.source
            out.append(Placed(None, f"its {parent} row is not known yet: the next `c360 ingest` and `c360 resolve` "
                                    "place it"))
        else:
            out.append(f"{owner.source}:{key}")
    return out


def _parents(con: duckdb.DuckDBPyConnection, rows: dict[str, pd.DataFrame],
             wanted: set[tuple[tuple[str, str], Any]]) -> dict[tuple[tuple[str, str], Any], Any]:
    """For each (via, key) of `wanted`, the `via` column of the parent row keyed `key`: from the batch (a new
    invoice before its payment; its last event), else the warehouse, in one query per parent table."""
    out: dict[tuple[tuple[str, str], Any], Any] = {}
    for via in {v for v, _ in wanted}:
        table = contract.table(via[0])
        keys = [k for v, k in wanted if v == via]
        batch = rows.get(table.id)
        if batch is not None:
            last = batch.drop_duplicates(table.key, keep="last").set_index(table.key)[via[1]]
            out |= {(via, k): last[k] for k in keys if k in last.index}
        missing = [k for k in keys if (via, k) not in out]
        if missing and warehouse.has_table(con, table.sql_name):
            out |= {(via, k): v for k, v in con.execute(
                f'SELECT "{table.key}", "{via[1]}" FROM {table.sql_name} WHERE "{table.key}" IN (SELECT unnest(?))',
                [missing]).fetchall()}
    return out


# ---------------------------------------------------------------- identity.db


_creating = threading.Lock()
_upgraded: set[Path] = set()  # identity.db files this process has seen to hold every table of DDL


class Ledger:
    """identity.db: the live crosswalk, the provisional customers and the id numbering."""

    def __init__(self, s: Settings) -> None:
        self.path = event_log.folder(s) / "identity.db"

    def connect(self) -> sqlite3.Connection:
        self._create()
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA secure_delete = ON")  # an erased person's bytes are overwritten, not just unlinked
        if self.path not in _upgraded:  # an identity.db of an older c360: the tables it lacks
            con.executescript(DDL)
            _upgraded.add(self.path)
        return con

    def _create(self) -> None:
        """identity.db, owner-only from its first byte, in WAL mode with its tables: built under a temporary name
        and linked into place whole, so no process opens it half made (two first connections switching it to WAL
        at once made one SQLITE_BUSY). Only while it does not exist: closing any descriptor of a SQLite file drops
        every lock this process holds on it (POSIX), which breaks the connections of other threads
        (SQLITE_IOERR_SHORT_READ)."""
        with _creating:
            if self.path.exists():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
            os.close(os.open(new, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
            try:
                with closing(sqlite3.connect(new, isolation_level=None)) as con:
                    con.execute("PRAGMA journal_mode = WAL")
                    con.executescript(DDL)
                with suppress(FileExistsError):  # another process linked its own first: the same empty tables
                    os.link(new, self.path)
            finally:
                new.unlink()

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """identity.db to this caller alone until the block ends (committed), across processes."""
        con = self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def reading(self) -> sqlite3.Connection:
        return self.connect()

    @contextmanager
    def numbering(self, con: duckdb.DuckDBPyConnection) -> Iterator[Numbering]:
        """For `c360 resolve`: the live crosswalk and the numbers taken, identity.db held until the block ends, and
        the numbering moved past every id resolve handed out."""
        with self.writing() as db:
            live = pd.read_sql("SELECT record_id, customer_id FROM crosswalk", db)
            provisional = [r[0] for r in db.execute("SELECT customer_id FROM customers")]
            numbering = Numbering(live, _next_free(db, con, provisional))
            yield numbering
            _reserve(db, max(numbering.handed_out, numbering.first_free - 1))

    def settle(self, con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        """Drop what the warehouse now holds: crosswalk rows of records it resolved, provisional customers it has
        (kept or merged), where the live update placed the events it has folded (their rows reach their customers
        through its crosswalk now: kept, the table grew with the log). Live rows of a merged customer move to the
        customer it was merged into."""
        if not warehouse.has_table(con, "identity_crosswalk") or not self.path.exists():
            return {"records": 0, "customers": 0, "events": 0}
        merges = _merges(con)
        with self.writing() as db:
            events = [r[0] for r in db.execute("SELECT event_id FROM placed")]
            folded = _present(con, "SELECT id FROM events_folded WHERE log = 'events' AND id", events) \
                if warehouse.has_table(con, "events_folded") else set()
            db.executemany("DELETE FROM placed WHERE event_id = ?", [[e] for e in folded])
            ids = [r[0] for r in db.execute("SELECT record_id FROM crosswalk")]
            held = _present(con, "SELECT record_id FROM identity_crosswalk WHERE record_id", ids)
            db.executemany("DELETE FROM crosswalk WHERE record_id = ?", [[r] for r in held])
            for old, new in merges.items():
                db.execute("UPDATE crosswalk SET customer_id = ? WHERE customer_id = ?", [new, old])
            provisional = [r[0] for r in db.execute("SELECT customer_id FROM customers")]
            known = _present(con, "SELECT customer_id FROM identity_customers WHERE customer_id", provisional)
            gone = known | (set(provisional) & set(merges))
            db.executemany("DELETE FROM customers WHERE customer_id = ?", [[c] for c in gone])
        return {"records": len(held), "customers": len(gone), "events": len(folded)}


def _present(con: duckdb.DuckDBPyConnection, select_where: str, values: list[str]) -> set[str]:
    """The `values` a warehouse query `SELECT x FROM t WHERE x` finds."""
    if not values:
        return set()
    return {r[0] for r in con.execute(f"{select_where} IN (SELECT unnest(?))", [values]).fetchall()}


@dataclass
class Numbering:
    """What resolve must keep (`previous`: the live crosswalk) and the first number it may hand out."""

    previous: pd.DataFrame
    first_free: int
    handed_out: int = 0  # the highest number resolve used; set by resolve


def _number(customer_id: str) -> int | None:
    found = re.fullmatch(r"C(\d+)", customer_id)
    return int(found.group(1)) if found else None


def _next_free(db: sqlite3.Connection, con: duckdb.DuckDBPyConnection, provisional: list[str]) -> int:
    """The lowest number no customer id of the warehouse (merged ones included), of identity.db or of the
    numbering has."""
    taken = [n for c in provisional if (n := _number(c)) is not None]
    if warehouse.has_table(con, "identity_customers"):
        merged = "UNION ALL SELECT customer_id FROM identity_merges" if warehouse.has_table(con, "identity_merges") \
            else ""
        row = con.execute(f"""SELECT max(try_cast(regexp_extract(customer_id, '^C(\\d+)$', 1) AS BIGINT)) FROM
            (SELECT customer_id FROM identity_customers {merged})""").fetchone()
        taken.append(int(row[0]) if row and row[0] is not None else 0)
    stored = db.execute("SELECT next FROM numbering").fetchone()
    return max([*(n + 1 for n in taken), stored[0] if stored else 1])


def _reserve(db: sqlite3.Connection, number: int) -> None:
    db.execute("DELETE FROM numbering")
    db.execute("INSERT INTO numbering VALUES (?)", [number + 1])


def _merges(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """merged id -> the id it lives on as now (chains followed)."""
    if not warehouse.has_table(con, "identity_merges"):
        return {}
    direct = dict(con.execute("SELECT customer_id, merged_into FROM identity_merges ORDER BY merged_at").fetchall())
    out = {}
    for old in direct:
        new, seen = direct[old], {old}
        while new in direct and new not in seen:
            seen.add(new)
            new = direct[new]
        out[old] = new
    return out


# ---------------------------------------------------------------- the known people, per process


@dataclass
class _Known:
    """The warehouse's resolved people as splink sees them, and the linker over them."""

    stamp: tuple[Any, ...]
    prepared: pd.DataFrame
    linker: Linker
    emails: dict[str, str]  # normalised e-mail -> its first record (resolve's same-e-mail rule)
    lock: threading.Lock
    blocks: _Blocks | None  # None: a blocking rule of another form than `linkage` writes


# One equality of a blocking rule as `linkage` writes them: two columns, or two columns' first n characters
_TERM = re.compile(r'l\."(\w+)" = r\."(\w+)"|substr\(l\."(\w+)", 1, (\d+)\) = substr\(r\."\3", 1, \4\)')
Terms = list[tuple[str, str, int | None]]  # (left column, right column, characters compared or None: all)


def _terms(sql: str) -> Terms | None:
    found = [_TERM.fullmatch(part.strip()) for part in sql.split(" AND ")]
    if not all(found):
        return None
    return [(m[1], m[2], None) if m[1] else (m[3], m[3], int(m[4])) for m in found if m]


def _hashes(frame: pd.DataFrame, columns: list[tuple[str, int | None]]) -> tuple[np.ndarray, np.ndarray]:
    """A hash per row of these columns' values (each cut to its width), and which rows have them all."""
    values = pd.DataFrame({str(i): (frame[c].str[:width] if width else frame[c]).astype(object)
                           for i, (c, width) in enumerate(columns)})
    return pd.util.hash_pandas_object(values, index=False).to_numpy(), values.notna().all(axis=1).to_numpy()


@dataclass(frozen=True)
class _Blocks:
    """Per blocking rule, the known records' hashed left-hand values, sorted. The known records a new one can be
    blocked with are found by binary search, and splink's predict_between reads those few instead of every known
    record, which it would concatenate with their term frequencies on each call. The pairs and probabilities are
    the same: a hash collision only adds a record blocking then drops, and the term frequencies are the registered
    tables'."""

    rules: list[tuple[Terms, np.ndarray, np.ndarray]]  # terms, sorted hashes, their records' positions

    @classmethod
    def of(cls, linker: Linker, known: pd.DataFrame) -> _Blocks | None:
        rules = []
        for rule in linker._settings_obj._blocking_rules_to_generate_predictions:
            terms = _terms(rule.blocking_rule_sql)
            if terms is None or any(left not in known.columns for left, _, _ in terms):
                return None
            hashes, present = _hashes(known, [(left, width) for left, _, width in terms])
            positions = np.flatnonzero(present)
            order = np.argsort(hashes[positions], kind="stable")
            rules.append((terms, hashes[positions][order], positions[order]))
        return cls(rules)

    def candidates(self, new: pd.DataFrame) -> np.ndarray | None:
        """Positions of the known records some rule could pair with one of `new` (None: `new` lacks a column)."""
        found = [np.empty(0, dtype=np.int64)]
        for terms, hashes, positions in self.rules:
            if any(right not in new.columns for _, right, _ in terms):
                return None
            wanted, present = _hashes(new, [(right, width) for _, right, width in terms])
            wanted = wanted[present]
            low, high = np.searchsorted(hashes, wanted, "left"), np.searchsorted(hashes, wanted, "right")
            found += [positions[a:b] for a, b in zip(low, high, strict=True)]
        return np.unique(np.concatenate(found))


_known: dict[Path, _Known] = {}
_load_lock = threading.Lock()


def _stamp(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    return tuple(con.execute("SELECT max(resolved_at), count(*) FROM identity_crosswalk").fetchone() or ())


def _load(s: Settings, con: duckdb.DuckDBPyConnection) -> _Known:
    """The cached known people of this warehouse, built again (and identity.db settled) after a new resolve."""
    stamp = _stamp(con)
    with _load_lock:
        known = _known.get(s.warehouse)
        if known is None or known.stamp != stamp:
            Ledger(s).settle(con)
            prepared = con.execute("SELECT * FROM identity_records ORDER BY source, record_id").df()
            linker = linkage.load_linker(prepared, s.identity_model)
            for column in linker._settings_obj._term_frequency_columns:  # predict_between reads registered TF tables
                linker.table_management.compute_tf_table(column.name)
            first = prepared.dropna(subset=["email"]).drop_duplicates("email")
            emails = dict(zip(first["email"], first["record_id"], strict=True))
            known = _known[s.warehouse] = _Known(stamp, prepared, linker, emails, threading.Lock(),
                                                 _Blocks.of(linker, prepared))
        return known


def warm(s: Settings, con: duckdb.DuckDBPyConnection) -> None:
    """The known people of this warehouse (splink's linker among them) loaded, before a new person needs them."""
    if warehouse.has_table(con, "identity_crosswalk") and s.identity_model.exists():
        _load(s, con)


# ---------------------------------------------------------------- placing events


def place(s: Settings, con: duckdb.DuckDBPyConnection, events: Sequence[dict[str, Any]]) -> list[str | None]:
    """The customer id of each accepted event (None: a company-wide event, or one c360 cannot place yet — see
    `placements` for why), recorded in identity.db for the profiles every process serves (`placed_of`)."""
    customers = [p.customer_id for p in placements(s, con, events)]
    if events:
        with Ledger(s).writing() as db:
            db.executemany("INSERT OR REPLACE INTO placed VALUES (?, ?)",
                           [(e["event_id"], c) for e, c in zip(events, customers, strict=True)])
    return customers


def placed_of(s: Settings, event_ids: list[str]) -> dict[str, str | None]:
    """Where `place` put those of these events it placed (None: no customer)."""
    if not event_ids:
        return {}
    db = Ledger(s).reading()
    try:
        return dict(db.execute("SELECT event_id, customer_id FROM placed WHERE event_id IN "
                               "(SELECT value FROM json_each(?))", [json.dumps(event_ids)]).fetchall())
    finally:
        db.close()


def placements(s: Settings, con: duckdb.DuckDBPyConnection, events: Sequence[dict[str, Any]]) -> list[Placed]:
    """Where each accepted event lands, and how; new person records are matched, or made provisional customers."""
    if not events:
        return []
    if not warehouse.has_table(con, "identity_crosswalk"):
        return [Placed(None, "no resolved identity yet: run `c360 resolve`")] * len(events)
    rows = _rows(events)
    records = _record_ids(con, events, rows)
    ledger = Ledger(s)
    named = _named(s, con, ledger, [e.get("customer_id") for e in events])
    wanted = sorted({r for r in records if isinstance(r, str)})
    mapped = _crosswalk(con, ledger, wanted)
    given = {r: named[e["customer_id"]] for e, r in zip(events, records, strict=True)
             if e.get("customer_id") is not None and isinstance(r, str)}
    new = [r for r in wanted if r not in mapped and r.split(":", 1)[0] in MATCHED]
    if kept := [r for r in new if r in given and given[r].customer_id]:
        _keep(ledger, _people(events, rows, records, kept), given)
    if unnamed := [r for r in new if r not in given]:
        mapped |= _match(s, con, ledger, _people(events, rows, records, unnamed))
    out = []
    for event, record in zip(events, records, strict=True):
        if event.get("customer_id") is not None:
            out.append(named[event["customer_id"]])
        elif isinstance(record, Placed):
            out.append(record)
        else:
            out.append(mapped.get(record) or Placed(None, f"its {record.split(':', 1)[0]} record is not known yet: "
                                                          "the next `c360 ingest` and `c360 resolve` place it"))
    return out


def _named(s: Settings, con: duckdb.DuckDBPyConnection, ledger: Ledger, ids: list[Any]) -> dict[str, Placed]:
    """The events' own customer ids: known (warehouse or provisional), merged (→ the survivor), or unknown."""
    asked = sorted({c for c in ids if isinstance(c, str)})
    if not asked:
        return {}
    known = _present(con, "SELECT customer_id FROM identity_customers WHERE customer_id", asked)
    db = ledger.reading()
    try:
        known |= {r[0] for r in db.execute(f"SELECT customer_id FROM customers WHERE customer_id IN "
                                           f"({','.join('?' * len(asked))})", asked)}
    finally:
        db.close()
    merges = _merges(con)
    unknown = Placed(None, "unknown customer id: not resolved by `c360 resolve` nor placed live")
    return {c: Placed(c, "customer_id") if c in known else
            Placed(merges[c], "customer_id (merged)") if c in merges else unknown for c in asked}


def _crosswalk(con: duckdb.DuckDBPyConnection, ledger: Ledger, record_ids: list[str]) -> dict[str, Placed]:
    """The records the crosswalks know: the warehouse's first, then the live one."""
    if not record_ids:
        return {}
    out = {r: Placed(c, "crosswalk") for r, c in con.execute(
        "SELECT record_id, customer_id FROM identity_crosswalk WHERE record_id IN (SELECT unnest(?))",
        [record_ids]).fetchall()}
    rest = [r for r in record_ids if r not in out]
    if rest:
        db = ledger.reading()
        try:
            out |= {r: Placed(c, "live crosswalk") for r, c in db.execute(
                f"SELECT record_id, customer_id FROM crosswalk WHERE record_id IN ({','.join('?' * len(rest))})",
                rest)}
        finally:
            db.close()
    return out


def _people(events: Sequence[dict[str, Any]], rows: dict[str, pd.DataFrame], records: list[str | Placed],
            new: list[str]) -> pd.DataFrame:
    """The new person records in resolve's standard columns (`identity.RECORD_SQLS` over the events' rows), the
    batch's last row of each record."""
    local = connections.local()
    frames = []
    for table_id in dict.fromkeys(r.split(":", 1)[0] for r in new):
        table = contract.table(table_id)
        positions = [i for i, r in enumerate(records) if isinstance(r, str) and r in new and r.startswith(table_id)]
        batch = rows[table_id].loc[positions].drop_duplicates(table.key, keep="last")
        name = f"{table.sql_name}_{uuid.uuid4().hex}"
        local.register(name, pyarrow.Table.from_pandas(batch, preserve_index=False))
        try:
            sql = identity.RECORD_SQLS[table_id].replace(f"FROM {table.sql_name}", f'FROM "{name}"')
            frames.append(local.execute(sql).df())
        finally:
            local.unregister(name)
    people = pd.concat(frames, ignore_index=True)
    people.insert(0, "record_id", people["source"] + ":" + people["source_key"].astype(str))
    return people[list(PERSON_COLUMNS)]


def _match(s: Settings, con: duckdb.DuckDBPyConnection, ledger: Ledger, people: pd.DataFrame) -> dict[str, Placed]:
    """Decide the new records in one write transaction of identity.db: what another process placed meanwhile
    stands; each other record goes to its best match (known, live, or an earlier record of this batch), else to a
    new provisional customer."""
    known = _load(s, con)
    with ledger.writing() as db:
        done = _live_rows(db, list(people["record_id"]))
        people = people[~people["record_id"].isin(done)].reset_index(drop=True)
        if people.empty:
            return done
        raw, prepared = identity.normalise(people)
        emails = known.emails | _live_emails(db)
        live_owners = _live_owners(db)
        wanted = _emails_wanted(known, prepared)
        modelled = _modelled(prepared, emails, set(_owners(con, sorted(wanted))) | set(live_owners))
        pairs = _NO_PAIRS
        if modelled:
            live = _live_people(db)
            live_prepared = identity.normalise(live)[1] if len(live) else live
            with known.lock:
                pairs = _scores(known, prepared.iloc[modelled], prepared, live_prepared)
        owners = _owners(con, sorted({*pairs["record_id_l"], *wanted})) | live_owners
        decided: dict[str, Placed] = {}
        numbers = _Numbers(db, con)
        for i, record in prepared.iterrows():
            placed = _best(record, pairs, owners, emails, s.match_threshold) or _provisional(db, numbers)
            decided[record["record_id"]] = placed
            owners[record["record_id"]] = placed.customer_id  # type: ignore[assignment]
            if isinstance(record["email"], str):
                emails.setdefault(record["email"], record["record_id"])
            _store(db, raw.iloc[i], placed)
        _golden(db, {p.customer_id for p in decided.values() if p.customer_id})
    return done | decided


def _keep(ledger: Ledger, people: pd.DataFrame, given: dict[str, Placed]) -> None:
    """New person records whose events name their customer: kept in the live crosswalk as that customer's, so the
    live features count them and the next `c360 resolve` starts from them (a record already placed stands)."""
    raw = identity.normalise(people)[0]
    with ledger.writing() as db:
        done = _live_rows(db, list(people["record_id"]))
        for i, record_id in enumerate(people["record_id"]):
            if record_id not in done:
                _store(db, raw.iloc[i], given[record_id])


def _emails_wanted(known: _Known, prepared: pd.DataFrame) -> set[str]:
    """The known records the new records' e-mails point to."""
    return {known.emails[e] for e in prepared["email"].dropna() if e in known.emails}


def _live_rows(db: sqlite3.Connection, record_ids: list[str]) -> dict[str, Placed]:
    marks = ",".join("?" * len(record_ids))
    return {r: Placed(c, "live crosswalk") for r, c in db.execute(
        f"SELECT record_id, customer_id FROM crosswalk WHERE record_id IN ({marks})", record_ids)}


def _live_owners(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT record_id, customer_id FROM crosswalk WHERE record IS NOT NULL").fetchall())


def _live_people(db: sqlite3.Connection) -> pd.DataFrame:
    """The person records placed live (their rows as stored), in the order they were placed."""
    rows = [json.loads(r[0]) for r in db.execute("SELECT record FROM crosswalk WHERE record IS NOT NULL "
                                                 "ORDER BY rowid")]
    return pd.DataFrame(rows, columns=list(PERSON_COLUMNS))


def _live_emails(db: sqlite3.Connection) -> dict[str, str]:
    """Normalised e-mail → the last record placed live with it (as the e-mail of each was stored)."""
    return dict(db.execute("SELECT email, record_id FROM crosswalk WHERE record IS NOT NULL AND email IS NOT NULL "
                           "ORDER BY rowid").fetchall())


def _modelled(new: pd.DataFrame, emails: dict[str, str], owned: set[str]) -> list[int]:
    """Positions of the new records splink must score: those the same-e-mail rule does not place, as `_best` tries
    it first, in order (a record placed makes its e-mail's next records the rule's). Most new tickets come from a
    known e-mail: no splink run for them."""
    out: list[int] = []
    first: dict[str, str] = {}  # the batch's own e-mails: their first record
    owned = set(owned)
    for i, (record_id, email) in enumerate(zip(new["record_id"], new["email"], strict=True)):
        if not isinstance(email, str) or emails.get(email, first.get(email)) not in owned:
            out.append(i)
        owned.add(record_id)
        if isinstance(email, str):
            first.setdefault(email, record_id)
    return out


_NO_PAIRS = pd.DataFrame({"record_id_l": pd.Series(dtype=object), "record_id_r": pd.Series(dtype=object),
                          "match_probability": pd.Series(dtype="float64")})


def _scores(known: _Known, new: pd.DataFrame, batch: pd.DataFrame, live: pd.DataFrame) -> pd.DataFrame:
    """splink's pairs over 0.01: record_id_l a known, live or `batch` record, record_id_r one of `new` (some of
    `batch`)."""
    linker = known.linker
    candidates = None if known.blocks is None else known.blocks.candidates(new)
    others = batch[~batch["record_id"].isin(new["record_id"])]
    left = pd.concat([known.prepared if candidates is None else known.prepared.iloc[candidates],
                      _blocked(linker, live, new) if len(live) else None, new, others])
    columns = [c for c in known.prepared.columns if c in new.columns]
    tables: list[Any] = []
    try:
        for frame in (left, new):
            tables.append(_register(linker, frame, columns))
        scored = linker.inference.predict_between(tables[0], tables[1], threshold_match_probability=0.01,
                                                  warning_mode="never")
        try:
            pairs = scored.as_duckdbpyrelation().select("record_id_l", "record_id_r", "match_probability").df()
        finally:
            scored.drop_table_from_database_and_remove_from_cache()
    finally:
        for table in tables:
            table.drop_table_from_database_and_remove_from_cache(force_non_splink_table=True)
    return pairs[pairs["record_id_l"] != pairs["record_id_r"]]


def _register(linker: Linker, records: pd.DataFrame, columns: list[str]) -> Any:
    """`records` as one table of splink's, each row's source in its `source_dataset` column: what splink writes for
    a table per source, in one table to describe and concatenate. A round's few new records took 150–210 ms a call
    with a table per source and role, 90–100 ms with one per role (the same pairs)."""
    frame = records.reindex(columns=columns)
    source_dataset = linker._settings_obj.column_info_settings.source_dataset_input_column
    if source_dataset is not None:  # None: one source, deduplicated
        frame.insert(0, source_dataset.unquote().name, frame["source"].astype(str))
    return linker._db_api.register(frame, table_name=f"c360_live_{uuid.uuid4().hex}")


def _blocked(linker: Linker, records: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Those of `records` (the live ones: thousands at most, indexed per call) some blocking rule could pair with
    one of `new`; all of them when a rule is of another form."""
    blocks = _Blocks.of(linker, records)
    candidates = None if blocks is None else blocks.candidates(new)
    return records if candidates is None else records.iloc[candidates]


def _owners(con: duckdb.DuckDBPyConnection, record_ids: list[str]) -> dict[str, str]:
    """record -> customer in the warehouse's crosswalk."""
    if not record_ids:
        return {}
    return dict(con.execute("SELECT record_id, customer_id FROM identity_crosswalk WHERE record_id IN "
                            "(SELECT unnest(?))", [record_ids]).fetchall())


def _best(record: pd.Series, pairs: pd.DataFrame, owners: dict[str, str], emails: dict[str, str],
          threshold: float) -> Placed | None:
    """The customer of the record's strongest link at or over the threshold: the same e-mail (resolve's rule,
    probability 1), else splink's most probable match whose customer is known."""
    same = emails.get(record["email"]) if isinstance(record["email"], str) else None
    if same is not None and same in owners:
        return Placed(owners[same], "rule: same e-mail", 1.0)
    mine = pairs[(pairs["record_id_r"] == record["record_id"]) & (pairs["match_probability"] >= threshold)]
    mine = mine.sort_values(["match_probability", "record_id_l"], ascending=[False, True])
    for left, probability in zip(mine["record_id_l"], mine["match_probability"], strict=True):
        if left in owners:
            return Placed(owners[left], "model", float(probability))
    return None


class _Numbers:
    """The free customer numbers of one write transaction of identity.db: the lowest looked up once (`_next_free`
    reads every provisional id and scans the warehouse's customers for the highest), then counted up, each reserved
    as it is handed out (`c360 resolve` numbers after them)."""

    def __init__(self, db: sqlite3.Connection, con: duckdb.DuckDBPyConnection) -> None:
        self.db, self.con = db, con
        self.next: int | None = None

    def take(self) -> int:
        if self.next is None:
            provisional = [r[0] for r in self.db.execute("SELECT customer_id FROM customers")]
            self.next = _next_free(self.db, self.con, provisional)
        number, self.next = self.next, self.next + 1
        _reserve(self.db, number)
        return number


def _provisional(db: sqlite3.Connection, numbers: _Numbers) -> Placed:
    """A new provisional customer, its id the next free number."""
    number = numbers.take()
    db.execute("INSERT INTO customers (customer_id, records, unlinked, created_at) VALUES (?, 0, 1, ?)",
               [f"C{number:08d}", _now()])
    return Placed(f"C{number:08d}", "unlinked")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _store(db: sqlite3.Connection, person: pd.Series, placed: Placed) -> None:
    record = {c: _plain(person[c]) for c in PERSON_COLUMNS}
    db.execute("INSERT INTO crosswalk VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               [person["record_id"], placed.customer_id, placed.how, placed.probability, _now(),
                _plain(person["email_norm"]), _plain(person["phone_norm"]), json.dumps(record)])


def _plain(value: Any) -> Any:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.isoformat() if isinstance(value, pd.Timestamp | datetime) else value


def _golden(db: sqlite3.Connection, customers: set[str]) -> None:
    """The golden fields of the provisional ones of `customers`, from their records (`identity.golden_records`)."""
    marks = ",".join("?" * len(customers))
    provisional = [r[0] for r in db.execute(f"SELECT customer_id FROM customers WHERE customer_id IN ({marks})",
                                            sorted(customers))]
    if not provisional:
        return
    marks = ",".join("?" * len(provisional))
    stored = db.execute(f"SELECT customer_id, method, record FROM crosswalk WHERE customer_id IN ({marks}) "
                        "AND record IS NOT NULL", provisional).fetchall()
    people = pd.DataFrame([json.loads(r[2]) for r in stored], columns=list(PERSON_COLUMNS))
    people["seen_at"] = pd.to_datetime(people["seen_at"])
    crosswalk = pd.DataFrame({"record_id": people["record_id"], "customer_id": [r[0] for r in stored],
                              "method": [r[1] for r in stored]})
    with warnings.catch_warnings():  # pandas warns about concatenating the empty accounts frame
        warnings.simplefilter("ignore", FutureWarning)
        golden = identity.golden_records(identity.normalise(people)[0], _NO_ACCOUNTS, crosswalk)
    for row in golden.to_dict("records"):
        db.execute("""UPDATE customers SET display_name = ?, company = ?, segment = ?, region = ?, emails = ?,
            phones = ?, sources = ?, records = ?, first_seen = ?, unlinked = ? WHERE customer_id = ?""",
                   [_plain(row["display_name"]), _plain(row["company"]), _plain(row["segment"]),
                    _plain(row["region"]), json.dumps(row["emails"]), json.dumps(row["phones"]),
                    json.dumps(row["sources"]), int(row["records"]), _plain(row["first_seen"]),
                    int(bool(row["unlinked"])), row["customer_id"]])


_NO_ACCOUNTS = pd.DataFrame(columns=["record_id", "source", "account_name", "segment", "region", "anchor",
                                     "billing_anchor", "seen_at"])


# ---------------------------------------------------------------- what the live feature update adds


def pending(s: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(live crosswalk rows, provisional customers) in the columns and types of the warehouse's
    `identity_crosswalk` and `identity_customers`, for the batch SQL to see beside them."""
    ledger = Ledger(s)
    if not ledger.path.exists():
        return _crosswalk_frame([]), _customers_frame([])
    db = ledger.reading()
    try:
        crosswalk = db.execute("SELECT record_id, customer_id, method, probability, at FROM crosswalk").fetchall()
        customers = db.execute(f"SELECT {', '.join(CUSTOMER_COLUMNS)} FROM customers").fetchall()
    finally:
        db.close()
    return _crosswalk_frame(crosswalk), _customers_frame(customers)


def _crosswalk_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["record_id", "customer_id", "method", "match_probability", "resolved_at"])
    split = frame["record_id"].astype(str).str.split(":", n=1)
    frame["source"], frame["source_key"] = split.str[0], split.str[1]
    frame["match_probability"] = frame["match_probability"].astype("float64")
    frame["resolved_at"] = pd.to_datetime(frame["resolved_at"], format="ISO8601").dt.tz_localize(None)
    return frame[list(CROSSWALK_COLUMNS)]


def _customers_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(CUSTOMER_COLUMNS))
    for column in ("emails", "phones", "sources"):
        frame[column] = [json.loads(v) if v else [] for v in frame[column]]
    frame["records"] = frame["records"].astype("int64")
    frame["first_seen"] = pd.to_datetime(frame["first_seen"], format="ISO8601")
    frame["unlinked"] = frame["unlinked"].astype(bool)
    return frame


# ---------------------------------------------------------------- identity.db as a personal-data store


class LiveIdentity:
    """identity.db (`c360.core.personal.STORES`): the person records placed live and the provisional customers'
    golden records hold e-mails, names and phones."""

    @staticmethod
    def export(work: Work, person: Person) -> dict[str, list[dict[str, Any]]]:
        ledger = Ledger(work.s)
        if not ledger.path.exists():
            return {}
        db = ledger.reading()
        try:
            db.row_factory = sqlite3.Row
            records = [dict(r) for r in db.execute(f"SELECT * FROM crosswalk WHERE {_THEIRS}", _theirs(person))]
            customers = sorted({r["customer_id"] for r in records} | set(person.customers))
            marks = ",".join("?" * len(customers))
            golden = [dict(r) for r in db.execute(f"SELECT * FROM customers WHERE customer_id IN ({marks})",
                                                  customers)]
            placed = [dict(r) for r in db.execute(f"SELECT * FROM placed WHERE customer_id IN ({marks})", customers)]
        finally:
            db.close()
        return {"crosswalk": records, "provisional_customers": golden, "placed_events": placed}

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        ledger = Ledger(work.s)
        if not ledger.path.exists():
            return Erased()
        with ledger.writing() as db:
            touched = {r[0] for r in db.execute(f"SELECT customer_id FROM crosswalk WHERE {_THEIRS}",
                                                _theirs(person))}
        whole = sorted(set(person.whole))
        marks = ",".join("?" * len(whole))
        rows = sqlite_delete(ledger.path, [(f"DELETE FROM crosswalk WHERE {_THEIRS}", _theirs(person)),
                                           (f"DELETE FROM crosswalk WHERE customer_id IN ({marks})", whole),
                                           (f"DELETE FROM customers WHERE customer_id IN ({marks})", whole),
                                           (f"DELETE FROM placed WHERE customer_id IN ({marks})", whole)])
        with ledger.writing() as db:
            empty = [r[0] for r in db.execute("SELECT customer_id FROM customers WHERE customer_id NOT IN "
                                              "(SELECT customer_id FROM crosswalk)")]
            db.executemany("DELETE FROM customers WHERE customer_id = ?", [[c] for c in empty])
            _golden(db, touched - set(empty))
        rows += len(empty)
        return Erased(rows=rows, files=[str(ledger.path.relative_to(work.s.home))] if rows else [])


# A live record is the person's by its id (a source key erasure found), its normalised e-mail, or its phone
_THEIRS = ("(record_id IN (SELECT value FROM json_each(?)) OR email IN (SELECT value FROM json_each(?)) "
           "OR phone IN (SELECT value FROM json_each(?)))")


def _theirs(person: Person) -> list[str]:
    return [json.dumps(person.record_ids), json.dumps(list(person.emails)), json.dumps(list(person.phones))]


# ---------------------------------------------------------------- merged ids, for the service


_merged: dict[Path, tuple[tuple[int, int, int], dict[str, str]]] = {}


def merged_into(s: Settings, customer_id: str, connect: event_log.Connect) -> str | None:
    """The id a merged customer lives on as (`identity_merges`, chains followed), or None; the merges are read
    (through `connect`: the service's turns a busy warehouse into a 503) again only when the warehouse file
    changed."""
    try:
        now = file_stamp(s.warehouse.stat())
    except FileNotFoundError:
        return None
    cached = _merged.get(s.warehouse)
    if cached is None or cached[0] != now:
        with connect() as con:
            cached = _merged[s.warehouse] = (now, _merges(con))
    return cached[1].get(customer_id)
