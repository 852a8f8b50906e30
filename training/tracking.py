"""MLflow I/O: where runs live, logging one training run as a registered model version, loading a version by alias.

Runs, metrics and the model registry live in SQLite (`<home>/mlflow.db`), artifacts in `<home>/mlartifacts`;
the standard `MLFLOW_TRACKING_URI` (and `MLFLOW_REGISTRY_URI`) environment variables override. Versions are
addressed by aliases, not stages: each new version becomes `@challenger`, and `training.registry.promote` moves
`@champion`.

Three flavors:

* "lightgbm": a `lightgbm.Booster` (or LGBM* estimator); loads back as the same object.
* "sklearn": any scikit-learn estimator; its pyfunc predicts probabilities when it has `predict_proba`.
* "pyfunc": any object with `predict(DataFrame)` (e.g. a class holding several boosters), written by
  `training.saved` (c360's classes under stable names, never pickled by reference) and logged from code
  (`training/pyfunc_model.py`) with c360 itself among its pinned requirements: `mlflow.pyfunc.load_model` works
  wherever that c360 is installed, and `load_model` here gives back the object itself.

Signatures keep the example's column types: integer columns are `long`, so a frame read by pandas scores (MLflow
refuses int64 where it expects a double). A column that was integer in training but misses values at scoring
arrives as float, and MLflow refuses it naming the column, with a hint about missing values; a column that had
missing values in training is a double already.

Only the native flavors give probabilities for LightGBM classifiers: the pyfunc of the "lightgbm" flavor returns
labels for LGBMClassifier, so serving loads with `load_model`, not `mlflow.pyfunc.load_model`.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import mlflow
import mlflow.lightgbm
import mlflow.pyfunc
import mlflow.sklearn
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from c360.core.at_rest import owner_only_tree
from c360.core.settings import Settings
from c360.training import saved

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

Flavor = Literal["lightgbm", "sklearn", "pyfunc"]
CHAMPION, CHALLENGER = "champion", "challenger"
_SERVERS = frozenset({"http", "https", "databricks", "databricks-uc", "uc"})
# Pinned explicitly: MLflow's own inference imports the model in a subprocess and costs ~10 s per logged model.
_RUNTIME = ("lightgbm", "scikit-learn", "pandas", "numpy")
_PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


@dataclass(frozen=True)
class TrainReport:
    """What every training pipeline returns: the version it registered, its test period and rows, the model's test
    metrics and each baseline's on the same rows, and (next best action) the evaluation behind them."""

    model: str
    version: int
    run_id: str
    test_period: str
    rows: dict[str, int]
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    evaluation: Any = None


class ModelNotFound(LookupError):
    """The registered model, or the alias on it, does not exist."""


# ---------------------------------------------------------------- where runs live


_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _chosen(variable: str) -> str | None:
    return os.environ.get(variable) or None


def tracking_uri(home: Path) -> str:
    """`MLFLOW_TRACKING_URI` when the user set it, else the SQLite file `<home>/mlflow.db` (absolute)."""
    return _chosen("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(home) / 'mlflow.db').resolve()}"


def artifact_root(home: Path) -> Path:
    return (Path(home) / "mlartifacts").resolve()


def _home(home: Path | None) -> Path:
    return Path(home) if home is not None else Settings().home


def configure(home: Path | None = None) -> MlflowClient:
    """Points MLflow (tracking and registry) at `home` (default: C360_HOME) and returns a client; idempotent."""
    home = _home(home)
    artifact_root(home).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(home)
    registry = _chosen("MLFLOW_REGISTRY_URI") or uri
    # set_tracking_uri / set_registry_uri also export the URIs for subprocesses: a server or command started later
    # for another home would inherit this one's registry as if the user had chosen it, so the user's values return.
    before = {variable: os.environ.get(variable) for variable in _VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    for variable, value in before.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


def _artifact_location(client: MlflowClient, home: Path, experiment: str) -> str | None:
    """Under `<home>/mlartifacts` unless a tracking server decides (without it MLflow would use ./mlruns of the cwd)."""
    if urlparse(client.tracking_uri).scheme in _SERVERS:
        return None
    return (artifact_root(home) / re.sub(r"[^\w.-]+", "_", experiment)).as_uri()


def experiment_id(client: MlflowClient, home: Path, name: str) -> str:
    """The id of experiment `name`, created (or restored from the bin) when needed."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(client, home, name))
        except MlflowException as error:  # created meanwhile by another process
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
            assert found is not None
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


# ---------------------------------------------------------------- logging a training run


def _requirements(flavor: Flavor) -> list[str]:
    flavor_default = {"lightgbm": mlflow.lightgbm, "sklearn": mlflow.sklearn, "pyfunc": mlflow.pyfunc}[flavor]
    pinned = list(flavor_default.get_default_pip_requirements())
    for package in (*_RUNTIME, "c360") if flavor == "pyfunc" else _RUNTIME:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return list(dict.fromkeys(pinned))


def _log_model(model: Any, flavor: Flavor, example: pd.DataFrame, requirements: Sequence[str] | None,
               signature: ModelSignature | None = None) -> ModelInfo:
    """The model under the run's `model`, with `signature`, by default one of `example`'s column types and the
    pyfunc's output."""
    output = model.predict_proba(example) if flavor == "sklearn" and hasattr(model, "predict_proba") else None
    common: dict[str, Any] = {
        "name": "model",  # MLflow 3: `name`, not the deprecated `artifact_path`
        "input_example": example,
        "signature": signature or infer_signature(example, model.predict(example) if output is None else output),
        "pip_requirements": list(requirements) if requirements is not None else _requirements(flavor),
    }
    if flavor == "lightgbm":
        return mlflow.lightgbm.log_model(model, **common)
    if flavor == "sklearn":
        predict_fn = "predict_proba" if hasattr(model, "predict_proba") else "predict"
        return mlflow.sklearn.log_model(model, pyfunc_predict_fn=predict_fn, **common)
    if flavor == "pyfunc":
        with tempfile.TemporaryDirectory() as folder:
            artifacts = {"model": str(saved.save(model, Path(folder) / "model"))}
            return mlflow.pyfunc.log_model(python_model=str(_PYFUNC_CODE), artifacts=artifacts, **common)
    raise ValueError(f"unknown flavor {flavor!r}: use lightgbm, sklearn or pyfunc")


def _log_datasets(
    dataset: pd.DataFrame | Mapping[str, pd.DataFrame] | None, name: str, target: str | None
) -> dict[str, PandasDataset]:
    """One MLflow dataset input per context ("training", "test", ...); a bare DataFrame is the training set."""
    if dataset is None:
        return {}
    frames = {"training": dataset} if isinstance(dataset, pd.DataFrame) else dict(dataset)
    logged = {}
    for context, frame in frames.items():
        label = name if len(frames) == 1 else f"{name}-{context}"
        logged[context] = from_pandas(frame, name=label, targets=target)
        mlflow.log_input(logged[context], context=context)
    return logged


def _all_metrics(metrics: Mapping[str, float], baselines: Mapping[str, Mapping[str, float]] | None) -> dict[str, float]:
    flat = {key: float(value) for key, value in metrics.items()}
    for baseline, values in (baselines or {}).items():
        flat |= {f"baseline.{baseline}.{key}": float(value) for key, value in values.items()}
    return flat


def _log_table(name: str, table: pd.DataFrame | Mapping[str, Any]) -> None:
    if isinstance(table, pd.DataFrame):
        keep_index = not isinstance(table.index, pd.RangeIndex)
        mlflow.log_text(table.to_csv(index=keep_index), f"tables/{name}.csv")
    else:
        mlflow.log_dict(dict(table), f"tables/{name}.json")


def _log_figures(figures: Mapping[str, Figure]) -> None:
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name.removesuffix('.png')}.png")


def _register(client: MlflowClient, info: ModelInfo, name: str, tags: Mapping[str, Any], card: str) -> ModelVersion:
    """A new version of `name` from the logged model, described by the model card and aliased `@challenger`."""
    registered = mlflow.register_model(info.model_uri, name, tags={key: str(value) for key, value in tags.items()})
    number = str(registered.version)
    if card:
        client.update_model_version(name, number, description=card)
    client.set_registered_model_alias(name, CHALLENGER, number)
    return client.get_model_version(name, number)


def log_training_run(
    *,
    experiment: str,
    run_name: str,
    model: Any,
    flavor: Flavor,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    baselines: Mapping[str, Mapping[str, float]] | None,
    dataset: pd.DataFrame | Mapping[str, pd.DataFrame] | None,
    dataset_name: str,
    input_example: pd.DataFrame,
    figures: Mapping[str, Figure],
    tables: Mapping[str, pd.DataFrame | Mapping[str, Any]],
    model_card: str,
    registered_name: str,
    tags: Mapping[str, Any],
    target: str | None = None,
    pip_requirements: Sequence[str] | None = None,
    home: Path | None = None,
    signature: ModelSignature | None = None,
) -> ModelVersion:
    """Logs one training run in experiment `experiment` and registers its model as the new `@challenger`.

    `metrics` are the model's test metrics; `baselines` maps a baseline's name to its metrics, logged as
    `baseline.<name>.<metric>`. `dataset` is one DataFrame (the training set) or a mapping context -> DataFrame
    ("training", "test"); `target` names its label column. `tags` go on the run and on the model version; the
    promotion gate needs `test_period`. Figures land under `plots/` as PNG, DataFrames under `tables/` as CSV
    (dicts as JSON), the card in `model_card.md` and the version's description. `signature` replaces the one
    inferred from `input_example`. Returns the registered version.
    """
    home = _home(home)
    client = configure(home)
    run_tags = {key: str(value) for key, value in tags.items()}
    with mlflow.start_run(experiment_id=experiment_id(client, home, experiment), run_name=run_name, tags=run_tags):
        mlflow.log_params(dict(params))
        with warnings.catch_warnings():  # integers refuse missing values: on purpose (module docstring)
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
            inputs = _log_datasets(dataset, dataset_name, target)
            info = _log_model(model, flavor, input_example, pip_requirements, signature)
        mlflow.log_metrics(_all_metrics(metrics, baselines), model_id=info.model_id, dataset=inputs.get("test"))
        _log_report(figures, tables, model_card)
    _protect(home)
    return _register(client, info, registered_name, run_tags, model_card)


def log_evaluation_run(
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    figures: Mapping[str, Figure],
    tables: Mapping[str, pd.DataFrame | Mapping[str, Any]],
    model_card: str,
    tags: Mapping[str, Any],
    home: Path | None = None,
) -> str:
    """Logs a run that compares models without keeping one (no model, no dataset): params, metrics, plots, tables
    and the card, as log_training_run lays them out. Returns the run id."""
    home = _home(home)
    client = configure(home)
    run_tags = {key: str(value) for key, value in tags.items()}
    with mlflow.start_run(experiment_id=experiment_id(client, home, experiment), run_name=run_name,
                          tags=run_tags) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
        _log_report(figures, tables, model_card)
    _protect(home)
    return str(run.info.run_id)


def log_folder_run(*, experiment: str, run_name: str, folder: Path, metrics: Mapping[str, float],
                   tags: Mapping[str, Any], home: Path | None = None) -> str:
    """Logs a run whose artifacts are the files of `folder` (a report), with its key figures as metrics."""
    home = _home(home)
    client = configure(home)
    with mlflow.start_run(experiment_id=experiment_id(client, home, experiment), run_name=run_name,
                          tags={key: str(value) for key, value in tags.items()}) as run:
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
        mlflow.log_artifacts(str(folder))
    _protect(home)
    return str(run.info.run_id)


def _log_report(figures: Mapping[str, Figure], tables: Mapping[str, pd.DataFrame | Mapping[str, Any]],
                model_card: str) -> None:
    _log_figures(figures)
    for name, table in tables.items():
        _log_table(name, table)
    mlflow.log_text(model_card, "model_card.md")


def _protect(home: Path) -> None:
    if artifact_root(home).is_dir():  # the run's files under C360_HOME, not a tracking server's
        owner_only_tree(artifact_root(home))


# ---------------------------------------------------------------- reading the registry


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion:
    """The version of registered model `name` that carries `alias`; `ModelNotFound` when either is missing."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFound(f"no registered model named {name!r}") from error
        raise
    if alias not in registered.aliases:
        have = ", ".join(f"@{a}" for a in sorted(registered.aliases)) or "none"
        raise ModelNotFound(f"model {name!r} has no @{alias} alias (aliases: {have})")
    return client.get_model_version(name, str(registered.aliases[alias]))


def load_model(name: str, alias: str, flavor: Flavor, *, home: Path | None = None) -> tuple[Any, ModelVersion]:
    """The native model behind `name@alias` (Booster, estimator or the pyfunc's Python object) and its version."""
    client = configure(home)
    found = version_by_alias(client, name, alias)
    uri = f"models:/{name}/{found.version}"  # pinned: the alias may move while we load
    if flavor == "lightgbm":
        return mlflow.lightgbm.load_model(uri), found
    if flavor == "sklearn":
        return mlflow.sklearn.load_model(uri), found
    if flavor == "pyfunc":
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().obj, found
    raise ValueError(f"unknown flavor {flavor!r}: use lightgbm, sklearn or pyfunc")
