"""The feature build on the settings' engine; on Apache Spark (`C360_ENGINE=spark`), the same definitions as on
DuckDB: `compute.SQL` transpiled to Spark's dialect by sqlglot, over the warehouse's tables exported to Parquet, its
result converted to pandas as DuckDB converts its own, then the same `compute.finish`.

sqlglot translates the syntax. Where a DuckDB construct means something else in Spark, `_rewrite` says it the way
Spark means it; this is the one place that knows the two apart:

* `list_position` is NULL for a value not in the list, Spark's `array_position` 0;
* `arg_max` skips the rows whose value is NULL, Spark's `max_by` takes them;
* `date_diff('day', a, b)` counts the midnights between a and b, Spark's `datediff(DAY, a, b)` the whole days;
* `UNION ALL BY NAME`, which Spark lacks, becomes a union of the same columns in the same order.

`GROUP BY ALL`, `FILTER (WHERE ...)`, `INTERVAL`, `* EXCLUDE` and the `$as_of` parameter need nothing: sqlglot
writes them as Spark 4 reads them. The result is cast to the types DuckDB gives, so the snapshots' schema is one.

The export is personal data (the columns the features read of each source table and of the identity tables). With
a plaintext warehouse it is Parquet, living for one build in a folder of its own under `C360_HOME/spark/warehouse/`,
removed when the build ends; an erasure removes any a killed build left behind. With C360_ENCRYPTION_KEY set no
plain copy is written: the rows go to Spark as Arrow and stay in its memory (and its local disk, which the session
encrypts: `c360.core.engine`), as splink's tables do in `c360 resolve`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.scope import traverse_scope

from c360.core import connections, engine
from c360.core.personal import Erased, Person, Work
from c360.core.settings import Settings
from c360.features import compute
from c360.features.versions import q

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EXPORTS = Path("spark") / "warehouse"  # under C360_HOME


@dataclass(frozen=True)
class Export:
    """A warehouse table as the Spark build reads it: the columns the features name, and its Parquet file in the
    build's folder (not written for an encrypted warehouse)."""

    path: Path
    columns: list[str]

    @property
    def select(self) -> str:
        return f"SELECT {', '.join(map(q, self.columns))} FROM {q(self.path.stem)}"

    @property
    def view(self) -> str:
        """The name Spark reads it by: the export folder's and the table's (concurrent builds do not mix)."""
        return f"c360_{self.path.parent.name}_{self.path.stem}"


@contextmanager
def builder(s: Settings, con: duckdb.DuckDBPyConnection) -> Iterator[Callable[[pd.Timestamp], pd.DataFrame]]:
    """`compute.build` of the warehouse `con` on `s.engine`, for the as-of dates of one build."""
    if s.engine == "duckdb":
        yield lambda day: compute.build(con, day)
        return
    session = engine.spark()
    (s.home / EXPORTS).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=s.home / EXPORTS))
    held = s.encryption_key is not None
    try:
        exports = export(con, compute.SQL, folder, write=not held)
        sql = spark_sql(compute.SQL, exports)
        schema = con.execute(f"SELECT * FROM ({compute.SQL}) LIMIT 0", {"as_of": datetime(1970, 1, 1)}).arrow().schema
        with views(session, exports, con if held else None):
            yield lambda day: _build(session, sql, schema, day)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _build(session: SparkSession, sql: str, schema: pa.Schema, day: pd.Timestamp) -> pd.DataFrame:
    # UTC: pyspark reads a naive datetime in the Python process's time zone
    table = session.sql(sql, args={"as_of": pd.Timestamp(day).tz_localize("UTC").to_pydatetime()}).toArrow()
    # cast to DuckDB's types, then to pandas the way DuckDB converts its results: the dtypes of compute.build
    return compute.finish(connections.local().from_arrow(table.cast(schema)).df())


def export(con: duckdb.DuckDBPyConnection, sql: str, folder: Path, write: bool = True) -> dict[str, Export]:
    """Each table of `con` that `sql` reads, with the columns `sql` names only; with `write`, written to its Parquet
    file in `folder`."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    named = {i.name for i in tree.find_all(exp.Identifier)}
    exported = {}
    for table in sorted({t.name for t in _tables(tree)}):
        columns = [d[0] for d in con.execute(f"SELECT * FROM {q(table)} LIMIT 0").description if d[0] in named]
        exported[table] = Export(folder / f"{table}.parquet", columns)
        if write:
            quoted = str(exported[table].path).replace("'", "''")
            con.execute(f"COPY ({exported[table].select}) TO '{quoted}' (FORMAT parquet)")
    return exported


@contextmanager
def views(session: SparkSession, exports: dict[str, Export],
          con: duckdb.DuckDBPyConnection | None = None) -> Iterator[None]:
    """The exports as Spark's temporary views, dropped at exit: read from their files, or with `con` sent from it
    as Arrow (held in Spark's memory: no file). Read once here: a file named in the query would have its schema read
    again at every reference, every as-of."""
    try:
        for table in exports.values():
            rows = session.read.parquet(str(table.path)) if con is None else _held(session, con, table)
            rows.createOrReplaceTempView(table.view)
        yield
    finally:
        for table in exports.values():
            session.catalog.dropTempView(table.view)


def _held(session: SparkSession, con: duckdb.DuckDBPyConnection, table: Export) -> DataFrame:
    return session.createDataFrame(con.execute(table.select).arrow().read_all())


def spark_sql(sql: str, exports: dict[str, Export]) -> str:
    """DuckDB's `sql` in Spark's dialect, reading each table from its export's view."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    for union in list(tree.find_all(exp.Union)):
        if union.args.get("by_name"):
            _by_position(union, {name: table.columns for name, table in exports.items()})
    for table in list(_tables(tree)):
        table.replace(exp.Table(this=exp.to_identifier(exports[table.name].view), alias=table.args.get("alias")))
    return tree.transform(_rewrite).sql(dialect="spark")


def _tables(tree: exp.Expr) -> Iterator[exp.Table]:
    """The references of `tree` to tables, not to its CTEs (a CTE may read the table it is named after)."""
    for scope in traverse_scope(tree):
        yield from (s for s in scope.sources.values() if isinstance(s, exp.Table))


def _by_position(union: exp.Union, columns: dict[str, list[str]]) -> None:
    """`union`'s two sides selecting the same columns in the same order, as Spark's UNION matches them."""
    left, right = (_projections(side, columns) for side in (union.this, union.expression))
    if set(left) != set(right):
        raise ValueError(f"UNION BY NAME of different columns: {sorted(left)} and {sorted(right)}")
    for side, projections in ((union.this, left), (union.expression, right)):
        side.set("expressions", [projections[name] for name in left])
    union.set("by_name", None)


def _projections(select: exp.Expr, columns: dict[str, list[str]]) -> dict[str, exp.Expr]:
    """What `select` selects by output name, `* EXCLUDE (...)` of a table expanded from its `columns`."""
    if not isinstance(select, exp.Select):
        raise ValueError(f"UNION BY NAME of a {select.key}: only of SELECTs")
    star = select.expressions[0] if len(select.expressions) == 1 else None
    if not isinstance(star, exp.Star):
        return {e.alias_or_name: e for e in select.expressions}
    source = select.args["from_"].this
    excluded = {c.name for c in star.args.get("except_") or ()}
    return {c: exp.column(c) for c in columns[source.name] if c not in excluded}


def _rewrite(node: exp.Expr) -> exp.Expr:
    """`node` as Spark must say it to mean what it means in DuckDB (the module's list)."""
    if isinstance(node, exp.Anonymous) and node.name.lower() == "list_position":
        found = exp.Anonymous(this="array_position", expressions=node.expressions)
        return exp.func("nullif", found, exp.Literal.number(0))
    if isinstance(node, exp.ArgMax):
        present = exp.Not(this=exp.Is(this=node.this.copy(), expression=exp.null()))
        return exp.ArgMax(this=node.this, expression=exp.case().when(present, node.expression))
    if isinstance(node, exp.DateDiff) and node.args.get("date_part_boundary"):
        if node.text("unit").upper() != "DAY":
            raise ValueError(f"date_diff by {node.text('unit')}: only by day is translated to Spark")
        days = [exp.cast(node.this, exp.DataType.Type.DATE), exp.cast(node.expression, exp.DataType.Type.DATE)]
        return exp.Anonymous(this="datediff", expressions=days)
    return node


class SparkExports:
    """Exports left by a killed Spark build (a finished one removes its own): each holds everyone, so an erasure
    removes them whole (a build reading one then fails: run it again, it exports anew)."""

    @staticmethod
    def export(work: Work, person: Person) -> list[str]:
        return [str(p.relative_to(work.s.home)) for p in _left(work.s)]

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        left = _left(work.s)
        for path in left:
            path.unlink()
        return Erased(files=[str(p.relative_to(work.s.home)) for p in left])


def _left(s: Settings) -> list[Path]:
    return sorted((s.home / EXPORTS).glob("*/*.parquet"))
