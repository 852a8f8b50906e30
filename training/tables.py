"""A data scientist's customer table, read and checked: `c360 train churn|nba --table FILE.csv`.

One CSV or Parquet file, one row per customer (or per customer and date), any column names and types
(``training.uplift``'s generic preparation). Here: reading it tidily, the columns' roles (label, treatment,
outcome, id, excluded, features), clear errors naming the column and its values, and the single-column check
that flags a leak.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from c360.training.uplift import prepare_features, to_outcome

LEAK_AUC = 0.95  # a single column separating the label this well is more often a leak than a discovery


def read_table(path: Path | str) -> pd.DataFrame:
    """The table at ``path``: Parquet by suffix (.parquet, .pq), tab-separated for .tsv, else CSV.

    Text cells are stripped, blank cells become missing (exports write " " for an unknown total) and a text
    column whose every value is a number becomes numeric (unless some have leading zeros, like zip codes). A
    clear ``ValueError`` names the file when it is missing, unreadable or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", low_memory=False)
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"{path}: the file is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise ValueError(f"{path}: could not be read as {kind}: {error}") from error
    if frame.empty:
        raise ValueError(f"{path}: the table has no rows" if len(frame.columns) else f"{path}: the file is empty")
    return tidy(frame)


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Stripped text, blank text as missing, text columns of numbers as numbers; other columns untouched."""
    frame = frame.copy()
    for col in frame.columns:
        s = frame[col]
        if pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
            text = s.where(s.isna(), s.astype(str).str.strip())
            text = text.mask(s.isna() | text.eq(""))  # one kind of missing (NaN), whatever the reader used
            numbers = pd.to_numeric(text, errors="coerce")
            present = text.notna()
            coded = text[present].astype(str).str.match(r"0\d").any()  # "02134", "007": codes, keep the zeros
            frame[col] = numbers if present.any() and numbers[present].notna().all() and not coded else text
    return frame


def require_column(frame: pd.DataFrame, column: str, role: str) -> None:
    if column in frame.columns:
        return
    names = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(column, names, n=3, cutoff=0.6)
    close += [c for c in names if c.lower() == column.lower() and c not in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"{role} column {column!r} is not in the table.{hint} Columns: {names}")


def value_list(s: pd.Series, limit: int = 10) -> str:
    counts = s.value_counts(dropna=False)
    shown = ", ".join(f"{value!r} ({count})" for value, count in counts.head(limit).items())
    return shown + (f", … {len(counts) - limit} more" if len(counts) > limit else "")


ID_NAME = re.compile(r"^id|id$|number$|^(row)?(names?|index)$|^unnamed", flags=re.IGNORECASE)


def id_like(name: str, s: pd.Series) -> str | None:
    """Why a column is an identifier rather than a feature, or None: every value distinct, and text (e.g.
    "7590-VHVEG"), integers under an id-like name (``ID_NAME``: "CustomerId", "rownames", "Unnamed: 0") or row
    numbers (integers filling a run with few gaps)."""
    present = s.dropna()
    if len(present) < 20 or present.nunique() != len(s):
        return None
    if pd.api.types.is_integer_dtype(s):
        if ID_NAME.search(name.strip()):
            return "identifier-like (distinct integers under an id name)"
        if int(present.max()) - int(present.min()) + 1 <= 1.1 * len(present):
            return "identifier-like (row numbers)"
        return None
    textual = pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)
    if textual and bool(pd.to_numeric(present, errors="coerce").isna().any()):
        return "identifier-like (distinct text)"
    return None


def feature_columns(
    frame: pd.DataFrame, targets: Sequence[str], id_column: str | None, exclude: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Feature columns: all but the ``targets``, the id and ``exclude``; constant and identifier-like columns
    (``id_like``) are dropped too. Returns the features and {dropped column: why}."""
    dropped: dict[str, str] = {}
    if id_column is not None:
        dropped[id_column] = "id column"
    dropped |= {str(c): "excluded" for c in exclude if c not in targets and c != id_column}
    keep = []
    for col in frame.columns:
        name = str(col)
        if name in targets or name in dropped:
            continue
        s = frame[col]
        if s.nunique(dropna=False) <= 1:
            dropped[name] = "constant"
        elif why := id_like(name, s):
            dropped[name] = why
        else:
            keep.append(col)
    if not keep:
        raise ValueError(f"no feature columns left (dropped: {dropped or 'none'}); the table needs predictors")
    return frame[keep], dropped



def features_line(X: pd.DataFrame, dropped: Mapping[str, str]) -> str:
    """"7 features; dropped: `id` (id column), `Country` (constant)": for a model card."""
    why = ", ".join(f"`{column}` ({reason})" for column, reason in dropped.items())
    return f"{X.shape[1]} features; dropped: {why or 'none'}"


def digest(frame: pd.DataFrame) -> str:
    return f"{int(pd.util.hash_pandas_object(frame, index=False).sum()) & (2**64 - 1):016x}"


def check_folds(folds: int) -> None:
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")


def check_columns(df: pd.DataFrame, roles: Mapping[str, str | None], exclude: Sequence[str]) -> None:
    """Each named column exists, and no column plays two roles."""
    named = {role: column for role, column in roles.items() if column is not None}
    for role, column in named.items():
        require_column(df, column, role)
    for column in exclude:
        require_column(df, column, "excluded")
    columns = list(named.values())
    if len(set(columns)) != len(columns):
        raise ValueError(f"the {', '.join(named)} columns must all differ, got {named}")



def binary_label(frame: pd.DataFrame, label: str) -> pd.Series:
    raw = frame[label]
    problem = f"label column {label!r} must be binary: Yes/No, True/False or 1/0"
    try:
        y = to_outcome(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{problem}; found values {value_list(raw)}. Recode it to one of these first.") from error
    present = y.dropna()
    if present.empty:
        raise ValueError(f"label column {label!r} has no values")
    if not present.isin([0.0, 1.0]).all():
        raise ValueError(f"{problem}; found values {value_list(raw)}")
    if present.nunique() < 2:
        raise ValueError(f"label column {label!r} has a single value ({value_list(raw)}): nothing to predict")
    return y



def arm_labels(s: pd.Series) -> pd.Series:
    """Arm labels as text (CSV arms 1, 2 and a CLI's "--control 1" must meet); missing stays missing."""
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        present = s.dropna()
        if (present == present.round()).all():
            return s.map(lambda v: None if pd.isna(v) else str(int(v))).astype(object)
    return s.map(lambda v: None if pd.isna(v) else str(v)).astype(object)


def outcome_values(frame: pd.DataFrame, outcome: str) -> pd.Series:
    raw = frame[outcome]
    try:
        y = to_outcome(raw)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"outcome column {outcome!r} must be numeric, 1/0, True/False or Yes/No; found values {value_list(raw)}"
        ) from error
    if y.dropna().nunique() < 2:
        raise ValueError(f"outcome column {outcome!r} never varies ({value_list(raw)}): nothing to learn")
    return y



def single_column_auc(X: pd.DataFrame, y: np.ndarray | pd.Series) -> pd.Series:
    """How well each column alone separates the label (0.5–1, either direction); missing is a value of its own.

    An amount is split at its median (above vs not): a column that predicts it that well is as suspicious.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=float)
    if not np.isin(y, [0.0, 1.0]).all():
        y = (y > np.median(y)).astype(float)
    if np.unique(y).size < 2:
        return pd.Series(dtype=float)
    matrix, spec = prepare_features(X)
    out = {}
    for col, name, kind in zip(spec.columns, spec.names, spec.kinds, strict=True):
        s = matrix[name]
        if kind == "category":
            key = s.astype(object).where(s.notna(), "(missing)")
            score = key.map(pd.Series(y, index=s.index).groupby(key).mean()).to_numpy(dtype=float)
            aucs = [roc_auc_score(y, score)]
        else:
            v = s.to_numpy(dtype=float)
            if np.isnan(v).all():
                continue
            low, high = np.nanmin(v) - 1, np.nanmax(v) + 1
            aucs = [roc_auc_score(y, np.where(np.isnan(v), fill, v)) for fill in (low, high)]
        out[col] = max(max(a, 1 - a) for a in aucs)
    return pd.Series(out, dtype=float).sort_values(ascending=False)

