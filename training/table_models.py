"""The table models as MLflow records them, first-class models beside the feature store's: ``TableResult`` (what a
training on a table produced), the deployable pyfunc objects ``TableChurnModel`` / ``TableNbaModel`` (a bare
LightGBM booster would lose the calibration), and ``log_table_result``, which records a result as a new
``@challenger`` version of the registered model ``c360-NAME``.

A table model is named by its user (``--name``, else the file's stem): ``model_name`` checks the name and keeps it
apart from the feature store's models. Its *schema* is the training table's columns with their types (number,
text, boolean, datetime), kept beside the run (``tables/schema.json``) and in the model; ``check_table`` refuses a
table whose schema differs from the one the name was trained on, so a second table cannot take a name over.
``conform`` applies the schema to rows to score (CSV, Parquet or JSON): a missing feature, a column the table did
not have or a value of the wrong type is a ``SchemaError`` naming the column; values are then read as at training
(text stripped, blanks missing, numbers as floats), so the same row scores the same whichever way it came.

The pyfunc accepts the original table: its MLflow signature names every column of the table with MLflow's
``AnyType`` (features required, the others optional), so MLflow's loader passes the user's own column types through
and the model's ``conform`` judges them. A churn answer carries the probability and the top-3 reasons (the feature
and its contribution to the log-odds, as the profile's reasons); an nba answer the recommended arm, its expected
gain over the control net of costs, and each arm's expected outcome.

Typical use::

    frame = tables.read_table("telco.csv")
    check_table(client, "c360-telco", "churn", frame)
    result = table_churn.train_churn_table(frame, label="Churn", id_column="customerID")
    version = log_table_result(result, kind="churn", table_name="telco.csv", home=home, table=frame)
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from c360.training import tracking
from c360.training.explain import BASE, top_k
from c360.training.specs import MODELS, Gate
from c360.training.uplift import MultiArmUplift, choose

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import ModelSignature

    from c360.training.table_candidates import Candidate

Kind = Literal["churn", "nba"]
KIND_TAG = "table_kind"  # on the registered model: which kind of table model it is
SCHEMA = "schema"  # the run's tables/schema.json
PREFIX = "c360-"
NAME = r"^[a-z0-9]+(-[a-z0-9]+)*$"
MAX_NAME = 60
REASONS = 3
# The gate on the same test folds: the cross-validated metric the training logged (training.registry applies it)
GATES: dict[str, Gate] = {"churn": Gate("roc_auc", "higher", 0.002), "nba": Gate("qini", "higher", 0.0)}


class SchemaError(ValueError):
    """Rows that do not fit a table model's training schema; the message names the columns."""


# ---------------------------------------------------------------- names


def slug(text: str) -> str:
    """Lowercase letters and digits, other runs as one dash: "Telco Churn_2024.csv" stem → "telco-churn-2024"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def model_name(name: str | None, table_name: str) -> str:
    """The registered name of a table model: ``c360-NAME``, NAME given (with or without its ``c360-``) or the
    slug of the table's file stem. ``ValueError`` for a malformed name or one of the feature store's models."""
    short = slug(Path(table_name).stem) if name is None else name.removeprefix(PREFIX)
    if not re.match(NAME, short) or len(short) > MAX_NAME:
        raise ValueError(f"model name {short!r}: use lowercase letters, digits and single dashes, at most "
                         f"{MAX_NAME} characters (e.g. telco-churn)" + ("; give one with --name" if name is None
                                                                          else ""))
    registered = PREFIX + short
    if registered in {spec.name for spec in MODELS.values()}:
        raise ValueError(f"{registered} is a feature-store model's name: give the table model another --name")
    return registered


# ---------------------------------------------------------------- schema


def column_type(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "boolean"
    if pd.api.types.is_numeric_dtype(s):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(s):
        return "datetime"
    return "text"


def table_schema(frame: pd.DataFrame) -> dict[str, str]:
    """{column: type} of a table as ``tables.read_table`` reads it."""
    return {str(column): column_type(frame[column]) for column in frame.columns}


def schema_difference(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """How ``new`` differs from ``old``, one phrase per kind of difference (empty when they are equal)."""
    gone = [repr(c) for c in old if c not in new]
    added = [repr(c) for c in new if c not in old]
    retyped = [f"{c!r} ({old[c]} → {new[c]})" for c in old if c in new and old[c] != new[c]]
    return [f"{what}: {', '.join(items)}"
            for what, items in (("missing", gone), ("new", added), ("other types", retyped)) if items]


def _kind_of(client: MlflowClient, registered: str) -> str | None:
    """The kind of an existing table model, "" for a registered model that is not one, None for no such model."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_registered_model(registered).tags.get(KIND_TAG, ""))
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def trained_schema(client: MlflowClient, registered: str) -> dict[str, Any]:
    """The schema (``columns``, ``features``, ``kind``) of the latest version of a table model."""
    import mlflow

    latest = max(client.search_model_versions(f"name = '{registered}'"), key=lambda v: int(v.version))
    return dict(mlflow.artifacts.load_dict(f"runs:/{latest.run_id}/tables/{SCHEMA}.json"))


def check_table(client: MlflowClient, registered: str, kind: Kind, frame: pd.DataFrame) -> None:
    """``ValueError`` when ``registered`` holds a model of another kind or trained on other columns: a new version
    must come from a table of the same schema."""
    existing = _kind_of(client, registered)
    if existing is None:
        return
    if existing != kind:
        what = f"a table {existing} model" if existing else "not a table model"
        raise ValueError(f"{registered} is {what}: give this {kind} model another --name")
    differences = schema_difference(trained_schema(client, registered)["columns"], table_schema(frame))
    if differences:
        raise ValueError(f"{registered} was trained on a table with other columns ({'; '.join(differences)}): "
                         "give this table another --name")


def conform(frame: pd.DataFrame, schema: Mapping[str, Any]) -> pd.DataFrame:
    """``frame`` checked against ``schema`` and its features read as at training; ``SchemaError`` naming the
    columns that are missing, unknown to the table, or of the wrong type."""
    columns, features = schema["columns"], schema["features"]
    unknown = [str(c) for c in frame.columns if str(c) not in columns]
    missing = [c for c in features if c not in frame.columns]
    if unknown or missing:
        problems = [f"missing column(s) {', '.join(map(repr, missing))}" if missing else "",
                    f"column(s) {', '.join(map(repr, unknown))} not in the training table" if unknown else ""]
        raise SchemaError("; ".join(p for p in problems if p))
    out = frame.copy()
    for column in features:
        out[column] = _as_type(out[column], columns[column], column)
    return out


def _as_type(s: pd.Series, kind: str, column: str) -> pd.Series:
    if kind == "number":
        if pd.api.types.is_bool_dtype(s):
            raise SchemaError(f"column {column!r} must hold numbers, not true/false")
        if pd.api.types.is_numeric_dtype(s):
            return s.astype("float64")
        text = _text(s)
        numbers = pd.to_numeric(text.where(~text.map(lambda v: isinstance(v, bool))), errors="coerce")
        return _checked(numbers.astype("float64"), text.notna(), column, "numbers")
    if kind == "boolean":
        flags = s.map(lambda v: float(v) if isinstance(v, bool | np.bool_) else np.nan).astype("float64")
        return _checked(flags, s.notna(), column, "true/false")
    if kind == "datetime":
        return _checked(pd.to_datetime(s, errors="coerce", utc=True), s.notna(), column, "dates")
    if s.map(lambda v: isinstance(v, bool | int | float | np.number) and not pd.isna(v)).any():
        raise SchemaError(f"column {column!r} must hold text")
    return _text(s)


def _text(s: pd.Series) -> pd.Series:
    """Stripped text, blanks as missing (``tables.tidy``'s reading)."""
    text = s.astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)
    return text.mask(text.isna() | text.eq("")).astype(object)


def _checked(values: pd.Series, present: pd.Series, column: str, what: str) -> pd.Series:
    bad = present & values.isna()
    if bad.any():
        raise SchemaError(f"column {column!r} must hold {what} ({int(bad.sum()):,} value(s) do not, the first in "
                          f"row {int(np.flatnonzero(bad.to_numpy())[0]) + 1})")
    return values


def signature(schema: Mapping[str, Any], output: pd.DataFrame) -> ModelSignature:
    """MLflow's signature of a table model: every table column of any type (the features required), the answer's
    columns as inferred."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    features = set(schema["features"])
    inputs = Schema([ColSpec(AnyType(), column, required=column in features) for column in schema["columns"]])
    return ModelSignature(inputs=inputs, outputs=infer_signature(None, output).outputs)


@dataclass
class TableResult:
    """What a training on a table produced; ``metrics`` are the floats MLflow logs (the gate reads them)."""

    model: Any
    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]
    model_card: str
    input_example: pd.DataFrame
    params: dict[str, Any]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # logged as baseline.<name>.<metric>
    data: pd.DataFrame | None = field(default=None, repr=False)  # the rows used, logged as the MLflow dataset
    warnings: list[str] = field(default_factory=list)  # one line each, for the console (and already in the card)

    @classmethod
    def of(cls, model: Any, X: pd.DataFrame, targets: list[pd.Series], single: pd.Series, *,
           tables: dict[str, pd.DataFrame], **rest: Any) -> TableResult:
        """The result of a training on the features ``X``: its input example is their first rows, its dataset them
        with the ``targets``, and its tables end with each column's single-column AUC (``tables.single_column_auc``).
        """
        return cls(
            model=model,
            tables={**tables, "single_column_auc": single.rename_axis("column").reset_index(name="auc")},
            input_example=X.head(5).reset_index(drop=True),
            data=pd.concat([X, *targets], axis=1),
            **rest,
        )


# ---------------------------------------------------------------- the deployable models


class TableChurnModel:
    """The chosen calibrated churn model (a ``table_candidates.Candidate``: the blend, or one candidate) with
    ``predict``, as MLflow's pyfunc needs: per row the churn probability and its top reasons (``reason_i``: a feature,
    ``reason_i_contribution``: its share of the log-odds).

    Once registered (``log_table_result``) it knows its table's ``schema`` and ``conform``s every input to it;
    columns of the table that are no features (the id, the label) are ignored, the id echoed.
    """

    def __init__(self, model: Candidate, id_column: str | None = None) -> None:
        self.churn = model
        self.id_column = id_column
        self.schema: dict[str, Any] | None = None

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        X = conform(X, self.schema) if self.schema is not None else X
        out = pd.DataFrame({"churn_probability": self.churn.predict_proba(X)}, index=X.index)
        out = pd.concat([out, self.reasons(X)], axis=1)
        if self.id_column is not None and self.id_column in X.columns:
            out.insert(0, self.id_column, X[self.id_column])
        return out

    def reasons(self, X: pd.DataFrame, k: int = REASONS) -> pd.DataFrame:
        """The k features that moved each row's log-odds most, strongest first (None: no reason in that slot)."""
        spec = self.churn.spec
        assert spec is not None
        contributions = self.churn.contributions(X).drop(columns=BASE).set_axis(list(spec.columns), axis=1)
        index, chosen = top_k(contributions.to_numpy(), k)
        names = np.asarray(spec.columns, dtype=object)
        columns: dict[str, Any] = {}
        for slot in range(index.shape[1]):
            columns[f"reason_{slot + 1}"] = np.where(index[:, slot] >= 0, names[index[:, slot]], None)
            columns[f"reason_{slot + 1}_contribution"] = chosen[:, slot]
        return pd.DataFrame(columns, index=X.index)


class TableNbaModel:
    """A fitted ``MultiArmUplift`` with ``predict``: the recommended arm (net of costs), its expected gain over the
    control (net of its cost) and each arm's expected outcome; conformed to its ``schema`` once registered."""

    def __init__(self, model: MultiArmUplift, costs: Mapping[Hashable, float] | None = None) -> None:
        self.uplift = model
        self.costs = dict(costs or {})
        self.schema: dict[str, Any] | None = None

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        X = conform(X, self.schema) if self.schema is not None else X
        outcomes = self.uplift.predict_outcomes(X)
        unknown = [arm for arm in self.costs if arm not in outcomes.columns]
        if unknown:
            raise ValueError(f"costs given for unknown arms: {unknown}")
        choice = choose(outcomes - pd.Series({arm: float(self.costs.get(arm, 0.0)) for arm in outcomes.columns}),
                        self.uplift.control_)
        best = pd.DataFrame({"recommended": choice.best, "expected_gain": choice.score}, index=X.index)
        expected = outcomes.set_axis([f"expected: {arm}" for arm in outcomes.columns], axis=1)
        return pd.concat([best, expected], axis=1)


def log_table_result(result: TableResult, *, kind: Kind, table_name: str, home: Path, name: str | None = None,
                     table: pd.DataFrame | None = None) -> ModelVersion:
    """Logs ``result`` as one MLflow run in experiment ``c360-NAME`` and registers the model as the new
    ``@challenger`` of ``c360-NAME`` (``model_name(name, table_name)``; pyfunc: ``tracking.load_model(name, alias,
    "pyfunc")`` gives back the ``TableChurnModel`` / ``TableNbaModel``).

    ``table`` is the table as read (default: the rows used, features and targets): its schema goes with the model,
    and a name trained on other columns is refused (``check_table``). The ``test_period`` tag (compared by the
    promotion gate) names the table's content and the folds, so only versions evaluated on the same data the same
    way are compared.
    """
    expected: dict[str, type[TableChurnModel | TableNbaModel]] = {"churn": TableChurnModel, "nba": TableNbaModel}
    if kind not in expected:
        raise ValueError(f"kind must be 'churn' or 'nba', got {kind!r}")
    model = result.model
    if not isinstance(model, expected[kind]):
        raise ValueError(f"a {kind} result must hold a {expected[kind].__name__}, got {type(model).__name__}")
    registered = model_name(name, table_name)
    table = result.data if table is None else table
    if table is None:
        raise ValueError("no table to take the model's schema from: pass the table as read")
    client = tracking.configure(home)
    check_table(client, registered, kind, table)
    schema = {"kind": kind, "columns": table_schema(table), "features": [str(c) for c in result.input_example]}
    model.schema = schema
    params = result.params
    target = str(params.get("label" if kind == "churn" else "outcome") or "") or None
    evaluation = (
        f"{params.get('folds')}-fold on {table_name} (digest {params.get('table_digest')}, seed {params.get('seed')})"
    )
    title, _, body = result.model_card.partition("\n")
    card = f"{title}\n\nSource table: `{table_name}`\n{body}"
    version = tracking.log_training_run(
        experiment=registered,
        run_name=f"{kind} on {Path(table_name).name}",
        model=model,
        flavor="pyfunc",
        params=params,
        metrics=result.metrics,
        baselines=result.baselines or None,
        dataset=result.data,
        dataset_name=Path(table_name).stem or "table",
        input_example=result.input_example,
        figures=result.figures,
        tables={**result.tables, SCHEMA: schema},
        model_card=card,
        registered_name=registered,
        tags={"kind": f"table-{kind}", "source_table": table_name, "test_period": evaluation},
        target=target,
        home=home,
        signature=signature(schema, model.predict(result.input_example)),
    )
    client.set_registered_model_tag(registered, KIND_TAG, kind)
    return version


def table_models(client: MlflowClient) -> dict[str, dict[str, Any]]:
    """Every table model in the registry: registered name → {"kind", "aliases": {alias: version}}."""
    return {m.name: {"kind": m.tags[KIND_TAG], "aliases": {a: int(v) for a, v in m.aliases.items()}}
            for m in client.search_registered_models(max_results=1000) if KIND_TAG in m.tags}


def load(home: Path, registered: str, alias: str) -> tuple[TableChurnModel | TableNbaModel, ModelVersion]:
    """The table model ``registered@alias`` and its version; ``tracking.ModelNotFound`` when there is none."""
    if _kind_of(tracking.configure(home), registered) in (None, ""):
        raise tracking.ModelNotFound(f"no table model named {registered!r}: `c360 train churn|nba --table` makes one")
    model, version = tracking.load_model(registered, alias, "pyfunc", home=home)
    if not isinstance(model, TableChurnModel | TableNbaModel) or model.schema is None:
        raise tracking.ModelNotFound(f"{registered}@{alias} is not a table model c360 can score")
    return model, version
