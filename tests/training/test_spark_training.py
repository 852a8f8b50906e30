"""Training sets through Feast's Spark offline store (`C360_ENGINE=spark`, local[2]): the churn service's examples
equal those of Feast's DuckDB offline store (the oracle), so every training pipeline, which reads through
`store.offline`, trains on the same set; a registry applied on one engine is refused on the other in one line until
`c360 features apply` on it.

Spark starts once for the module. Without pyspark or Java the tests skip and say why."""

from __future__ import annotations

import pandas as pd
import pytest

from c360.core import engine, warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.training.pipeline import churn_examples

UNAVAILABLE = engine.spark_unavailable()
needs_spark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"Spark cannot run here: {UNAVAILABLE}")


@pytest.fixture(scope="module")
def home(home_with_snapshots) -> Settings:
    """Snapshots every 4 weeks over 200 days: at least 3 dates with a complete churn window."""
    return home_with_snapshots("spark_training", history_days=200)


def on(s: Settings, name: str) -> Settings:
    return s.model_copy(update={"engine": name})


def churn_set(s: Settings) -> pd.DataFrame:
    """The churn examples of `s`, the registry applied on its engine first, in a stable order."""
    store.apply(s)
    with warehouse.connect(s, read_only=True) as con:
        frame = churn_examples(s, con, store.offline(s))
    return frame.sort_values(["customer_id", "as_of"], ignore_index=True)


@needs_spark
def test_spark_offline_store_gives_the_duckdb_training_set(spark, home: Settings) -> None:
    expected, got = churn_set(on(home, "duckdb")), churn_set(on(home, "spark"))
    assert len(expected) > 1000 and expected["as_of"].nunique() >= 3
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=0)


@needs_spark
def test_a_registry_applied_on_one_engine_is_refused_on_the_other(spark, home: Settings) -> None:
    for applied, used in (("duckdb", "spark"), ("spark", "duckdb")):
        store.apply(on(home, applied))
        with pytest.raises(store.EngineMismatch, match=rf"applied for the {applied} engine, C360_ENGINE is {used}: "
                                                       rf"run `c360 features apply` on {used}$"):
            store.offline(on(home, used))
        store.offline(on(home, applied))
