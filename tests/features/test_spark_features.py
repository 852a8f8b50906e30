"""The feature build on Spark (`C360_ENGINE=spark`, local[2]) writes the snapshots the DuckDB build writes: same
columns, same types, same rows, every value equal (floats within 1e-9 relative). The DuckDB constructs whose meaning
Spark's namesakes do not share give DuckDB's answers on their edge cases; the warehouse's export lives for the
build only, holds only the columns the features read, and is a registered personal-data store; an encrypted
warehouse gets no plain export.

Spark starts once for the module. Without pyspark or Java the Spark tests skip and say why."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import at_rest, engine, personal, warehouse
from c360.core.settings import Settings
from c360.features import compute, spark_build
from tests.conftest import cli_json

UNAVAILABLE = engine.spark_unavailable()
needs_spark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"Spark cannot run here: {UNAVAILABLE}")


def build(s: Settings, name: str, days: list[str], patch: pytest.MonkeyPatch) -> list[Path]:
    """`c360 features build --as-of DAY` of each day on the engine `name`, in the home of `s`."""
    patch.setenv("C360_HOME", str(s.home))
    patch.setenv("C360_ENGINE", name)
    for day in days:
        assert cli_json("features", "build", "--as-of", day)["engine"] == name
    return [s.snapshots / f"as_of={day}.parquet" for day in days]


@needs_spark
def test_spark_writes_the_snapshots_duckdb_writes(spark, home_over_resolved, monkeypatch):
    duck, spark_home = home_over_resolved("duckdb"), home_over_resolved("spark")
    with warehouse.connect(duck, read_only=True) as con:
        end = warehouse.data_end(con)
    days = [f"{end - pd.Timedelta(days=250):%Y-%m-%d}"]  # an earlier cut: the encrypted test below builds the latest
    expected, got = build(duck, "duckdb", days, monkeypatch), build(spark_home, "spark", days, monkeypatch)
    for want, have in zip(expected, got, strict=True):
        assert pq.read_schema(have).equals(pq.read_schema(want))
        pd.testing.assert_frame_equal(pd.read_parquet(have), pd.read_parquet(want), check_exact=False, rtol=1e-9,
                                      atol=0)
    assert not list((spark_home.home / spark_build.EXPORTS).iterdir())  # the build removed its export


# Each edge: `arg_max` over a NULL value (k 1), a value not in the list (k 2), a day's difference across midnight
# in less than 24 hours (k 1), columns in another order on each side of a UNION BY NAME.
EDGES = """
WITH seen AS (SELECT k, v, ts, p FROM one UNION ALL BY NAME SELECT p, ts, v, k FROM two)
SELECT k, arg_max(v, ts) AS last_v, min(list_position(['a', 'b'], p)) AS place,
       min(date_diff('day', ts, $as_of)) AS days, count(*) FILTER (WHERE ts >= $as_of - INTERVAL 1 DAY) AS recent
FROM seen GROUP BY ALL ORDER BY k
"""


@needs_spark
def test_duckdb_meanings_kept_on_spark(spark, tmp_path):
    con = duckdb.connect()
    con.execute("""CREATE TABLE one AS SELECT * FROM (VALUES (1, 5, TIMESTAMP '2024-01-01 10:00', 'z'),
                   (1, NULL, TIMESTAMP '2024-01-02 23:00', 'b'), (2, 7, TIMESTAMP '2024-01-02 12:00', 'z'))
                   t(k, v, ts, p)""")
    con.execute("CREATE TABLE two AS SELECT 'a' AS p, TIMESTAMP '2023-12-30 08:00' AS ts, 3 AS v, 2 AS k")
    as_of = pd.Timestamp("2024-01-03 01:00")
    expected = con.execute(EDGES, {"as_of": as_of.to_pydatetime()}).df()
    exports = spark_build.export(con, EDGES, tmp_path)
    with spark_build.views(engine.spark(), exports):
        sql = spark_build.spark_sql(EDGES, exports)
        got = engine.spark().sql(sql, args={"as_of": as_of.tz_localize("UTC").to_pydatetime()}).toPandas()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


@needs_spark
@pytest.mark.skipif(at_rest.httpfs_extension() is None, reason="DuckDB cannot write an encrypted warehouse here")
def test_an_encrypted_warehouse_builds_on_spark_with_no_plain_copy(spark, home_over_resolved, monkeypatch):
    s = home_over_resolved("encrypted")
    monkeypatch.setenv("C360_HOME", str(s.home))
    monkeypatch.setenv("C360_ENCRYPTION_KEY", "a spark key")
    assert not cli_json("encrypt")["already_encrypted"]
    keyed = Settings()
    with warehouse.connect(keyed, read_only=True) as con:
        day = warehouse.data_end(con)
        with spark_build.builder(keyed.model_copy(update={"engine": "spark"}), con) as build:
            assert not [f for f in (s.home / spark_build.EXPORTS).rglob("*") if f.is_file()]
            got = build(day)
        expected = compute.build(con, day)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=0)


@needs_spark
def test_export_is_a_registered_store_removed_after_the_build(spark, home_over_resolved):
    s = home_over_resolved("export")
    spark_settings = s.model_copy(update={"engine": "spark"})
    with (warehouse.connect(s, read_only=True) as con, pytest.raises(RuntimeError, match="killed"),
          spark_build.builder(spark_settings, con)):
        files = list((s.home / spark_build.EXPORTS).rglob("*.parquet"))
        assert {personal.owner(s, f).name for f in files} == {"spark_exports"}
        crosswalk = next(f for f in files if f.name == "identity_crosswalk.parquet")
        assert set(pq.read_schema(crosswalk).names) == {"record_id", "customer_id"}  # what the features read
        raise RuntimeError("killed")
    assert not list((s.home / spark_build.EXPORTS).rglob("*.parquet"))


def test_erasure_removes_an_export_a_killed_build_left(home_over_resolved, monkeypatch):
    s = home_over_resolved("erase", own_world=True)
    left = s.home / spark_build.EXPORTS / "killed"
    left.mkdir(parents=True)
    with warehouse.connect(s, read_only=True) as con:
        spark_build.export(con, compute.SQL, left)
        customer = con.execute("SELECT min(customer_id) FROM identity_customers").fetchone()[0]
    monkeypatch.setenv("C360_HOME", str(s.home))
    erased = cli_json("privacy", "erase", "--customer-id", customer)["stores"]["spark_exports"]
    assert erased["files"] and not list(left.iterdir())


def test_spark_build_without_java_says_why(home_over_resolved, monkeypatch, tmp_path):
    s = home_over_resolved("nojava")
    monkeypatch.setenv("C360_HOME", str(s.home))
    monkeypatch.setenv("C360_ENGINE", "spark")
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    result = CliRunner().invoke(app, ["features", "build", "--json"])
    assert result.exit_code == 1
    assert engine.spark_unavailable() in result.stdout and "Traceback" not in result.output
