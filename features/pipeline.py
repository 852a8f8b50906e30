"""The data pipeline in one call — generate, ingest, resolve, feature snapshots, Feast registry, online store — for
notebooks and scripts that need a ready company. The CLI runs the same functions stage by stage (`c360 demo`)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from c360.core import warehouse
from c360.core.settings import Settings


@dataclass(frozen=True)
class CompanyReport:
    customers: int  # generated accounts
    records: int  # identity-bearing source records resolved
    resolved: int  # customer ids after resolution
    quarantined: int  # rows that broke the data contract
    snapshots: list[pd.Timestamp]
    online_rows: int


def build_company(s: Settings, customers: int, seed: int = 7, corrupt_rate: float = 0.0,
                  history_days: int = 644, every_days: int = 28, hold_back_days: int = 0) -> CompanyReport:
    """Generate a company of `customers` accounts into `s.generated` and take it through every data stage into
    `s.home`: warehouse, resolved identities, feature snapshots every `every_days` over `history_days`, Feast
    registry and online store (latest snapshot); the snapshots on `s.engine`. `hold_back_days` ends the snapshots
    that many days before the data's end, to add the later ones as time passes (`c360 features build --as-of`)."""
    from c360.features import compute, identity, spark_build, store
    from c360.features.generate import generate
    from c360.features.ingest import ingest

    generate(s.generated, customers, seed=seed, corrupt_rate=corrupt_rate)
    with warehouse.connect(s) as con:
        loaded = ingest(con, s.generated)
        resolved = identity.resolve(con, s.identity_model, threshold=s.match_threshold)
    with warehouse.connect(s, read_only=True) as con:
        end = warehouse.data_end(con) - pd.Timedelta(days=hold_back_days)
        dates = compute.as_of_dates(con, end, None, history_days, every_days)
        with spark_build.builder(s, con) as build_one:
            for day in dates:
                store.write_snapshot(s, build_one(day))
    store.apply(s)
    return CompanyReport(customers, resolved.records, resolved.customers, sum(r.quarantined for r in loaded), dates,
                         store.materialize(s))
