"""Privacy rights: resolve a person, export what c360 holds on them, erase them, and keep them out afterwards.

* `resolve` — `email`: that contact, i.e. the source records carrying the address and the records identity links
  to them (same customer, a link at or over the match threshold); `customer_id`: the whole account. A customer all
  of whose person records are the person's goes entirely (a consumer account, say). Rows that reference removed
  records (a contact's activities, a user's events, a marketing contact's sends) go with them.
* `export` / `erase` — iterate over the registry `c360.core.personal.STORES`. Erasure runs under the warehouse's
  writer lock and ends with the warehouse rewritten (`c360.core.warehouse.rewrite`), so deleted bytes are gone.
* Suppression — after an erasure, the salted SHA-256 of the person's identifiers (normalised e-mails and phones,
  the removed rows' source keys) is appended to `privacy/suppressed`; `c360 ingest` drops rows matching it before
  anything is stored (`Suppressed.mask`), counted as `suppressed`. The salt (`privacy/salt`, owner-only) keeps the
  hashes from being matched against a list of known addresses elsewhere.
* Retention — `purge_expired` drops quarantined rows and audit records older than their settings.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from c360.core import audit, contract, warehouse
from c360.core.personal import STORES, Erased, Person, Work
from c360.core.settings import Settings
from c360.features.linkage import normalise_email, normalise_phone
from c360.features.privacy_stores import count

ACCOUNT_TABLES = ("crm/accounts", "billing/customers")  # their children belong to the account, not to one person
EMAIL_COLUMNS = ("email", "requester_email")
PHONE_COLUMNS = ("phone", "requester_phone")


class UnknownPerson(LookupError):
    """The warehouse has no identity tables to resolve a person with."""


# ---------------------------------------------------------------- resolving


def resolve(s: Settings, con: duckdb.DuckDBPyConnection, *, email: str | None = None,
            customer_id: str | None = None) -> Person:
    """The person behind an e-mail address, or everyone of an account (`Person.found` False when c360 holds
    nothing on them: an erasure then only records the suppression again). A customer placed live and not resolved
    yet (a provisional customer of `live_identity`) is found by its id; records linked at or over
    `C360_MATCH_THRESHOLD` count as the e-mail's person."""
    threshold = s.match_threshold
    if not warehouse.has_table(con, "identity_crosswalk"):
        raise UnknownPerson("no identity tables in the warehouse: run `c360 resolve` first")
    if customer_id is not None:
        records = _ids(con, "SELECT record_id FROM identity_crosswalk WHERE customer_id = ?", [customer_id])
        address = None
    else:
        address = normalise_email(email) or str(email).strip().lower()
        records = _linked(con, _ids(con, "SELECT record_id FROM identity_records WHERE email = ?", [address]),
                          threshold)
    customers = _ids(con, "SELECT DISTINCT customer_id FROM identity_crosswalk WHERE record_id IN "
                          "(SELECT unnest(?))", [records])
    if customer_id is not None and customer_id in _provisional(s):
        customers.add(customer_id)
    whole = customers if customer_id is not None else _only_person(con, records, customers)
    records |= _ids(con, "SELECT record_id FROM identity_crosswalk WHERE customer_id IN (SELECT unnest(?))", [whole])
    keys = _with_children(con, _by_table(records), whole)
    emails = _ids(con, "SELECT email FROM identity_records WHERE record_id IN (SELECT unnest(?)) AND email IS NOT "
                       "NULL", [records]) | ({address} if address else set())
    phones = _ids(con, "SELECT phone FROM identity_records WHERE record_id IN (SELECT unnest(?)) AND phone IS NOT "
                       "NULL", [records])
    return Person("customer_id" if customer_id else "email", tuple(sorted(customers)), tuple(sorted(whole)),
                  {t: tuple(sorted(k)) for t, k in keys.items() if k}, tuple(sorted(emails)), tuple(sorted(phones)))


def _provisional(s: Settings) -> set[str]:
    from c360.features import live_identity  # at call time: it imports this module (through the event log)

    return set(live_identity.pending(s)[1]["customer_id"])


def _ids(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | dict[str, Any]) -> set[str]:
    if isinstance(params, list):
        params = [sorted(p) if isinstance(p, set) else p for p in params]
    return {str(r[0]) for r in con.execute(sql, params).fetchall()}


def _linked(con: duckdb.DuckDBPyConnection, seeds: set[str], threshold: float) -> set[str]:
    """`seeds` and the records linked to one of them, within the same customer, at or over `threshold`."""
    if not seeds or not warehouse.has_table(con, "identity_links"):
        return seeds
    return seeds | _ids(con, """
        SELECT CASE WHEN l.record_id_l IN (SELECT unnest($seeds)) THEN l.record_id_r ELSE l.record_id_l END
        FROM identity_links l
        JOIN identity_crosswalk a ON a.record_id = l.record_id_l
        JOIN identity_crosswalk b ON b.record_id = l.record_id_r
        WHERE (l.record_id_l IN (SELECT unnest($seeds)) OR l.record_id_r IN (SELECT unnest($seeds)))
          AND a.customer_id = b.customer_id AND l.match_probability >= $threshold""",
                                 {"seeds": sorted(seeds), "threshold": threshold})


def _only_person(con: duckdb.DuckDBPyConnection, records: set[str], customers: set[str]) -> set[str]:
    """The customers whose every person record (all but the CRM account) is one of `records`."""
    others = _ids(con, """SELECT DISTINCT customer_id FROM identity_crosswalk
                          WHERE customer_id IN (SELECT unnest(?)) AND source <> 'crm/accounts'
                            AND record_id NOT IN (SELECT unnest(?))""", [sorted(customers), sorted(records)])
    return customers - others


def _by_table(record_ids: set[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for record_id in record_ids:
        table, key = record_id.split(":", 1)
        out.setdefault(table, set()).add(key)
    return out


def _with_children(con: duckdb.DuckDBPyConnection, keys: dict[str, set[str]], whole: set[str]) -> dict[str, set[str]]:
    """`keys` plus the rows referencing them, parents first (the contract lists parents before children); an
    account table's children only for customers that go entirely."""
    whole_keys = _by_table(_ids(con, "SELECT record_id FROM identity_crosswalk WHERE customer_id IN "
                                     "(SELECT unnest(?))", [sorted(whole)]))
    for t in contract.TABLES:
        for ref in t.refs:
            parents = whole_keys.get(ref.table, set()) if ref.table in ACCOUNT_TABLES else keys.get(ref.table, set())
            if parents and warehouse.has_table(con, t.sql_name):
                keys.setdefault(t.id, set()).update(_ids(
                    con, f'SELECT "{t.key}" FROM {t.sql_name} WHERE "{ref.column}" IN (SELECT unnest(?))',
                    [sorted(parents)]))
    return keys


# ---------------------------------------------------------------- export and erase


def export(s: Settings, person: Person) -> dict[str, Any]:
    """Everything the registered stores hold on `person`, as one JSON-able document."""
    with warehouse.connect(s, read_only=True) as con:
        work = Work(s, con)
        held = {store.name: store.function("export")(work, person) for store in STORES}
    return {"asked": person.asked, "customers": list(person.customers), "records": person.record_ids, **held}


def erase(s: Settings, person: Person, on_store: Any = None) -> dict[str, Erased]:
    """Remove `person` from every registered store, then record their suppression; idempotent."""
    report = {}
    with warehouse.connect(s, rewrite_after=True) as con:
        work = Work(s, con)
        for store in STORES:
            report[store.name] = store.function("erase")(work, person)
            if on_store is not None:
                on_store(store.name)
        con.execute("CHECKPOINT")
    suppress(s, person)
    return report


# ---------------------------------------------------------------- suppression


def _private_dir(s: Settings) -> Path:
    folder = s.home / "privacy"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _salt(s: Settings) -> bytes:
    path = _private_dir(s) / "salt"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return path.read_bytes()


def _hash(salt: bytes, identifier: str) -> str:
    return hashlib.sha256(salt + identifier.encode()).hexdigest()


def identifiers(person: Person) -> set[str]:
    """What a later export is matched on: normalised e-mails and phones, and the removed rows' source keys."""
    return ({f"email:{e}" for e in person.emails} | {f"phone:{p}" for p in person.phones}
            | {f"key:{t}:{k}" for t, keys in person.records.items() for k in keys})


def suppress(s: Settings, person: Person) -> int:
    """Append the salted hashes of `person`'s identifiers to the suppression list; returns how many are new."""
    salt, path = _salt(s), _private_dir(s) / "suppressed"
    known = set(path.read_text().split()) if path.is_file() else set()
    new = sorted({_hash(salt, i) for i in identifiers(person)} - known)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, "".join(f"{h}\n" for h in new).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(new)


@dataclass(frozen=True)
class Suppressed:
    """The suppression list, to drop a later export's rows of erased people before ingest stores anything."""

    salt: bytes
    hashes: frozenset[str]

    @classmethod
    def load(cls, s: Settings) -> Suppressed | None:
        path = s.home / "privacy" / "suppressed"
        if not path.is_file():
            return None
        return cls(_salt(s), frozenset(path.read_text().split()))

    def mask(self, table: contract.Table, raw: pd.DataFrame) -> np.ndarray:
        """Which rows of `raw` (a file's contract columns as text) belong to an erased person: by their key, a
        key they reference, an e-mail or a phone."""
        hit = np.zeros(len(raw), dtype=bool)
        for identifiers_of_rows in row_identifiers(table, raw):
            hit |= np.array([self._has(i) for i in identifiers_of_rows], dtype=bool)
        return hit

    def _has(self, identifier: str | None) -> bool:
        return identifier is not None and _hash(self.salt, identifier) in self.hashes


def row_identifiers(table: contract.Table, raw: pd.DataFrame) -> list[list[str | None]]:
    """The identifiers (as `identifiers` names them) of the rows of `raw`, a table's contract columns as text: one
    list per kind of identifier (the row's key, each key it references, each e-mail, each phone), a value per row."""
    found: list[list[str | None]] = [[f"key:{table.id}:{v}" for v in raw[table.key]]]
    found += [[f"key:{r.table}:{v}" for v in raw[r.column]] for r in table.refs]
    found += [[_tag("email", normalise_email(v)) for v in raw[c]] for c in EMAIL_COLUMNS if c in raw]
    regions = raw["country"].map(_region) if "country" in raw else pd.Series("US", index=raw.index)
    found += [[_tag("phone", normalise_phone(v, r)) for v, r in zip(raw[c], regions, strict=True)]
              for c in PHONE_COLUMNS if c in raw]
    return found


def _tag(kind: str, value: str | None) -> str | None:
    return None if value is None else f"{kind}:{value}"


def _region(country: object) -> str:
    return country.upper() if isinstance(country, str) and len(country) == 2 else "US"


# ---------------------------------------------------------------- retention


def purge_expired(s: Settings, now: datetime | None = None) -> dict[str, int]:
    """Drop quarantined rows older than C360_QUARANTINE_RETENTION_DAYS and audit records older than
    C360_AUDIT_RETENTION_DAYS; the warehouse is rewritten so the dropped rows' bytes go too."""
    now = now or datetime.now(UTC)
    quarantine_before = (now - timedelta(days=s.quarantine_retention_days)).replace(tzinfo=None)
    with warehouse.connect(s, rewrite_after=True) as con:
        removed = 0
        if warehouse.has_table(con, "quarantine"):
            removed = count(con, """DELETE FROM quarantine WHERE ingest_id IN
                (SELECT ingest_id FROM ingest_log WHERE ingested_at < ?)""", [quarantine_before])
    audited = audit.purge(s, now - timedelta(days=s.audit_retention_days))
    return {"quarantine_rows": int(removed), "audit_records": audited}
