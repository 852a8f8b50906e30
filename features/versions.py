"""Versions of the source tables' rows: each table holds the current row of each key, `<table>__history` the
versions it holds no longer, each with the moments it was valid between.

A row is valid from `_valid_from` (NULL: since always, for a file's key first seen, whose own timestamps say when
things happened) until `_valid_to` (in the history only). `place` puts rows in place at a moment, each its own (the
moment its export was taken, or its event's time): a row whose key the table holds with other values replaces it,
the old version moving to the history, valid until that moment; an identical row changes nothing. `close` ends, at
a snapshot's moment, the keys it no longer holds: deleted at the source, they are kept in the history only. A
version that began after the snapshot's moment (a row a live event added since) is not the snapshot's to end.

`as_of` is a table as it was at `$as_of`: its versions valid then. An export taken at T says what was true as of T,
as a feature as of T does (made of what happened strictly before T), so a version valid from T is seen as of T and
a version valid until T is not. The features read every table through it (`compute.SQL`), so a feature of a past
moment sees what was true then; the other readers (identity, profiles, the online store) read the current rows.
"""

from __future__ import annotations

import duckdb

from c360.core.contract import Table

HISTORY = "__history"
VALID_FROM, VALID_TO = "_valid_from", "_valid_to"


def q(name: str) -> str:
    """SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def history(table: Table) -> str:
    """The name of the table of `table`'s old versions."""
    return table.sql_name + HISTORY


def place(con: duckdb.DuckDBPyConnection, table: Table, incoming: str, params: dict[str, object] | None = None, *,
          since_always: bool = True) -> None:
    """Put in place the rows of the query `incoming` (with `params`: the table's columns, `_file`, `_row`,
    `_ingest_id`, and `_at`, the moment each is valid from when its key is not new, or always unless
    `since_always`)."""
    key, target, old = q(table.key), q(table.sql_name), q(history(table))
    mine, theirs = (", ".join(f"{side}.{q(c)}" for c in table.column_names) for side in "ie")
    # only the keys the table holds already: few, in an increment
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _versions_seen AS
                    SELECT i.{key} AS key, ({theirs}) IS DISTINCT FROM ({mine}) AS changed, i._at
                    FROM ({incoming}) i JOIN {target} e ON e.{key} = i.{key}""", params)
    changed = "SELECT key FROM _versions_seen WHERE changed"
    con.execute(f"""INSERT INTO {old} BY NAME SELECT e.*, s._at AS {VALID_TO}
                    FROM {target} e JOIN _versions_seen s ON e.{key} = s.key WHERE s.changed""")
    con.execute(f"DELETE FROM {target} WHERE {key} IN ({changed})")
    con.execute(f"""INSERT INTO {target} BY NAME
                    SELECT i.* EXCLUDE (_at), CASE WHEN NOT $always OR i.{key} IN (SELECT {key} FROM {old})
                                              THEN i._at END AS {VALID_FROM}
                    FROM ({incoming}) i ANTI JOIN (SELECT key FROM _versions_seen WHERE NOT changed) u
                         ON i.{key} = u.key""", (params or {}) | {"always": since_always})
    con.execute("DROP TABLE _versions_seen")


def close(con: duckdb.DuckDBPyConnection, table: Table, kept: str, at: object) -> int:
    """End, at `at`, the current rows whose key the query `kept` (one column of keys) does not hold, but those
    valid from after `at`; return how many."""
    key, target = q(table.key), q(table.sql_name)
    gone = f"FROM {target} e ANTI JOIN ({kept}) k (key) ON e.{key} = k.key WHERE coalesce(e.{VALID_FROM} <= $at, true)"
    con.execute(f"INSERT INTO {q(history(table))} BY NAME SELECT e.*, $at AS {VALID_TO} {gone}", {"at": at})
    closed = con.execute(f"DELETE FROM {target} WHERE {key} IN (SELECT e.{key} {gone})", {"at": at}).fetchone()
    return int(closed[0]) if closed else 0


def as_of(table: Table) -> str:
    """A CTE named like `table`: its versions valid at `$as_of`, current or old, with the columns the table has
    (the live features read a few of them: `c360.features.live`)."""
    since = f"coalesce({VALID_FROM} <= $as_of, true)"
    return (f"{table.sql_name} AS (SELECT * EXCLUDE ({VALID_FROM}) FROM {q(table.sql_name)} WHERE {since} "
            f"UNION ALL BY NAME SELECT * EXCLUDE ({VALID_FROM}, {VALID_TO}) FROM {q(history(table))} "
            f"WHERE {since} AND {VALID_TO} > $as_of)")


def ever(table: Table) -> str:
    """A CTE named like `table`: every key it ever held, each in its current version, or its last one when the
    source deleted it (identity keeps a deleted contact's record, so features of the past still reach it)."""
    key, name = q(table.key), q(table.sql_name)
    gone = (f"SELECT * EXCLUDE ({VALID_FROM}, {VALID_TO}) FROM {q(history(table))} WHERE {key} NOT IN "
            f"(SELECT {key} FROM {name}) QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {VALID_TO} DESC) = 1")
    return f"{table.sql_name} AS (SELECT * EXCLUDE ({VALID_FROM}) FROM {name} UNION ALL BY NAME {gone})"

