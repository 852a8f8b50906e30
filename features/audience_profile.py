"""The profile table audiences filter: one row per customer, one column per field of the profile.

Its columns are the latest feature snapshot's (features and traits: segment, region, plan, the consent flags...)
and, beside them, each customer's latest batch scores (`c360 score`'s wide files: churn probability and band,
12-month value, next best action, expansion probability, by which sales rank accounts...). Two score columns take
the profile's names (`RENAMED`: `clv_12m`, `next_best_action`); the JSON lists (reasons, alternatives) and the
scoring bookkeeping are left out, as nobody filters on them. Every other column is a field: a column a later stage
adds to the snapshot or to the scores (a `persona`, say) can be filtered on, shown and exported without a change
here.

The fields and their kinds are read from the files' schemas alone (`fields`), so a filter is checked before any
query runs. Opt-outs recorded by `c360 privacy opt-out` are applied to the consent flags, as everywhere a profile
is read (`c360.core.consent`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from c360.core import connections, consent
from c360.core.settings import Settings
from c360.features import store
from c360.features.audience_filter import Kind

RENAMED = {"clv_value": "clv_12m", "nba_action": "next_best_action"}
# Not fields: JSON lists, versions and bookkeeping of the scoring run, and the snapshot's date.
LEFT_OUT = frozenset({"as_of", "scored_ts", "scored_at", "source", "churn_reasons", "clv_reasons", "nba_alternatives",
                      "nba_reasons", "nba_withheld", "content_topics", "churn_version", "clv_version", "nba_version",
                      "expansion_reasons", "expansion_version", "response_reasons", "response_version",
                      "response_channels"})


def score_files(s: Settings) -> list[Path]:
    """Every wide score file of every scoring run (the `predictions` view's source)."""
    return sorted(s.scores.glob("as_of=*/run=*/wide/*.parquet"))


def snapshot_file(s: Settings) -> Path:
    return store.snapshot_path(s, store.latest_snapshot_date(s))


def _kind(dtype: pa.DataType) -> Kind | None:
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype):
        return "text"
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return "time"
    return None  # lists and structs: not fields


def fields(s: Settings) -> dict[str, Kind]:
    """Field name → kind, from the schemas of the latest snapshot and of every score file (no query: their
    metadata), as the profile table reads them together (a field of a newer run, say `persona`, counts)."""
    found: dict[str, Kind] = {}
    schemas = [pq.read_schema(snapshot_file(s)), *(pq.read_schema(p) for p in score_files(s))]
    for schema in schemas:
        for f in schema:
            name, kind = RENAMED.get(f.name, f.name), _kind(f.type)
            if kind is not None and name not in LEFT_OUT and name != "customer_id":
                found.setdefault(name, kind)
    return found


def latest_scores(s: Settings, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """Each customer's latest wide score row (latest features date, then latest run), renamed to profile names;
    `keep`: columns of LEFT_OUT to keep (a campaign logs the model version)."""
    files = score_files(s)
    if not files:
        return pd.DataFrame({"customer_id": pd.Series(dtype="string")})
    listed = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    frame = connections.local().execute(
        f"SELECT * FROM read_parquet({listed}, union_by_name = true) "
        "QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY as_of DESC, scored_ts DESC) = 1").df()
    return frame.drop(columns=[c for c in frame.columns if c in LEFT_OUT and c not in keep]).rename(columns=RENAMED)


def table(s: Settings, overrides: consent.Overrides) -> pd.DataFrame:
    """The profile table: the latest snapshot's customers with their latest scores, `overrides` applied."""
    snapshot = pd.read_parquet(snapshot_file(s)).drop(columns=["as_of"], errors="ignore")
    scores = latest_scores(s)
    scores = scores[[c for c in scores.columns if c == "customer_id" or c not in snapshot.columns]]
    profile = snapshot.merge(scores, on="customer_id", how="left", validate="one_to_one")
    return consent.apply_overrides(profile, overrides)
