"""Training examples from the feature store: features through a model's FeatureService as of each snapshot date,
labels from what happened after it, split by time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from feast import FeatureStore

from c360.core.definitions import BY_NAME

Labeler = Callable[[object, pd.Timestamp], pd.DataFrame]
# Examples per historical retrieval: each call reads the whole offline store, so fewer are faster, but a call holds
# its rows several times over in Feast's join (every date's at once, at a million customers, without a bound).
# Spark's collects each call's frame into its driver's heap: 948,015 examples in one call ran out of 8 GB and of
# 16 GB (1M customers, 29 snapshots; bench/training_sets.py), calls of 200,000 fit in 8.
RETRIEVAL_ROWS = {"duckdb": 1_000_000, "spark": 200_000}


class NoExamples(ValueError):
    """Too little to learn from yet: no labelled period, or a part of the split without rows (or, for a yes/no
    outcome, without both outcomes). A scheduled retrain skips the model with this reason (`trainers.train`)
    instead of failing deep in a fit on an empty array."""


def require(parts: dict[str, pd.DataFrame], target: str | None = None) -> None:
    """Each named part of a split has rows and, with `target` (a yes/no outcome), both outcomes: else NoExamples
    naming the part."""
    for name, part in parts.items():
        if part.empty:
            raise NoExamples(f"no {name} examples")
        if target is not None and part[target].nunique() < 2:
            raise NoExamples(f"the {name} examples have one outcome only ({target} = {part[target].iloc[0]})")


def examples(con, fs: FeatureStore, service: str, dates: list[pd.Timestamp], label: Labeler) -> pd.DataFrame:
    """The label columns, the service's features (by name) and as_of, for every date given, date after date.

    Point-in-time retrievals of up to RETRIEVAL_ROWS examples each, whatever their dates: Feast reads every snapshot
    of the offline store on each call, so a call per date made the retrieval most of a training's time."""
    if not dates:
        raise NoExamples("no snapshot date with a complete label window")
    labelled = pd.concat([label(con, day).assign(as_of=day) for day in dates], ignore_index=True)
    features = retrieve(fs, service, labelled)
    names = [n for n in BY_NAME if n in features.columns]
    frame = labelled.merge(features[["customer_id", *names, "as_of"]], on=["customer_id", "as_of"])
    return frame[[*(c for c in labelled.columns if c != "as_of"), *names, "as_of"]]


def retrieve(fs: FeatureStore, service: str, keys: pd.DataFrame) -> pd.DataFrame:
    """The service's features at each (customer_id, as_of) of `keys`, as_of without time zone like the keys':
    point-in-time retrievals of up to RETRIEVAL_ROWS rows each (of the offline store's engine)."""
    entities = keys[["customer_id", "as_of"]].rename(columns={"as_of": "event_timestamp"})
    rows = RETRIEVAL_ROWS[fs.config.offline_store.type]
    features = pd.concat([
        fs.get_historical_features(entity_df=entities.iloc[start:start + rows],
                                   features=fs.get_feature_service(service)).to_df()
        for start in range(0, max(len(entities), 1), rows)], ignore_index=True)
    stamps = pd.to_datetime(features.pop("event_timestamp"))
    return features.assign(as_of=stamps.dt.tz_convert(None) if stamps.dt.tz is not None else stamps)


def time_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train on the earlier dates, calibrate on the second-last, test on the last: never across time."""
    dates = sorted(frame["as_of"].unique())
    if len(dates) < 3:
        raise NoExamples(f"need at least 3 labelled snapshot dates for a time split, have {len(dates)}")
    train = frame[frame["as_of"] < dates[-2]]
    return train, frame[frame["as_of"] == dates[-2]], frame[frame["as_of"] == dates[-1]]


def customer_accounts(con, truth: Path) -> pd.Series:
    """Generated data only: each customer's true account (the majority of its records'), for oracle comparisons."""
    records = pd.read_parquet(truth / "records.parquet", columns=["table_id", "key", "account"])
    records["record_id"] = records["table_id"] + ":" + records["key"].astype(str)
    crosswalk = con.execute("SELECT record_id, customer_id FROM identity_crosswalk").df()
    joined = crosswalk.merge(records[["record_id", "account"]], on="record_id")
    return joined.groupby("customer_id")["account"].agg(lambda s: s.mode().iloc[0])


def oracle(con, truth: Path, frame: pd.DataFrame, file: str, column: str) -> pd.Series:
    """The generator's true probability (`column` of the ground truth's `file`, by account and as-of date) for
    each example (NaN where the truth has none)."""
    risk = pd.read_parquet(truth / f"{file}.parquet", columns=["account", "as_of", column])
    account = frame["customer_id"].map(customer_accounts(con, truth))
    keyed = pd.DataFrame({"account": account, "as_of": pd.to_datetime(frame["as_of"])})
    return keyed.merge(risk, on=["account", "as_of"], how="left")[column].set_axis(frame.index)
