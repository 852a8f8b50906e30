"""The table models as MLflow records them: ``TableResult`` (what a training on a table produced), the deployable
pyfunc objects ``TableChurnModel`` / ``TableNbaModel`` (a bare LightGBM booster would lose the calibration), and
``log_table_result``, which records a result as a registered ``@challenger`` version.

Typical use::

    frame = tables.read_table("telco.csv")
    result = table_churn.train_churn_table(frame, label="Churn", id_column="customerID")
    version = log_table_result(result, kind="churn", table_name="telco.csv", home=home)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from c360.training import tracking
from c360.training.churn import ChurnModel
from c360.training.uplift import MultiArmUplift, recommend_from_outcomes

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities.model_registry import ModelVersion

    from c360.training.table_candidates import LinearChurn

Kind = Literal["churn", "nba"]
NAMES: dict[str, str] = {"churn": "c360-table-churn", "nba": "c360-table-nba"}  # experiment = registered model


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
    """The chosen calibrated churn model (a ``ChurnModel`` or a ``LinearChurn``) with ``predict``, as MLflow's
    pyfunc needs: one churn probability per row.

    Extra columns in the input (the id, the label) are ignored; the id is echoed when present.
    """

    def __init__(self, model: ChurnModel | LinearChurn, id_column: str | None = None) -> None:
        self.churn = model
        self.id_column = id_column

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"churn_probability": self.churn.predict_proba(X)}, index=X.index)
        if self.id_column is not None and self.id_column in X.columns:
            out.insert(0, self.id_column, X[self.id_column])
        return out


class TableNbaModel:
    """A fitted ``MultiArmUplift`` with ``predict``: the recommended arm (net of costs) and each arm's outcome."""

    def __init__(self, model: MultiArmUplift, costs: Mapping[Hashable, float] | None = None) -> None:
        self.uplift = model
        self.costs = dict(costs or {})

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        outcomes = self.uplift.predict_outcomes(X)
        best = recommend_from_outcomes(outcomes, self.uplift.control_, self.costs)
        expected = outcomes.set_axis([f"expected: {arm}" for arm in outcomes.columns], axis=1)
        return pd.concat([best.rename("recommended"), expected], axis=1)


def log_table_result(result: TableResult, *, kind: Kind, table_name: str, home: Path) -> ModelVersion:
    """Logs ``result`` as one MLflow run in experiment ``c360-table-<kind>`` and registers the model as the new
    ``@challenger`` of ``c360-table-<kind>`` (pyfunc: ``tracking.load_model(name, alias, "pyfunc")`` gives back the
    ``TableChurnModel`` / ``TableNbaModel``).

    The ``test_period`` tag (compared by the promotion gate) names the table's content and the folds, so only
    versions evaluated on the same data the same way are compared.
    """
    expected = {"churn": TableChurnModel, "nba": TableNbaModel}
    if kind not in expected:
        raise ValueError(f"kind must be 'churn' or 'nba', got {kind!r}")
    if not isinstance(result.model, expected[kind]):
        raise ValueError(f"a {kind} result must hold a {expected[kind].__name__}, got {type(result.model).__name__}")
    name = NAMES[kind]
    params = result.params
    target = str(params.get("label" if kind == "churn" else "outcome") or "") or None
    evaluation = (
        f"{params.get('folds')}-fold on {table_name} (digest {params.get('table_digest')}, seed {params.get('seed')})"
    )
    title, _, body = result.model_card.partition("\n")
    card = f"{title}\n\nSource table: `{table_name}`\n{body}"
    return tracking.log_training_run(
        experiment=name,
        run_name=f"{kind} on {Path(table_name).name}",
        model=result.model,
        flavor="pyfunc",
        params=params,
        metrics=result.metrics,
        baselines=result.baselines or None,
        dataset=result.data,
        dataset_name=Path(table_name).stem or "table",
        input_example=result.input_example,
        figures=result.figures,
        tables=result.tables,
        model_card=card,
        registered_name=name,
        tags={"kind": f"table-{kind}", "source_table": table_name, "test_period": evaluation},
        target=target,
        home=home,
    )
