"""A `materialize` killed at any point leaves every customer's views on one snapshot — all on the old one or all
on the new one, with that snapshot's values — and the next run completes the switch (issue 18: a killed run mixed
tenure from the earlier snapshot into a profile as of the later one, and left a new customer's sections null)."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections import Counter
from multiprocessing.synchronize import Event

import duckdb
import pandas as pd
import pytest

from c360.core.settings import Settings
from c360.features import compute, store
from c360.features.store import OnlineReader
from tests.conftest import copy_sqlite

OLD, NEW = pd.Timestamp("2026-05-04"), pd.Timestamp("2026-06-01")
COPIES = 6  # each snapshot 6 times over with new customer ids (≈ 17k rows): a write phase worth killing inside
KILLS = 6


def enlarged(snapshot: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([snapshot, *(snapshot.assign(customer_id=snapshot["customer_id"] + f"-{k}")
                                  for k in range(1, COPIES))], ignore_index=True)


@pytest.fixture(scope="module")
def home(home_over_resolved) -> Settings:
    """Both snapshots built, the registry applied and the old snapshot materialized; a copy of that online store
    (`online.db.old`) to start each killed run from."""
    s = home_over_resolved("materialize_kill")
    with duckdb.connect(str(s.warehouse), read_only=True) as con:
        for as_of in (OLD, NEW):
            store.write_snapshot(s, enlarged(compute.build(con, as_of)))
    store.apply(s)
    store.materialize(s, OLD)
    copy_sqlite(s.feast / "online.db", s.feast / "online.db.old")
    return s


def materialize_new(s: Settings, ready: Event) -> None:
    ready.set()
    store.materialize(s, NEW)


def run_materialize(s: Settings, kill_after: float | None = None) -> float:
    """`store.materialize` of the new snapshot in a child process (forked: no 5 s of imports per run), SIGKILLed
    `kill_after` seconds after it starts unless it has finished by then; returns the seconds it ran."""
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    child = fork.Process(target=materialize_new, args=(s, ready))
    child.start()
    assert ready.wait(30)
    started = time.perf_counter()
    child.join(kill_after if kill_after is not None else 120)
    child.kill()  # a no-op once it has finished
    child.join()
    assert kill_after is not None or child.exitcode == 0
    return time.perf_counter() - started


def snapshot_served(s: Settings, snapshots: dict[pd.Timestamp, pd.DataFrame], every_feature: bool = True) -> pd.Series:
    """Reads every customer's features as the service does and checks that all its views carry one snapshot's event
    time and that snapshot's values; returns each customer's snapshot time in epoch seconds (0: no rows yet).

    Without `every_feature`, the first feature of each view only (a quarter of the time): a view's features are
    written in one row, so its event time and first value tell which write the row comes from.
    """
    ids = sorted(set().union(*(snapshot.index for snapshot in snapshots.values())))
    reader = OnlineReader.of(store.feature_store(s), lambda view, name: view.batch_source.name == "customer_features"
                             and (every_feature or name == view.features[0].name))
    got = reader.read(ids)
    times = pd.DataFrame({view.name: got[f"{features[0]}__ts"] for view, features in reader.views}, index=ids)
    served = times.iloc[:, 0]
    mixed = times.ne(served, axis=0).any(axis=1)
    if mixed.any():
        example = pd.to_datetime(times[mixed].iloc[0], unit="s").dt.date.to_dict()
        pytest.fail(f"{mixed.sum():,} customers mix snapshots, e.g. {example}")
    by_time = {int(day.timestamp()): snapshot for day, snapshot in snapshots.items()}
    assert served.isin([0, *by_time]).all()
    assert served[snapshots[OLD].index].ne(0).all(), "a customer of the old snapshot lost its rows"
    want = pd.concat([snapshot.loc[served.index[served == t]] for t, snapshot in by_time.items()]).reindex(ids)
    for _, features in reader.views:
        for name in features:
            assert got[name] == want[name].astype(object).where(want[name].notna(), None).tolist(), name
    return served


def test_a_killed_materialize_serves_one_snapshot_per_customer(home: Settings) -> None:
    snapshots = {day: store.read_snapshot(home, day).set_index("customer_id") for day in (OLD, NEW)}
    assert len(snapshots[NEW].index.difference(snapshots[OLD].index)) > 0  # new customers: unwritten until the switch
    new = int(NEW.timestamp())
    whole = run_materialize(home)
    assert (snapshot_served(home, snapshots) == new).sum() == len(snapshots[NEW])

    rng = random.Random(18)
    outcomes: Counter[str] = Counter()
    for _ in range(KILLS):
        copy_sqlite(home.feast / "online.db.old", home.feast / "online.db")
        run_materialize(home, kill_after=rng.uniform(0, whole))
        on_new = (snapshot_served(home, snapshots, every_feature=False) == new).sum()
        assert on_new in (0, len(snapshots[NEW]))  # the switch is all customers or none
        outcomes["new" if on_new else "old"] += 1
    print(f"materialize of {len(snapshots[NEW]):,} rows: {whole:.2f} s; after {KILLS} kills: {dict(outcomes)}")

    run_materialize(home)  # after a kill: the next run completes the switch
    assert (snapshot_served(home, snapshots) == new).sum() == len(snapshots[NEW])
