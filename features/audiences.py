"""Audiences: named, saved filters over the profile table, their membership history and their exports.

An audience is a name and a filter (`features.audience_filter`) over the profile table
(`features.audience_profile`). Its members are the customers the filter selects; they are computed when the
audience is created and again at the end of every scoring run (`c360 score` calls `refresh`). Membership is kept as
history: a row per stay (customer id, entered at, left at — empty while they are a member), so who entered and who
left, and when, stays known.

The store is one SQLite file, `C360_HOME/audiences/audiences.db` (WAL): the service reads it from several threads
while a command writes it, which SQLite allows and DuckDB's single-writer warehouse would not (a `c360 score`
refresh would wait on, or lock out, every ingest); an erasure deletes with secure delete and vacuums it
(`c360.core.personal.sqlite_delete`).

An export writes the members with what a CRM or an e-mail tool needs (`EXPORT`: ids, name, e-mail, traits, churn
band, value, next best action, expansion probability, best campaign channel and topic with its response
probability) to CSV or Parquet, leaving out, and counting, the customers
who opted out of marketing e-mail and those erased or asked to be (an erasure request names them, or they left the
warehouse). Every export — a file, or a download from the service — is recorded with its path, when, who and the
customer ids in it, so an erasure lists it: a file under C360_HOME is rewritten without the person, one elsewhere
is listed for recall
(`Audiences`, a store of `c360.core.personal.STORES`).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from c360.core import connections, consent, warehouse
from c360.core.at_rest import write_private
from c360.core.personal import Erased, Person, Work, sqlite_delete
from c360.core.settings import Settings
from c360.features import audience_filter, audience_profile
from c360.features.audience_filter import Filter, FilterError
from c360.features.privacy_requests import all_requests

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MARKETING = "marketing_email"  # the consent an export for a CRM or an e-mail tool needs
EXPORT = ("customer_id", "name", "email", "segment", "region", "plan", "churn_band", "clv_12m", "next_best_action",
          "expansion_probability", "response_channel", "response_topic", "response_probability")
CATEGORIES = ("churn_band", "segment", "region", "plan", "next_best_action", "lifecycle_stage", "persona",
              "response_channel", "response_topic")
NUMBERS = ("clv_12m", "churn_probability", "expansion_probability", "response_probability", "mrr", "health_score")
DDL = """
CREATE TABLE IF NOT EXISTS audiences (name TEXT PRIMARY KEY, filter TEXT NOT NULL, created_by TEXT NOT NULL,
    created_at TEXT NOT NULL, refreshed_at TEXT);
CREATE TABLE IF NOT EXISTS membership (audience TEXT NOT NULL, customer_id TEXT NOT NULL, entered_at TEXT NOT NULL,
    left_at TEXT);
CREATE INDEX IF NOT EXISTS membership_open ON membership (audience, left_at);
CREATE INDEX IF NOT EXISTS membership_customer ON membership (customer_id);
CREATE TABLE IF NOT EXISTS exports (id INTEGER PRIMARY KEY, audience TEXT NOT NULL, path TEXT NOT NULL,
    written_at TEXT NOT NULL, written_by TEXT NOT NULL, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS export_members (export_id INTEGER NOT NULL, customer_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS export_members_customer ON export_members (customer_id);
"""


class AudienceExists(ValueError):
    pass


class UnknownAudience(LookupError):
    pass


def path(s: Settings) -> Path:
    return s.home / "audiences" / "audiences.db"


def default_export(s: Settings, name: str) -> Path:
    """Where an export goes when no other place is given: under C360_HOME (a registered personal-data store)."""
    return s.home / "audiences" / "exports" / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.csv"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@contextmanager
def _db(s: Settings) -> Iterator[sqlite3.Connection]:
    """A connection to the store, one per use (threads of the service each open their own), committing on exit."""
    file = path(s)
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with closing(sqlite3.connect(file, timeout=30)) as con:
        con.execute("PRAGMA journal_mode = WAL")
        con.executescript(DDL)
        with con:
            yield con


# ---------------------------------------------------------------- the profile and the filter


def _overrides(s: Settings) -> consent.Overrides:
    if not s.warehouse.exists():
        return {}
    with warehouse.connect(s, read_only=True) as con:
        return consent.overrides(con)


def check(s: Settings, where: str) -> Filter:
    """The filter `where`, checked against the profile's fields (FilterError) before anything is queried."""
    return audience_filter.parse(where, audience_profile.fields(s))


def select(profile: pd.DataFrame, condition: Filter) -> list[str]:
    """The customer ids of `profile` that meet `condition`, sorted."""
    con = connections.local()
    con.register("profile", profile)
    try:
        rows = con.execute(f"SELECT customer_id FROM profile WHERE {condition.sql} ORDER BY customer_id",
                           list(condition.params)).fetchall()
    finally:
        con.unregister("profile")
    return [str(r[0]) for r in rows]


# ---------------------------------------------------------------- create, refresh, list


@dataclass(frozen=True)
class Change:
    audience: str
    size: int
    entered: int
    left: int
    problem: str | None = None  # why its members were not computed again (they stay as they were)


def _apply(con: sqlite3.Connection, name: str, members: Sequence[str], at: str) -> Change:
    """Close the stays of those who left, open stays for those who entered."""
    current = {r[0] for r in con.execute("SELECT customer_id FROM membership WHERE audience = ? AND left_at IS NULL",
                                         [name])}
    wanted = set(members)
    left, entered = sorted(current - wanted), sorted(wanted - current)
    con.executemany("UPDATE membership SET left_at = ? WHERE audience = ? AND customer_id = ? AND left_at IS NULL",
                    [(at, name, c) for c in left])
    con.executemany("INSERT INTO membership VALUES (?, ?, ?, NULL)", [(name, c, at) for c in entered])
    con.execute("UPDATE audiences SET refreshed_at = ? WHERE name = ?", [at, name])
    return Change(name, len(wanted), len(entered), len(left))


def create(s: Settings, name: str, where: str, who: str) -> tuple[Change, list[str]]:
    """Save the audience `name` with the filter `where` and compute its members: (its change, the member ids).
    ValueError for a bad name, FilterError for a bad filter, AudienceExists for a name taken."""
    if not re.match(NAME, name):
        raise ValueError(f"invalid audience name {name!r}: letters, digits, '_', '.', '-', at most 64 characters")
    condition = check(s, where)
    with _db(s) as con:
        if con.execute("SELECT 1 FROM audiences WHERE name = ?", [name]).fetchone():
            raise AudienceExists(f"an audience is already named {name!r}")
    members = select(audience_profile.table(s, _overrides(s)), condition)
    at = _now()
    try:
        with _db(s) as con:
            con.execute("INSERT INTO audiences VALUES (?, ?, ?, ?, NULL)", [name, where, who, at])
            change = _apply(con, name, members, at)
    except sqlite3.IntegrityError:  # created meanwhile by another caller
        raise AudienceExists(f"an audience is already named {name!r}") from None
    return change, members


def refresh(s: Settings) -> list[Change]:
    """Recompute every audience's members over the current profile table (after a scoring run)."""
    with _db(s) as con:
        saved = con.execute("SELECT name, filter FROM audiences ORDER BY name").fetchall()
    if not saved:
        return []
    profile, fields = audience_profile.table(s, _overrides(s)), audience_profile.fields(s)
    at, changes = _now(), []
    for name, where in saved:
        try:
            members = select(profile, audience_filter.parse(where, fields))
        except FilterError as e:  # a field the profile no longer has: the members stay until it is back
            changes.append(Change(name, len(members_of(s, name)), 0, 0, str(e)))
            continue
        with _db(s) as con:
            changes.append(_apply(con, name, members, at))
    return changes


def listed(s: Settings) -> list[dict[str, Any]]:
    """Every audience: name, filter, who created it and when, its size and when its members were computed."""
    if not path(s).is_file():
        return []
    with _db(s) as con:
        rows = con.execute("""SELECT a.name, a.filter, a.created_by, a.created_at, a.refreshed_at,
                (SELECT count(*) FROM membership m WHERE m.audience = a.name AND m.left_at IS NULL)
            FROM audiences a ORDER BY a.name""").fetchall()
    keys = ("name", "filter", "created_by", "created_at", "refreshed_at", "size")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def members(s: Settings, name: str) -> list[str]:
    """The audience's current members, sorted; UnknownAudience when there is none of that name."""
    with _db(s) as con:
        if not con.execute("SELECT 1 FROM audiences WHERE name = ?", [name]).fetchone():
            raise UnknownAudience(f"no audience named {name!r} (`c360 audience list` shows them)")
    return members_of(s, name)


def members_of(s: Settings, name: str) -> list[str]:
    with _db(s) as con:
        return [r[0] for r in con.execute("SELECT customer_id FROM membership WHERE audience = ? AND left_at IS NULL "
                                          "ORDER BY customer_id", [name])]


# ---------------------------------------------------------------- show


def _overlap(con: sqlite3.Connection, name: str, size: int) -> list[dict[str, Any]]:
    rows = con.execute("""SELECT o.audience, count(*) FROM membership m JOIN membership o
            ON o.customer_id = m.customer_id AND o.audience != m.audience AND o.left_at IS NULL
        WHERE m.audience = ? AND m.left_at IS NULL GROUP BY o.audience ORDER BY o.audience""", [name]).fetchall()
    return [{"audience": other, "shared": n, "share": n / size if size else None} for other, n in rows]


def _history(con: sqlite3.Connection, name: str) -> list[dict[str, Any]]:
    """Per moment members changed: how many entered and how many left."""
    rows = con.execute("""SELECT at, sum(entered), sum(left_) FROM (
            SELECT entered_at AS at, 1 AS entered, 0 AS left_ FROM membership WHERE audience = ?1
            UNION ALL SELECT left_at, 0, 1 FROM membership WHERE audience = ?1 AND left_at IS NOT NULL)
        GROUP BY at ORDER BY at""", [name]).fetchall()
    return [{"at": at, "entered": int(e), "left": int(gone)} for at, e, gone in rows]


def distribution(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts of the key categorical fields and quartiles of the key numeric ones, of the fields `frame` has."""
    counts = {c: {str(k): int(v) for k, v in frame[c].value_counts(dropna=False).items()}
              for c in CATEGORIES if c in frame.columns}
    quartiles = {c: {q: _number(frame[c].quantile(p)) for q, p in (("min", 0), ("q1", .25), ("median", .5),
                                                                   ("q3", .75), ("max", 1))}
                 for c in NUMBERS if c in frame.columns}
    return {"counts": counts, "quartiles": quartiles}


def _number(value: Any) -> float | None:
    return None if pd.isna(value) else round(float(value), 4)


def show(s: Settings, name: str) -> dict[str, Any]:
    """An audience: filter, size, overlap with the others, the distribution of its key fields, its history."""
    ids = members(s, name)
    with _db(s) as con:
        saved = dict(zip(("name", "filter", "created_by", "created_at", "refreshed_at"), con.execute(
            "SELECT name, filter, created_by, created_at, refreshed_at FROM audiences WHERE name = ?", [name])
            .fetchone(), strict=True))
        overlap, history = _overlap(con, name, len(ids)), _history(con, name)
    profile = audience_profile.table(s, _overrides(s))
    inside = profile[profile["customer_id"].isin(ids)]
    return {**saved, "size": len(ids), "overlap": overlap, "distribution": distribution(inside),
            "history": history, "members": ids}


# ---------------------------------------------------------------- export


@dataclass
class Export:
    rows: pd.DataFrame  # EXPORT's columns, one row per member exported
    left_out: dict[str, int] = field(default_factory=dict)  # why → how many


def _erased(s: Settings) -> set[str]:
    """Customers named by an erasure request (hidden by the service from the moment it is made)."""
    return {c for request in all_requests(s) for c in request["customers"]}


def _contacts(s: Settings, ids: list[str]) -> pd.DataFrame:
    """customer_id, name and e-mail (the first of the golden record's) of the customers the warehouse knows."""
    with warehouse.connect(s, read_only=True) as con:
        if not warehouse.has_table(con, "identity_customers"):
            return pd.DataFrame(columns=["customer_id", "name", "email"])
        return con.execute("""SELECT customer_id, display_name AS name, emails[1] AS email FROM identity_customers
            WHERE customer_id IN (SELECT unnest(?))""", [ids]).df()


def export_rows(s: Settings, name: str) -> Export:
    """The members to hand to a CRM or an e-mail tool, and the ones left out, counted by reason."""
    return contact_rows(s, members(s, name))


def contact_rows(s: Settings, ids: list[str]) -> Export:
    """The customers `ids` with what a CRM or an e-mail tool needs (`EXPORT`), and the ones left out, counted by
    reason (an audience's export, a campaign's per action)."""
    profile = audience_profile.table(s, _overrides(s))
    inside = profile[profile["customer_id"].isin(ids)]
    erased = _erased(s)
    known = _contacts(s, ids)
    gone = [c for c in ids if c in erased or c not in set(known["customer_id"]) or c not in set(inside["customer_id"])]
    opted = inside.get(consent.feature(MARKETING), pd.Series(False, index=inside.index))
    opted = inside.loc[opted.astype("boolean").fillna(False).to_numpy(dtype=bool), "customer_id"]
    opted_out = set(opted) - set(gone)
    kept = inside[~inside["customer_id"].isin(set(gone) | opted_out)].merge(known, on="customer_id", how="left")
    rows = kept.reindex(columns=list(EXPORT)).sort_values("customer_id").reset_index(drop=True)
    return Export(rows, {f"opted out of {consent.PURPOSE_WORDS[MARKETING]}": len(opted_out),
                         "erased or asked to be": len(gone)})


def write(rows: pd.DataFrame, out: Path) -> None:
    """Write export rows to `out`: CSV or Parquet by its extension (owner-only)."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{out.name}: the export's extension says its format, .csv or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        write_private(out, rows.to_csv(index=False).encode())
    else:
        tmp = out.with_name(f".{out.name}.tmp")
        rows.to_parquet(tmp, index=False)
        write_private(out, tmp.read_bytes())
        tmp.unlink()


def record(s: Settings, name: str, where: str, who: str, ids: Sequence[str]) -> None:
    """Record an export (a file's path, or where a download went) with its customer ids, for erasure."""
    with _db(s) as con:
        cursor = con.execute("INSERT INTO exports (audience, path, written_at, written_by, rows) "
                             "VALUES (?, ?, ?, ?, ?)", [name, where, _now(), who, len(ids)])
        con.executemany("INSERT INTO export_members VALUES (?, ?)", [(cursor.lastrowid, c) for c in ids])


def export(s: Settings, name: str, out: Path, who: str) -> Export:
    """Write the audience's export to `out` and record it; ValueError for an unknown format."""
    result = export_rows(s, name)
    write(result.rows, out)
    record(s, name, str(out.resolve()), who, result.rows["customer_id"].tolist())
    return result


# ---------------------------------------------------------------- the personal-data store (c360.core.personal)


def _exports_of(s: Settings, customers: Sequence[str]) -> list[dict[str, Any]]:
    if not path(s).is_file() or not customers:
        return []
    marks = ",".join("?" * len(customers))
    with _db(s) as con:
        rows = con.execute(f"""SELECT DISTINCT e.id, e.audience, e.path, e.written_at, e.written_by FROM exports e
            JOIN export_members m ON m.export_id = e.id WHERE m.customer_id IN ({marks}) ORDER BY e.id""",
                           list(customers)).fetchall()
    return [dict(zip(("id", "audience", "path", "written_at", "written_by"), r, strict=True)) for r in rows]


def _rewrite_without(file: Path, customers: set[str], emails: set[str]) -> int:
    """Rewrite an export file without the rows of `customers` or carrying one of `emails`; how many went."""
    rows = pd.read_csv(file, dtype=str) if file.suffix.lower() == ".csv" else pd.read_parquet(file)
    email = rows["email"].fillna("").str.lower() if "email" in rows else pd.Series("", index=rows.index)
    drop = rows["customer_id"].astype(str).isin(customers) | email.isin(emails)
    if drop.any():
        write(rows[~drop], file)
    return int(drop.sum())


class Audiences:
    """Membership history and exports (`audiences/`): members are customers, exports hold names and e-mails."""

    @staticmethod
    def export(work: Work, person: Person) -> dict[str, Any]:
        customers = list(person.customers)
        if not path(work.s).is_file() or not customers:
            return {"membership": [], "exports": []}
        marks = ",".join("?" * len(customers))
        with _db(work.s) as con:
            rows = con.execute(f"SELECT audience, customer_id, entered_at, left_at FROM membership "
                               f"WHERE customer_id IN ({marks}) ORDER BY audience, entered_at", customers).fetchall()
        membership = [dict(zip(("audience", "customer_id", "entered_at", "left_at"), r, strict=True)) for r in rows]
        return {"membership": membership, "exports": _exports_of(work.s, customers)}

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        s, erased = work.s, Erased()
        home = s.home.resolve()
        for found in _exports_of(s, list(person.customers)):
            file = Path(found["path"])
            if file.is_absolute() and file.is_relative_to(home) and file.is_file():
                if removed := _rewrite_without(file, set(person.whole), {e.lower() for e in person.emails}):
                    erased.rows += removed
                    erased.files.append(str(file.relative_to(home)))
            else:  # a file elsewhere, or a download: it left c360's hands
                erased.recall.append(found["path"])
        whole = list(person.whole)
        if whole and path(s).is_file():
            marks = ",".join("?" * len(whole))
            erased.rows += sqlite_delete(path(s), [(f"DELETE FROM membership WHERE customer_id IN ({marks})", whole),
                                                   (f"DELETE FROM export_members WHERE customer_id IN ({marks})",
                                                    whole)])
        return erased
