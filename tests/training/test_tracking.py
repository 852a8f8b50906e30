"""MLflow layer against a real SQLite-backed MLflow: what a training run records, loading by alias, the promotion gate.

One MLflow home per module: creating the SQLite schema (MLflow's migrations) takes seconds, so each test works on
its own registered model name instead of its own database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from c360.training import registry, tracking
from c360.training.fairness import gap_low_metric, gap_metric
from c360.training.registry import CHURN_GATE, CLV_GATE, Gate, Guard, Limits
from c360.training.tracking import ModelNotFound

PERIOD = "2024-01-01/2024-03-31"
GOOD = {"roc_auc": 0.80, "ece": 0.030, "brier": 0.150}
FAIR = {gap_metric(m): 0.02 for m in ("calibration", "relative_error")}  # what the pipelines log beside
CALIBRATION_GAP = gap_metric("calibration")
LIMITS = Limits(max_gap=0.15, margin=0.03)



@pytest.fixture(scope="module")
def client(mlflow_home: Path) -> MlflowClient:
    return tracking.configure(mlflow_home)


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(600, 3)), columns=["tenure", "spend", "tickets"])
    y = (X["tenure"] - X["tickets"] + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "num_threads": 1, "verbosity": -1, "seed": 1}
    booster = lgb.train(params, lgb.Dataset(X[:400], y[:400]), num_boost_round=20)
    return {"X": X, "y": y, "train": X[:400], "test": X[400:], "params": params, "booster": booster}


def log(mlflow_home: Path, data: dict[str, Any], name: str, metrics: dict[str, float], period: str = PERIOD,
        fair: bool = True, **overrides: Any) -> Any:
    """One training run of the tiny classifier, registered as the new challenger of `name`; with `fair`, it also
    logs small worst-group gaps as the pipelines do."""
    figure = Figure()
    figure.subplots().plot([0, 1], [0, 1])
    arguments: dict[str, Any] = {
        "experiment": name, "run_name": f"{name}-run", "model": data["booster"], "flavor": "lightgbm",
        "params": data["params"], "metrics": (FAIR if fair else {}) | metrics, "baselines": None, "dataset": None,
        "dataset_name": name,
        "input_example": data["test"].head(5), "figures": {}, "tables": {}, "model_card": f"# {name}",
        "registered_name": name, "tags": {"test_period": period, **overrides.pop("tags", {})}, "home": mlflow_home,
    }
    return tracking.log_training_run(**(arguments | overrides))


def test_uri_defaults_to_sqlite_under_home_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.tracking_uri(tmp_path) == "http://mlflow.internal:5000"


@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer")
def test_a_run_records_params_metrics_artifacts_dataset_and_a_challenger(mlflow_home: Path, client: MlflowClient, data):
    probabilities = data["booster"].predict(data["test"])
    metrics = {"roc_auc": roc_auc_score(data["y"][400:], probabilities), "ece": 0.02, "brier": 0.12}
    figure = Figure()
    figure.subplots().plot([0, 1], [0, 1])
    importance = pd.DataFrame({"feature": data["X"].columns, "gain": data["booster"].feature_importance("gain")})
    frames = {"training": data["X"][:400].assign(churned=data["y"][:400]),
              "test": data["X"][400:].assign(churned=data["y"][400:])}
    version = log(mlflow_home, data, "churn", metrics, baselines={"logistic": {"roc_auc": 0.7}}, dataset=frames,
                  dataset_name="churn-snapshots", target="churned", figures={"calibration": figure},
                  tables={"importance": importance, "thresholds": {"top_decile": 0.61}},
                  model_card="# Churn model\nLightGBM on three features.")

    assert (version.name, version.version, version.aliases) == ("churn", 1, ["challenger"])
    assert version.description.startswith("# Churn model")
    assert version.tags["test_period"] == PERIOD
    run = client.get_run(version.run_id)
    assert run.info.run_name == "churn-run" and run.data.tags["test_period"] == PERIOD
    assert run.data.params["num_leaves"] == "7"
    assert run.data.metrics["roc_auc"] == pytest.approx(metrics["roc_auc"])
    assert run.data.metrics["baseline.logistic.roc_auc"] == 0.7
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "tables", "model_card.md"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/calibration.png"}
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert tables == {"tables/importance.csv", "tables/thresholds.json"}
    assert run.inputs is not None
    inputs = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs == {("churn-snapshots-training", "training"), ("churn-snapshots-test", "test")}
    location = client.get_experiment(run.info.experiment_id).artifact_location
    assert location.startswith((mlflow_home / "mlartifacts").resolve().as_uri())
    assert (mlflow_home / "mlflow.db").is_file()


def test_load_challenger_gives_the_native_booster(mlflow_home: Path, data):
    log(mlflow_home, data, "churn-load", GOOD)
    model, version = tracking.load_model("churn-load", "challenger", "lightgbm", home=mlflow_home)
    assert isinstance(model, lgb.Booster) and version.version == 1 and version.run_id
    np.testing.assert_array_equal(model.predict(data["test"]), data["booster"].predict(data["test"]))


def test_a_sklearn_estimator_loads_back_with_probabilities(mlflow_home: Path, data):
    estimator = LogisticRegression().fit(data["train"], data["y"][:400])
    log(mlflow_home, data, "churn-linear", GOOD, model=estimator, flavor="sklearn")
    model, _ = tracking.load_model("churn-linear", "challenger", "sklearn", home=mlflow_home)
    np.testing.assert_array_equal(model.predict_proba(data["test"]), estimator.predict_proba(data["test"]))


class TwoBoosters:
    """Stands for a multi-model object (e.g. one booster per arm): a plain class, logged with the pyfunc flavor."""

    def __init__(self, a: lgb.Booster, b: lgb.Booster):
        self.boosters = {"a": a, "b": b}

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({arm: booster.predict(X) for arm, booster in self.boosters.items()}, index=X.index)


def test_a_python_object_round_trips_through_pyfunc(mlflow_home: Path, data):
    other = lgb.train(data["params"], lgb.Dataset(data["train"], 1 - data["y"][:400]), num_boost_round=5)
    both = TwoBoosters(data["booster"], other)
    log(mlflow_home, data, "nba", GOOD, model=both, flavor="pyfunc")
    model, _ = tracking.load_model("nba", "challenger", "pyfunc", home=mlflow_home)
    assert isinstance(model, TwoBoosters)
    pd.testing.assert_frame_equal(model.predict(data["test"]), both.predict(data["test"]))


def test_a_logged_model_is_owner_only_under_an_owner_only_umask(mlflow_home: Path, data):
    """MLflow copies some files with their source's mode (a pyfunc's code, uv.lock from a clone): 0644 in spite of
    the umask, unless c360 corrects them."""
    before = os.umask(0o077)
    try:
        log(mlflow_home, data, "nba-modes", GOOD, model=TwoBoosters(data["booster"], data["booster"]), flavor="pyfunc")
    finally:
        os.umask(before)
    files = list((mlflow_home / "mlartifacts").rglob("*"))
    assert any(f.name == "pyfunc_model.py" for f in files)
    assert not [str(f) for f in files if f.stat().st_mode & 0o077]


def test_gate_promotes_the_first_then_only_a_better_challenger(mlflow_home: Path, client: MlflowClient, data):
    log(mlflow_home, data, "gate", GOOD)
    first = registry.promote(client, "gate", CHURN_GATE)
    assert first.promoted and first.champion is None and registry.champion_version(client, "gate").version == 1
    assert not registry.promote(client, "gate", CHURN_GATE).promoted  # v1 is already champion

    log(mlflow_home, data, "gate", {"roc_auc": 0.81, "ece": 0.035, "brier": 0.151})
    better = registry.promote(client, "gate", CHURN_GATE)
    assert better.promoted and (better.challenger, better.champion) == (2, 1), better
    assert registry.champion_version(client, "gate").version == 2
    assert client.get_model_version("gate", "1").aliases == []
    assert client.get_model_version("gate", "2").tags["gate.decision"] == "promoted"

    log(mlflow_home, data, "gate", {"roc_auc": 0.805, "ece": 0.030, "brier": 0.150})
    worse = registry.promote(client, "gate", CHURN_GATE)
    assert not worse.promoted and registry.champion_version(client, "gate").version == 2
    assert "0.8050" in worse.reasons[0] and "0.8100" in worse.reasons[0], worse
    assert client.get_model_version("gate", "3").tags["gate.decision"] == "refused"

    log(mlflow_home, data, "gate", {"roc_auc": 0.83, "ece": 0.050, "brier": 0.151})
    miscalibrated = registry.promote(client, "gate", CHURN_GATE)
    assert not miscalibrated.promoted, miscalibrated
    failed = [r for r in miscalibrated.reasons if r.endswith("failed")]
    assert len(failed) == 1 and failed[0].startswith("guard ece") and "0.0500" in failed[0] and "0.0350" in failed[0]

    log(mlflow_home, data, "gate", {"roc_auc": 0.90, "ece": 0.01, "brier": 0.10}, period="2024-04-01/2024-06-30")
    elsewhere = registry.promote(client, "gate", CHURN_GATE)
    assert not elsewhere.promoted and registry.champion_version(client, "gate").version == 2
    assert "2024-04-01/2024-06-30" in elsewhere.reasons[0] and PERIOD in elsewhere.reasons[0], elsewhere


def test_gate_for_a_lower_is_better_metric(mlflow_home: Path, client: MlflowClient, data):
    gate = Gate("mae", better="lower", margin=0.5, guards=(Guard("spearman", 0.01, better="higher"),))
    log(mlflow_home, data, "clv", {"mae": 10.0, "spearman": 0.60})
    registry.promote(client, "clv", gate)
    log(mlflow_home, data, "clv", {"mae": 9.2, "spearman": 0.595})
    decision = registry.promote(client, "clv", gate)
    assert decision.promoted and all(r.endswith("passed") for r in decision.reasons), decision


def test_relative_margin_is_a_share_of_the_champions_value(mlflow_home: Path, client: MlflowClient, data):
    log(mlflow_home, data, "clv-rel", {"rmse": 1000.0, "abs_total_error_pct": 3.0})
    registry.promote(client, "clv-rel", CLV_GATE)
    log(mlflow_home, data, "clv-rel", {"rmse": 995.0, "abs_total_error_pct": 1.0})  # 0.5 % better: not enough
    small = registry.promote(client, "clv-rel", CLV_GATE)
    assert not small.promoted and "+10.0000 (1.0% of the champion's) is required: failed" in small.reasons[0], small
    log(mlflow_home, data, "clv-rel", {"rmse": 980.0, "abs_total_error_pct": 5.5})  # better, but the total drifts
    drifting = registry.promote(client, "clv-rel", CLV_GATE)
    assert not drifting.promoted and drifting.reasons[1].startswith("guard abs_total_error_pct"), drifting
    log(mlflow_home, data, "clv-rel", {"rmse": 980.0, "abs_total_error_pct": 4.5})
    assert registry.promote(client, "clv-rel", CLV_GATE).promoted


def test_unknown_model_or_alias_raises_model_not_found(mlflow_home: Path, client: MlflowClient, data):
    log(mlflow_home, data, "lonely", GOOD)
    with pytest.raises(ModelNotFound, match="no registered model named 'missing'"):
        tracking.load_model("missing", "champion", "lightgbm", home=mlflow_home)
    with pytest.raises(ModelNotFound, match="no @champion alias"):
        tracking.load_model("lonely", "champion", "lightgbm", home=mlflow_home)
    with pytest.raises(ModelNotFound):
        registry.champion_version(client, "lonely")
    with pytest.raises(ModelNotFound):
        registry.promote(client, "missing", CHURN_GATE)


def test_a_second_home_gets_its_own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    tracking.configure(tmp_path / "a")
    second = tracking.configure(tmp_path / "b")
    assert str(tmp_path / "b") in second._registry_uri
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:////elsewhere/registry.db")  # the user's own choice wins
    assert tracking.configure(tmp_path / "c")._registry_uri == "sqlite:////elsewhere/registry.db"
    assert tracking.configure(tmp_path / "d")._registry_uri == "sqlite:////elsewhere/registry.db"  # and stays


def test_configure_leaves_subprocesses_the_users_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow exports the URIs it is given; a server started later for another home must not inherit them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    tracking.configure(tmp_path / "a")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    tracking.configure(tmp_path / "b")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def log_fair(mlflow_home: Path, data, name: str, auc: float, gap: float, where: str) -> Any:
    return log(mlflow_home, data, name, GOOD | {"roc_auc": auc, CALIBRATION_GAP: gap}, tags={CALIBRATION_GAP: where})


def test_gate_refuses_a_challenger_that_treats_one_group_worse_and_names_it(mlflow_home: Path,
                                                                             client: MlflowClient, data):
    log_fair(mlflow_home, data, "fair", 0.80, 0.30, "region EMEA +0.250 vs region NA -0.050")
    unfair_first = registry.promote(client, "fair", CHURN_GATE, LIMITS)
    assert not unfair_first.promoted and unfair_first.reasons == [
        "fairness: worst-group gap of calibration 0.3000 (region EMEA +0.250 vs region NA -0.050) is beyond the "
        "limit 0.1500 (fairness_max_gap): failed"], unfair_first
    with pytest.raises(ModelNotFound):
        registry.champion_version(client, "fair")

    log_fair(mlflow_home, data, "fair", 0.80, 0.04, "plan basic +0.020 vs plan pro -0.020")
    assert registry.promote(client, "fair", CHURN_GATE, LIMITS).promoted

    log_fair(mlflow_home, data, "fair", 0.82, 0.09, "age_band 60+ +0.060 vs age_band 18-29 -0.030")
    wider = registry.promote(client, "fair", CHURN_GATE, LIMITS)  # better AUC, within the limit, but much wider
    assert not wider.promoted and registry.champion_version(client, "fair").version == 2
    failed = [r for r in wider.reasons if r.endswith("failed")]
    assert failed == ["fairness: worst-group gap of calibration 0.0900 (age_band 60+ +0.060 vs age_band 18-29 "
                      "-0.030) against champion's 0.0400: wider by +0.0500, margin 0.0300 (fairness_margin): failed"]

    log_fair(mlflow_home, data, "fair", 0.82, 0.06, "plan basic +0.030 vs plan pro -0.030")
    within = registry.promote(client, "fair", CHURN_GATE, LIMITS)
    assert within.promoted and all(r.endswith("passed") for r in within.reasons), within


def test_the_limit_refuses_a_gap_measurably_beyond_it_not_the_noise_of_a_small_test(mlflow_home: Path,
                                                                                      client: MlflowClient, data):
    """A gap beyond the limit whose 95 % lower bound is within it (a small test set's noise) passes, and says so;
    one whose lower bound is beyond it too is refused."""
    low = gap_low_metric("calibration")
    where = "region EMEA +0.190 vs region NA +0.000"
    log(mlflow_home, data, "noisy", GOOD | {CALIBRATION_GAP: 0.19, low: 0.12}, tags={CALIBRATION_GAP: where})
    noisy = registry.promote(client, "noisy", CHURN_GATE, LIMITS)
    assert noisy.promoted and noisy.reasons[-1] == (
        f"fairness: worst-group gap of calibration 0.1900 ({where}) is not measurably beyond the limit 0.1500 "
        "(fairness_max_gap): its 95 % lower bound is 0.1200; no champion's gap to compare: passed"), noisy
    log(mlflow_home, data, "unfair", GOOD | {CALIBRATION_GAP: 0.30, low: 0.20}, tags={CALIBRATION_GAP: where})
    unfair = registry.promote(client, "unfair", CHURN_GATE, LIMITS)
    assert not unfair.promoted and unfair.reasons[-1] == (
        f"fairness: worst-group gap of calibration 0.3000 ({where}), at least 0.2000 (95 % lower bound), is beyond "
        "the limit 0.1500 (fairness_max_gap): failed"), unfair


def test_gate_passes_an_unmeasurable_gap_but_refuses_an_unlogged_one(mlflow_home: Path, client: MlflowClient, data):
    log(mlflow_home, data, "small", GOOD, fair=False, tags={CALIBRATION_GAP: "not measured: no two groups"})
    small = registry.promote(client, "small", CHURN_GATE, LIMITS)
    assert small.promoted and "not measured" in small.reasons[-1], small
    log(mlflow_home, data, "small", GOOD | {"roc_auc": 0.9}, fair=False)  # no gap at all
    unlogged = registry.promote(client, "small", CHURN_GATE, LIMITS)
    assert not unlogged.promoted and unlogged.reasons[-1] == (
        f"fairness: {CALIBRATION_GAP} not logged by challenger v2: failed"), unlogged


def test_rollback_walks_back_the_champions_and_records_why(mlflow_home: Path, client: MlflowClient, data):
    for auc in (0.80, 0.81, 0.82):
        log(mlflow_home, data, "roll", GOOD | {"roc_auc": auc})
        assert registry.promote(client, "roll", CHURN_GATE, LIMITS).promoted
    first = registry.rollback(client, "roll", "calibration drifted in EMEA")
    assert (first.rolled_back, first.champion) == (3, 2)
    assert registry.champion_version(client, "roll").version == 2
    tags = client.get_model_version("roll", "3").tags
    assert tags["rollback.reason"] == "calibration drifted in EMEA" and tags["rollback.to"] == "2"
    assert client.get_model_version("roll", "2").tags["rollback.from"] == "3"
    assert registry.rollback(client, "roll", "again").champion == 1
    with pytest.raises(registry.NoPreviousChampion, match="roll v1 is the first champion"):
        registry.rollback(client, "roll", "once more")
    assert registry.champion_version(client, "roll").version == 1
    with pytest.raises(ModelNotFound):
        registry.rollback(client, "missing", "no such model")
