"""The stores of `c360.core.personal.STORES`: per store, how a person's data is exported and erased.

Each class is one store (`export(work, person)`, `erase(work, person)`). Warehouse stores delete rows through the
erasure's writer connection (the warehouse is rewritten afterwards, `c360.core.warehouse.rewrite`); Parquet and CSV
files are rewritten without the rows (and only when they held some, so an erasure run twice changes nothing);
SQLite files are changed with secure delete and vacuumed (`c360.core.personal.sqlite_delete`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from c360.core import audit, consent, contract, warehouse
from c360.core.at_rest import write_private
from c360.core.personal import Erased, Person, Work, sqlite_delete
from c360.features import store, versions
from c360.features.ingest import IngestWarning, discover, file_sha256, q

IDENTITY_BY_RECORD = (("identity_crosswalk", "record_id"), ("identity_records", "record_id"),
                      ("identity_links", "record_id_l"), ("identity_links", "record_id_r"),
                      ("identity_decisions", "record_id_l"), ("identity_decisions", "record_id_r"))


def count(con: duckdb.DuckDBPyConnection, sql: str, params: Any) -> int:
    """The rows a DELETE (or count) statement reports."""
    row = con.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Any) -> list[dict[str, Any]]:
    return con.execute(sql, params).df().to_dict("records")


def _tables(person: Person, con: duckdb.DuckDBPyConnection) -> Iterator[tuple[contract.Table, list[str]]]:
    for table_id, keys in person.records.items():
        table = contract.table(table_id)
        if warehouse.has_table(con, table.sql_name) and warehouse.has_table(con, versions.history(table)):
            yield table, list(keys)


class Sources:
    """The source tables and their histories (`versions`): a row's old versions carry its key."""

    @staticmethod
    def export(work: Work, person: Person) -> dict[str, list[dict[str, Any]]]:
        return {t.id: _rows(work.con, f"""
                    SELECT * EXCLUDE (_file, _row, _ingest_id)
                    FROM (FROM {q(t.sql_name)} UNION ALL BY NAME FROM {q(versions.history(t))})
                    WHERE {q(t.key)} IN (SELECT unnest(?)) ORDER BY {q(t.key)}, _valid_to NULLS LAST""", [keys])
                for t, keys in _tables(person, work.con)}

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        rows = sum(count(work.con, f"DELETE FROM {q(name)} WHERE {q(t.key)} IN (SELECT unnest(?))", [keys])
                   for t, keys in _tables(person, work.con) for name in (t.sql_name, versions.history(t)))
        return Erased(rows=rows)


_QUARANTINED = """FROM quarantine WHERE (table_id || ':' || key) IN (SELECT unnest($records))
    OR len(list_filter($values, v -> contains(lower(coalesce(raw::VARCHAR, '') || ' ' || coalesce(value, '')), v)))
       > 0"""


def _quarantine_params(person: Person) -> dict[str, Any]:
    return {"records": person.record_ids, "values": [v.lower() for v in person.values()]}


class ConsentOverrides:
    """Opt-outs are the whole customer's: they go when the customer goes."""

    @staticmethod
    def export(work: Work, person: Person) -> list[dict[str, Any]]:
        return consent.export(work.con, person.customers)

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        return Erased(rows=consent.erase(work.con, person.whole))


class Quarantine:
    @staticmethod
    def export(work: Work, person: Person) -> list[dict[str, Any]]:
        if not warehouse.has_table(work.con, "quarantine"):
            return []
        return _rows(work.con, f"SELECT table_id, row_number, \"column\", value, reason, raw {_QUARANTINED}",
                     _quarantine_params(person))

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        if not warehouse.has_table(work.con, "quarantine"):
            return Erased()
        return Erased(rows=count(work.con, f"DELETE {_QUARANTINED}", _quarantine_params(person)))


class Identity:
    @staticmethod
    def export(work: Work, person: Person) -> dict[str, Any]:
        con, ids = work.con, person.record_ids
        if not warehouse.has_table(con, "identity_crosswalk"):
            return {}
        return {
            "crosswalk": _rows(con, "SELECT * FROM identity_crosswalk WHERE record_id IN (SELECT unnest(?))", [ids]),
            "golden_records": _rows(con, "SELECT * FROM identity_customers WHERE customer_id IN (SELECT unnest(?))",
                                    [list(person.customers)]),
            "steward_decisions": _rows(con, "SELECT * FROM identity_decisions WHERE list_has_any("
                                            "[record_id_l, record_id_r], ?)", [ids])
            if warehouse.has_table(con, "identity_decisions") else [],
        }

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        con = work.con
        if not warehouse.has_table(con, "identity_crosswalk"):
            return Erased()
        rows = sum(count(con, f"DELETE FROM {table} WHERE {column} IN (SELECT unnest(?))", [person.record_ids])
                   for table, column in IDENTITY_BY_RECORD if warehouse.has_table(con, table))
        whole = list(person.whole)
        rows += count(con, "DELETE FROM identity_customers WHERE customer_id IN (SELECT unnest(?))", [whole])
        rows += count(con, "DELETE FROM identity_events WHERE customer_id IN (SELECT unnest($c)) "
                           "OR other_id IN (SELECT unnest($c))", {"c": whole})
        # the person's addresses and phones leave the golden records of the customers that stay
        con.execute("""UPDATE identity_customers
            SET emails = list_filter(emails, e -> NOT list_contains($emails, e)),
                phones = list_filter(phones, p -> NOT list_contains($phones, p))
            WHERE customer_id IN (SELECT unnest($customers))""",
                    {"emails": list(person.emails), "phones": list(person.phones), "customers": list(person.customers)})
        return Erased(rows=rows)


class IdentityModel:
    """splink's saved model holds the trained parameters and column names: no values, nothing to erase."""

    @staticmethod
    def export(work: Work, person: Person) -> list[Any]:
        return []

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        return Erased(kept="model parameters only, no values of any record")


def _drop_csv_rows(path: Path, drop: Any) -> int:
    """Rewrite a CSV file without the rows `drop(row)` selects (the header kept); returns how many went."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = [rows[0], *(r for r in rows[1:] if not drop(r))] if rows else rows
    if len(kept) == len(rows):
        return 0
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerows(kept)
    write_private(path, out.getvalue().encode())
    return len(rows) - len(kept)


class Generated:
    """The demo's generated exports: CSV per table, and the ground truth."""

    @staticmethod
    def export(work: Work, person: Person) -> list[str]:
        return [str(p.relative_to(work.s.home)) for p, _ in _generated_csvs(work)
                if _holds(p, person)]

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        erased = Erased()
        for path, table in _generated_csvs(work):
            if removed := _erase_csv(path, table, person):
                erased.rows += removed
                erased.files.append(str(path.relative_to(work.s.home)))
                # the file's new content is what was loaded (less the person): a later ingest must not reload it
                work.con.execute("UPDATE ingest_log SET sha256 = ? WHERE file = ?",
                                 [file_sha256(path)[0], str(path.resolve())])
        erased.rows += _erase_truth(work, person)
        return erased


def _erase_csv(path: Path, table: contract.Table, person: Person) -> int:
    """Drop the rows of `person` (by key, e-mail or phone) from a source CSV file; returns how many."""
    with path.open(encoding="utf-8") as f:
        header = [h.strip().lower() for h in next(csv.reader([f.readline()]), [])]
    position = header.index(table.key) if table.key in header else None
    keys, carries = set(person.records.get(table.id, ())), _carries(person)
    return _drop_csv_rows(path, lambda row: (position is not None and row[position] in keys) or carries(row))


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _carries(person: Person) -> Callable[[list[str]], bool]:
    """Whether a CSV row carries one of the person's e-mails or phones (in any format)."""
    emails = {e.lower() for e in person.emails}
    phones = {_digits(p) for p in person.phones}

    def carries(row: list[str]) -> bool:
        for value in row:
            if value.strip().lower() in emails:
                return True
            digits = _digits(value)
            if len(digits) >= 7 and any(p.endswith(digits) or digits.endswith(p) for p in phones):
                return True
        return False

    return carries


def _generated_csvs(work: Work) -> Iterator[tuple[Path, contract.Table]]:
    if work.s.generated.is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IngestWarning)  # the ground truth's files: no source tables
            found = discover(work.s.generated)
        yield from ((path, table) for table, path in found)


def _holds(path: Path, person: Person) -> bool:
    text = path.read_text(encoding="utf-8").lower()
    return any(v.lower() in text for v in person.values())


def _erase_truth(work: Work, person: Person) -> int:
    """Ground truth rows of the removed records, and of the erased accounts (by the generator's account number)."""
    truth = work.s.truth
    if not truth.is_dir():
        return 0
    accounts_file = truth / "customers.parquet"
    accounts: set[int] = set()
    erased_accounts = set(person.records.get("crm/accounts", ()))
    if accounts_file.is_file() and erased_accounts:
        customers = pd.read_parquet(accounts_file, columns=["account", "account_id"])
        accounts = set(customers.loc[customers["account_id"].isin(erased_accounts), "account"].astype(int))
    removed = 0
    for path in truth.glob("*.parquet"):
        table = pq.read_table(path)
        drop = np.zeros(table.num_rows, dtype=bool)
        if {"table_id", "key"} <= set(table.column_names):
            ids = pc.binary_join_element_wise(table["table_id"], pc.cast(table["key"], pa.string()), ":")
            drop |= pc.is_in(ids, pa.array(person.record_ids, pa.string())).to_numpy(zero_copy_only=False)
        if "account" in table.column_names and accounts:
            drop |= pc.is_in(table["account"], pa.array(sorted(accounts), table["account"].type)).to_numpy(
                zero_copy_only=False)
        removed += _write_without(path, table, drop)
    faults = truth / "faults.csv"
    if faults.is_file():
        keys = set(person.values())
        carries = _carries(person)
        removed += _drop_csv_rows(faults, lambda row: carries(row) or any(f in keys for f in row))
    return removed


def _write_without(path: Path, table: pa.Table, drop: np.ndarray) -> int:
    n = int(np.asarray(drop, dtype=bool).sum())
    if n:
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.filter(pa.array(~np.asarray(drop, dtype=bool))), tmp)
        os.replace(tmp, path)
    return n


def _customer_files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.rglob("*.parquet") if p.is_file())


def _customer_rows(folder: Path, customers: list[str]) -> pd.DataFrame:
    frames = [pq.read_table(p, filters=[("customer_id", "in", customers)]).to_pandas()
              for p in _customer_files(folder)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _erase_customer_files(folder: Path, customers: list[str], home: Path) -> Erased:
    erased = Erased()
    if not customers:
        return erased
    for path in _customer_files(folder):
        table = pq.read_table(path)
        if "customer_id" not in table.column_names:
            continue
        drop = pc.is_in(pc.cast(table["customer_id"], pa.string()), pa.array(customers, pa.string()))
        if n := _write_without(path, table, drop.to_numpy(zero_copy_only=False)):
            erased.rows += n
            erased.files.append(str(path.relative_to(home)))
    return erased


class Snapshots:
    @staticmethod
    def export(work: Work, person: Person) -> list[dict[str, Any]]:
        return _customer_rows(work.s.snapshots, list(person.customers)).to_dict("records")

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        with store.rewriting_snapshots(work.s):  # no merge of the live files meanwhile: it would bring the rows back
            return _erase_customer_files(work.s.snapshots, list(person.whole), work.s.home)


class Scores:
    """`c360 score` runs; a run folder that held the person is listed for recall (its copies may have left)."""

    @staticmethod
    def export(work: Work, person: Person) -> list[dict[str, Any]]:
        rows = _customer_rows(work.s.scores, list(person.customers))
        return rows[rows["model"].notna()].to_dict("records") if "model" in rows else []

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        erased = _erase_customer_files(work.s.scores, list(person.whole), work.s.home)
        erased.recall = sorted({str(Path(f).parent).removesuffix("/wide") for f in erased.files})
        return erased


def _entity_keys(customers: tuple[str, ...]) -> list[Any]:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return [EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=c)]) for c in customers]


def _serialized(customers: tuple[str, ...]) -> list[bytes]:
    from feast.infra.key_encoding_utils import serialize_entity_key

    return [serialize_entity_key(k, 3) for k in _entity_keys(customers)]  # version 3: features.store.repo_config


class Online:
    """The online store (all its views, `predictions` included): SQLite files under feast/, or Redis."""

    @staticmethod
    def export(work: Work, person: Person) -> dict[str, Any]:
        return {"customers": [c for c in person.customers if c in set(Online._present(work, person.customers))]}

    @staticmethod
    def _present(work: Work, customers: tuple[str, ...]) -> list[str]:
        import sqlite3

        if work.s.online_store == "redis":
            client = _redis_client(work)
            return [c for c, key in zip(customers, _redis_keys(customers), strict=True) if client.exists(key)]
        path = work.s.feast / "online.db"
        if not path.is_file():
            return []
        keys = dict(zip(_serialized(customers), customers, strict=True))
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = set()
            for table in _entity_tables(con):
                found |= {keys[r[0]] for r in con.execute(f'SELECT entity_key FROM "{table}"') if r[0] in keys}
            return sorted(found)
        finally:
            con.close()

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        if not person.whole:
            return Erased()
        if work.s.online_store == "redis":
            return Erased(rows=_erase_redis(work, person.whole))
        path = work.s.feast / "online.db"
        if not path.is_file():
            return Erased()
        import sqlite3

        con = sqlite3.connect(path)
        try:
            tables = _entity_tables(con)
        finally:
            con.close()
        keys = _serialized(person.whole)
        marks = ",".join("?" * len(keys))
        return Erased(rows=sqlite_delete(path, [(f'DELETE FROM "{t}" WHERE entity_key IN ({marks})', keys)
                                                for t in tables]))


def _entity_tables(con: Any) -> list[str]:
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [t for t in tables
            if any(c[1] == "entity_key" for c in con.execute(f'PRAGMA table_info("{t}")'))]


def _erase_redis(work: Work, customers: tuple[str, ...]) -> int:
    keys = _redis_keys(customers)
    return int(_redis_client(work).delete(*keys)) if keys else 0


def _redis_keys(customers: tuple[str, ...]) -> list[bytes]:
    from feast.infra.online_stores.redis import _redis_key

    return [_redis_key("c360", k, 3) for k in _entity_keys(customers)]


def _redis_client(work: Work) -> Any:
    """A client of the online store's Redis, from the whole connection string (database, password, TLS)."""
    from c360.features.redis_store import C360RedisOnlineStore
    from c360.features.store import repo_config

    return C360RedisOnlineStore()._get_client(repo_config(work.s).online_store)


class Mlflow:
    """Models' input examples are five feature rows of test customers, without ids: a row equal to one of an
    erased customer's snapshot rows is removed from the example files (it runs before the snapshots are erased)."""

    @staticmethod
    def export(work: Work, person: Person) -> list[str]:
        return [str(p.relative_to(work.s.home)) for p, _ in Mlflow._matches(work, person.customers)]

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        erased = Erased()
        for path, drop in Mlflow._matches(work, person.whole):
            document = json.loads(path.read_text())
            split = document.get("dataframe_split", document)
            split["data"] = [row for i, row in enumerate(split["data"]) if i not in drop]
            write_private(path, json.dumps(document, indent=2).encode())
            erased.rows += len(drop)
            erased.files.append(str(path.relative_to(work.s.home)))
        return erased

    @staticmethod
    def _matches(work: Work, customers: tuple[str, ...]) -> Iterator[tuple[Path, set[int]]]:
        artifacts = work.s.home / "mlartifacts"
        if not customers or not artifacts.is_dir():
            return
        theirs = _customer_rows(work.s.snapshots, list(customers))
        if theirs.empty:
            return
        for path in sorted(artifacts.rglob("*input_example.json")):
            split = json.loads(path.read_text())
            split = split.get("dataframe_split", split)
            if "columns" not in split:
                continue
            example = pd.DataFrame(split["data"], columns=split["columns"])
            common = [c for c in example.select_dtypes("number").columns
                      if c in theirs.columns and pd.api.types.is_numeric_dtype(theirs[c])]
            if not common:
                continue
            mine = theirs[common].to_numpy(dtype=float, na_value=np.nan)
            rows = example[common].to_numpy(dtype=float, na_value=np.nan)
            same = [(np.isclose(mine, row, equal_nan=True)).all(axis=1).any() for row in rows]
            if drop := {i for i, hit in enumerate(same) if hit}:
                yield path, drop


class RunLog:
    """runs.jsonl keeps no personal values by rule; any line naming the person is dropped all the same."""

    @staticmethod
    def export(work: Work, person: Person) -> list[str]:
        return [line for line in _lines(work.s.runs) if _names(line, person)]

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        lines = _lines(work.s.runs)
        kept = [line for line in lines if not _names(line, person)]
        if len(kept) < len(lines):
            write_private(work.s.runs, "".join(f"{line}\n" for line in kept).encode())
        return Erased(rows=len(lines) - len(kept))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _names(line: str, person: Person) -> bool:
    low = line.lower()
    return any(v.lower() in low for v in person.values())


class Audit:
    @staticmethod
    def export(work: Work, person: Person) -> list[dict[str, Any]]:
        customers = set(person.customers)
        return [r for r in audit.records(work.s) if customers and audit.about(r, customers)]

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        return Erased(kept="audit records hold customer ids only, no personal values; kept for accountability")


class Privacy:
    """Erasure requests and suppression hashes: the request runner drops a request's plain values when done."""

    @staticmethod
    def export(work: Work, person: Person) -> list[Any]:
        return []

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        return Erased(kept="salted hashes of the person's identifiers, to keep them out of later imports")
