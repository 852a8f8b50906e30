"""FEBRL 4a/4b (5,000 original records, 5,000 corrupted duplicates) as a benchmark for the linkage core."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from c360.core.settings import Settings
from c360.features import linkage

FILES = {"febrl4a": "dataset4a.csv", "febrl4b": "dataset4b.csv"}
DEFAULT_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)


def read_febrl_file(path: Path, source: str) -> pd.DataFrame:
    """One FEBRL csv in standard columns plus entity_id (the number in rec_id)."""
    # Headers and values carry a leading space after each comma; everything is text (dob is YYYYMMDD).
    raw = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    raw = raw.rename(columns=str.strip).apply(lambda col: col.str.strip()).replace("", None)
    street = raw["street_number"].fillna("") + " " + raw["address_1"].fillna("")
    return pd.DataFrame(
        {
            "record_id": raw["rec_id"],
            "source": source,
            "entity_id": raw["rec_id"].str.extract(r"^rec-(\d+)-", expand=False),
            "first_name": raw["given_name"],
            "surname": raw["surname"],
            "street": street.str.strip().replace("", None),
            "suburb": raw["suburb"],
            "postcode": raw["postcode"],
            "state": raw["state"],
            "date_of_birth": raw["date_of_birth"],
            "soc_sec_id": raw["soc_sec_id"],
        }
    )


def load_febrl(data_dir: str | Path | None = None, drop_columns: Iterable[str] = ()) -> pd.DataFrame:
    """FEBRL 4a and 4b stacked, from ``data_dir`` (default: the public data folder, `C360_PUBLIC_DATA`) or its
    ``febrl/``; ``drop_columns`` removes identity fields (e.g. ["soc_sec_id"])."""
    folder = Path(data_dir) if data_dir is not None else Settings().public_data
    if (folder / "febrl").is_dir():
        folder = folder / "febrl"
    frames = [read_febrl_file(folder / name, source) for source, name in FILES.items()]
    records = pd.concat(frames, ignore_index=True)
    return records.drop(columns=[c for c in drop_columns if c in records.columns])


def evaluate_febrl(
    data_dir: str | Path | None = None,
    drop_columns: Iterable[str] = (),
    threshold: float = 0.95,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    link_type: linkage.LinkType = "link_only",
) -> dict:
    """Link 4a to 4b without labels, then score the clusters at ``threshold`` against the true entities.

    The threshold is a fixed match-probability rule given by the caller, not fitted to the labels;
    labels are only read after prediction, for the metrics and the threshold curve.
    """
    started = time.perf_counter()
    records = load_febrl(data_dir, drop_columns)
    prepared = linkage.prepare_records(records)
    model = linkage.train_linker(prepared, link_type=link_type)
    pairs = linkage.predict_pairs(model, min_probability=min(0.01, *thresholds, threshold))
    clusters = linkage.cluster_pairs(records["record_id"], pairs, threshold)
    seconds = time.perf_counter() - started
    truth = records[["record_id", "entity_id"]]
    return {
        "threshold": threshold,
        "drop_columns": list(drop_columns),
        **linkage.pairwise_metrics(clusters, truth),
        "candidate_pairs": len(pairs),
        "seconds": round(seconds, 2),
        "curve": linkage.threshold_curve(pairs, truth, thresholds),
    }
