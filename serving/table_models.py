"""Table models served: `c360 score --model NAME --table FILE` and `POST /models/{name}/predict`.

A table model (`training.table_models`: trained with `c360 train churn|nba --table`, registered as `c360-NAME`) is
scored by its own pyfunc object, the one `mlflow.pyfunc.load_model` gives back, so a row scores the same in a batch,
over HTTP and in MLflow. `TableModels` holds the `@champion` of every table model of a home and, like
`serving.champions`, reloads only the ones whose alias moved when refreshed (the service polls); a model with no
champion any more is dropped. `answers` turns the pyfunc's frame into the route's JSON rows: the probability (or
the recommended arm and its expected gain) with the reasons as a list.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from c360.serving.champions import RegistryUnavailable
from c360.serving.errors import Invalid, NotFound, TooLarge
from c360.training import tracking
from c360.training.table_models import PREFIX, SchemaError, TableChurnModel, TableNbaModel, load, table_models
from c360.training.tracking import CHAMPION

MAX_ROWS = 1000  # rows per request to /models/{name}/predict: a larger batch is `c360 score --model`'s
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Loaded:
    name: str  # registered name, c360-NAME
    kind: str  # churn | nba
    version: int
    model: TableChurnModel | TableNbaModel

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The answers for JSON rows in the table's own columns; `Invalid` (422) naming a column that is missing,
        not in the table, or of the wrong type, `TooLarge` (413) over `MAX_ROWS`."""
        if len(rows) > MAX_ROWS:
            raise TooLarge(f"{len(rows):,} rows: at most {MAX_ROWS:,} per request (`c360 score --model` scores a "
                           "whole table)")
        assert self.model.schema is not None
        features = self.model.schema["features"]
        for number, row in enumerate(rows, 1):  # a key missing from one row would otherwise become a missing value
            missing = [c for c in features if c not in row]
            if missing:
                raise Invalid(f"row {number}: missing column(s) {', '.join(map(repr, missing))}")
        try:
            scored = self.model.predict(pd.DataFrame.from_records(rows))
        except SchemaError as e:
            raise Invalid(str(e)) from None
        return answers(self.kind, scored)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def answers(kind: str, scored: pd.DataFrame) -> list[dict[str, Any]]:
    """One JSON object per row of a table model's predictions: its columns, the reasons as a list of
    {"feature", "contribution"} (churn) and the arms' expected outcomes as a mapping (nba)."""
    out = []
    reasons = [c for c in scored.columns if c.startswith("reason_") and not c.endswith("_contribution")]
    expected = [c for c in scored.columns if c.startswith("expected: ")]
    plain = [c for c in scored.columns if c not in reasons and c not in expected and not c.endswith("_contribution")]
    for row in scored.to_dict(orient="records"):
        answer = {str(c): _plain(row[c]) for c in plain}
        if kind == "churn":
            answer["reasons"] = [{"feature": row[c], "contribution": float(row[f"{c}_contribution"])}
                                 for c in reasons if row[c] is not None]
        else:
            answer["expected"] = {c.removeprefix("expected: "): _plain(row[c]) for c in expected}
        out.append(answer)
    return out


def score_table(home: Path, model: str, frame: pd.DataFrame, alias: str = CHAMPION) -> tuple[pd.DataFrame, int]:
    """The predictions of table model `model` (NAME or c360-NAME) at `alias` for a table, and the version used.

    `tracking.ModelNotFound` for no such model or alias, `SchemaError` for a table that does not fit it."""
    loaded, version = load(home, PREFIX + model.removeprefix(PREFIX), alias)
    return loaded.predict(frame), int(version.version)


def write_scores(scores: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet by the file's suffix; `ValueError` for another suffix."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: --out must end in {', '.join(SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        scores.to_csv(path, index=False)
    else:
        scores.to_parquet(path, index=False)


class TableModels:
    """The `@champion` of every table model of one C360_HOME, by short name (NAME); thread-safe refresh."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self._lock = threading.Lock()
        self.models: dict[str, Loaded] = {}

    def get(self, name: str) -> Loaded:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"no promoted table model named {name!r}") from None

    def versions(self) -> dict[str, int]:
        return {name: loaded.version for name, loaded in self.models.items()}

    def refresh(self) -> dict[str, tuple[int | None, int | None]]:
        """Load the champions that moved, drop the models without one; {NAME: (old version, new version)}."""
        with self._lock:
            try:
                wanted = {name: (info["kind"], info["aliases"][CHAMPION])
                          for name, info in table_models(tracking.configure(self.home)).items()
                          if CHAMPION in info["aliases"]}
            except Exception as e:  # a broken or locked registry database: keep what is loaded
                raise RegistryUnavailable("cannot be read: see the server log", e) from e
            changed: dict[str, tuple[int | None, int | None]] = {}
            for short in [s for s in self.models if PREFIX + s not in wanted]:
                changed[short] = (self.models.pop(short).version, None)
            for name, (kind, version) in wanted.items():
                short, old = name.removeprefix(PREFIX), self.models.get(name.removeprefix(PREFIX))
                if old is None or old.version != version:
                    model, loaded = load(self.home, name, CHAMPION)
                    self.models[short] = Loaded(name, kind, int(loaded.version), model)
                    changed[short] = (old.version if old else None, int(loaded.version))
            return changed
