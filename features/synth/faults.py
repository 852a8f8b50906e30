"""Faults injected into the exported silos, one per chosen row, each recorded so ingest can be checked exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from c360.core.contract import Table

BAD_DATETIMES = ("2025-13-45", "31/31/2025", "yesterday")
BAD_NUMBERS = ("twelve", "1.2.3", "12,5,0")


def fault_kinds(table: Table) -> list[tuple[str, str]]:
    """Every (kind, column) fault the contract of this table must catch."""
    kinds: list[tuple[str, str]] = [("duplicate_key", table.key)]
    for c in table.columns:
        if c.name == table.key:
            continue  # a lost key would orphan the row's children; keys get duplicate rows instead
        if c.required:
            kinds.append(("missing_required", c.name))
        if c.kind == "datetime":
            kinds.append(("bad_datetime", c.name))
        if c.kind in ("int", "float"):
            kinds.append(("bad_number", c.name))
        if c.min is not None or c.max is not None:
            kinds.append(("out_of_range", c.name))
        if c.allowed:
            kinds.append(("bad_enum", c.name))
    kinds += [("orphan_reference", r.column) for r in table.refs]
    kinds += [("misordered", later) for _, later in table.ordered]
    return kinds


def bad_value(rng: np.random.Generator, table: Table, kind: str, column: str, row: pd.Series) -> str | None:
    col = table.col(column)
    if kind == "missing_required":
        return None
    if kind == "bad_datetime":
        return str(rng.choice(BAD_DATETIMES))
    if kind == "bad_number":
        return str(rng.choice(BAD_NUMBERS))
    if kind == "out_of_range":
        value = col.min - 1 if col.min is not None else col.max + 1  # type: ignore[operator]
        return str(int(value)) if col.kind == "int" else f"{value:.2f}"
    if kind == "bad_enum":
        return "unknown"
    if kind == "orphan_reference":
        return f"{column.upper()}-MISSING-{rng.integers(10**6)}"
    earlier = next(a for a, b in table.ordered if b == column)
    return str(pd.Timestamp(row[earlier]) - pd.Timedelta(days=1))


def as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Every column as export text (nulls stay null), so faults can put any text anywhere."""
    out = {}
    for name, s in df.items():
        arr = pa.array(s, from_pandas=True)
        if pa.types.is_floating(arr.type):
            arr = pa.array(s.round(2), from_pandas=True)
        elif pa.types.is_timestamp(arr.type):
            arr = arr.cast(pa.timestamp("s"))
        out[name] = arr.cast(pa.string()).to_pandas()
    return pd.DataFrame(out)


def inject(rng: np.random.Generator, table: Table, df: pd.DataFrame, rate: float
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the text table with faults (duplicate rows appended at the end) and the list of faults.

    Faulty positions are 0-based positions in the returned table.
    """
    text = as_text(df)
    n_faults = int(rng.binomial(len(text), rate)) if len(text) else 0
    if not n_faults:
        return text, pd.DataFrame(columns=["position", "column", "kind", "value"])
    kinds = fault_kinds(table)
    rows = rng.choice(len(text), n_faults, replace=False)
    picks = [kinds[i] for i in rng.integers(0, len(kinds), n_faults)]
    records, duplicates = [], []
    for row, (kind, column) in zip(rows, picks, strict=True):
        if kind == "duplicate_key":
            duplicates.append(row)
            records.append((len(text) + len(duplicates) - 1, column, kind, text.iat[row, 0]))
            continue
        value = bad_value(rng, table, kind, column, text.iloc[row])
        text.iat[row, text.columns.get_loc(column)] = value
        records.append((int(row), column, kind, value))
    text = pd.concat([text, text.iloc[duplicates]], ignore_index=True)
    return text, pd.DataFrame(records, columns=["position", "column", "kind", "value"])
