"""`c360 resolve` on Spark (C360_ENGINE=spark, local mode) against DuckDB on a copy of the same home: the same
customers and the same pair probabilities, from the model parameters DuckDB estimated and saved."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import engine, personal
from c360.core.personal import Person, Work
from c360.core.settings import Settings
from c360.features import linkage
from c360.features.ingest import ingest
from tests.conftest import cli_json

needs_spark = pytest.mark.skipif(engine.spark_unavailable() is not None, reason=str(engine.spark_unavailable()))


@pytest.fixture(scope="module")
def homes(company: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Settings, dict]]:
    """The 2,000-customer company resolved on DuckDB, then a copy of that home resolved again on Spark: per
    engine, the home and `c360 resolve --json`'s answer."""
    duck = Settings(home=tmp_path_factory.mktemp("duckdb") / "home")
    duck.home.mkdir()
    with duckdb.connect(str(duck.warehouse)) as con:
        ingest(con, company)
    spark = Settings(home=duck.home.parent.parent / "spark-home")
    answers = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_SPARK_MASTER", "local[2]")
        for name, s in (("duckdb", duck), ("spark", spark)):
            if name == "spark":
                shutil.copytree(duck.home, spark.home)
            patch.setenv("C360_HOME", str(s.home))
            patch.setenv("C360_ENGINE", name)
            answers[name] = (s, cli_json("resolve"))
    return answers


def _read(s: Settings, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(s.warehouse), read_only=True) as con:
        return con.execute(sql).df()


@needs_spark
def test_resolve_says_which_engine_ran_it_and_spark_reuses_the_saved_model(homes) -> None:
    (duck, on_duckdb), (spark, on_spark) = homes["duckdb"], homes["spark"]
    assert (on_duckdb["engine"], on_duckdb["estimated"]) == ("duckdb", True)
    assert (on_spark["engine"], on_spark["estimated"]) == ("spark", False)
    assert spark.identity_model.read_bytes() == duck.identity_model.read_bytes()


@needs_spark
def test_spark_gives_the_same_crosswalk(homes) -> None:
    sql = "SELECT record_id, customer_id, method FROM identity_crosswalk ORDER BY record_id"
    on_duckdb, on_spark = (_read(homes[name][0], sql) for name in ("duckdb", "spark"))
    assert (on_duckdb["method"] == "model").sum() > 100, "too few model links to prove anything"
    pd.testing.assert_frame_equal(on_spark, on_duckdb)


@needs_spark
def test_spark_scores_the_same_pairs_with_the_same_probabilities(homes) -> None:
    sql = "SELECT record_id_l, record_id_r, method, match_probability FROM identity_links ORDER BY ALL"
    on_duckdb, on_spark = (_read(homes[name][0], sql) for name in ("duckdb", "spark"))
    assert (on_duckdb["method"] == "model").sum() > 1000
    pd.testing.assert_frame_equal(on_spark.drop(columns="match_probability"),
                                  on_duckdb.drop(columns="match_probability"))
    gap = (on_spark["match_probability"] - on_duckdb["match_probability"]).abs().max()
    assert gap <= 1e-9, f"match probabilities differ by up to {gap}"


@needs_spark
def test_spark_compares_strings_as_duckdb_does(homes) -> None:
    """splink's own Spark functions count Jaro's transpositions otherwise ("turrner" ~ "turner"): c360 calls
    DuckDB's functions from Spark. Oracle: DuckDB itself."""
    pairs = [("turrner", "turner"), ("caandace", "candace"), ("tony williams", "anthony williams"), ("ca", "abc"),
             ("1990-01-02", "1990-02-01"), (None, "x"), ("", "")]
    linkage.database("spark")
    session = engine.spark()
    session.createDataFrame(pairs, "l string, r string").createOrReplaceTempView("c360_test_pairs")
    on_spark = session.sql("SELECT jaro_winkler(l, r) AS jw, damerau_levenshtein(l, r) AS dl "
                           "FROM c360_test_pairs").toPandas()
    with duckdb.connect() as con:
        on_duckdb = [con.execute("SELECT jaro_winkler_similarity($1, $2), damerau_levenshtein($1, $2)", pair)
                     .fetchone() for pair in pairs]
    expected = pd.DataFrame(on_duckdb, columns=["jw", "dl"], dtype=float)
    pd.testing.assert_frame_equal(on_spark, expected)


@needs_spark
def test_spark_checkpoints_are_a_registered_store_removed_after_the_run(homes, monkeypatch) -> None:
    spark = homes["spark"][0]
    scratch = spark.home / "spark" / "identity"
    assert not scratch.exists(), "resolve left Spark's checkpoints behind"
    monkeypatch.setenv("C360_HOME", str(spark.home))
    records = _read(spark, "SELECT * FROM identity_records QUALIFY row_number() OVER (PARTITION BY source ORDER BY "
                           "record_id) <= 50 ORDER BY record_id")
    db_api = linkage.database("spark")
    linkage.predict_pairs(linkage.load_linker(records, spark.identity_model, db_api=db_api))
    left = list(scratch.rglob("*.parquet"))
    assert left, "splink wrote no checkpoint where c360 looks for them"
    assert {personal.owner(spark, path).name for path in left} == {"spark_identity"}
    store = next(store for store in personal.STORES if store.name == "spark_identity")
    person = Person(asked="customer_id", customers=(), whole=(), records={}, emails=(), phones=())
    with duckdb.connect(str(spark.warehouse), read_only=True) as con:
        erased = store.function("erase")(Work(spark, con), person)
    assert len(erased.files) >= len(left) and not scratch.exists()
    linkage.release(db_api)


def test_resolve_on_spark_without_java_says_so(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home.mkdir()
    duckdb.connect(str(Settings(home=home).warehouse)).close()  # a warehouse: the engine is checked before its tables
    monkeypatch.setenv("C360_ENGINE", "spark")
    monkeypatch.setattr(engine, "spark_unavailable", lambda: "Java is not installed")
    result = CliRunner().invoke(app, ["resolve"])
    assert result.exit_code == 1
    assert "C360_ENGINE=spark: Java is not installed" in result.output
    assert "Traceback" not in result.output
