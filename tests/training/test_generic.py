"""Training on a data scientist's own table: churn and next best action end to end from CSV files written like real
customer exports, honest counter-tests (a shuffled label), clear errors on bad inputs, and the MLflow record."""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from c360.training import tracking
from c360.training.table_churn import train_churn_table
from c360.training.table_models import SchemaError, TableChurnModel, TableNbaModel, TableResult, log_table_result
from c360.training.table_nba import train_nba_table
from c360.training.tables import read_table, tidy

ARMS = ("No offer", "10% discount", "Free month")


def telco(n: int, seed: int, *, shuffled: bool = False) -> pd.DataFrame:
    """A Telco-style export: ids, Yes/No and 0/1 flags, a categorical with gaps, money columns with odd names,
    blank totals for brand-new customers, and churn driven by contract, tenure, charges and an interaction."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n)
    contract = rng.choice(["Month-to-month", "One year", "Two year"], n, p=[0.55, 0.25, 0.2]).astype(object)
    monthly = rng.uniform(18, 120, n).round(2)
    fiber = rng.random(n) < 0.45
    senior = (rng.random(n) < 0.16).astype(int)
    logit = (-1.2 + 1.6 * (contract == "Month-to-month") - 0.045 * tenure + 0.012 * (monthly - 60)
             + 0.9 * (fiber & (tenure < 12)) + 0.4 * senior)
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    if shuffled:
        churned = rng.permutation(churned)
    total = (monthly * tenure).round(2).astype(object)
    total[tenure == 0] = " "
    contract[rng.random(n) < 0.06] = None
    return pd.DataFrame({
        "customerID": [f"{i:04d}-{code}" for i, code in enumerate(rng.integers(10000, 99999, n))],
        "SeniorCitizen": senior,
        "Partner": rng.choice(["Yes", "No"], n),
        "tenure": tenure,
        "InternetService": np.where(fiber, "Fiber optic", "DSL"),
        "Contract": contract,
        "Monthly Charges ($)": monthly,
        "Total Charges": total,
        "Country": "United States",
        "Churn": np.where(churned, "Yes", "No"),
    })


def offers(n: int, seed: int) -> pd.DataFrame:
    """A randomized retention test: a free month wins back short-tenure customers, a discount big spenders."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 60, n)
    spend = rng.gamma(2.0, 40.0, n).round(2)
    plan = rng.choice(["Basic", "Plus", "Pro"], n).astype(object)
    plan[rng.random(n) < 0.05] = None
    arm = rng.choice(np.array(ARMS), n)
    p = 0.35 + 0.1 * (tenure > 30) + np.where((arm == "Free month") & (tenure < 15), 0.3, 0.0)
    p += np.where((arm == "10% discount") & (spend > 100), 0.25, 0.0)
    renewed = (rng.random(n) < p).astype(int)
    return pd.DataFrame({
        "Customer ID": [f"C{i:05d}" for i in range(n)],
        "Tenure (months)": tenure,
        "Monthly Spend": spend,
        "Plan": plan,
        "Offer": arm,
        "Renewed": renewed,
        "Spend next 30d": (renewed * spend * rng.uniform(0.8, 1.2, n)).round(2),
    })


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    telco(2000, 0).to_csv(out / "telco.csv", index=False)
    offers(4500, 1).to_csv(out / "offers.csv", index=False)
    return out


TRIALS = 3  # the tuned LightGBM's budget: small, to keep the tests fast


@pytest.fixture(scope="module")
def churn_result(folder: Path) -> TableResult:
    return train_churn_table(read_table(folder / "telco.csv"), "Churn", id_column="customerID", trials=TRIALS)


@pytest.fixture(scope="module")
def nba_result(folder: Path) -> TableResult:
    table = read_table(folder / "offers.csv")
    return train_nba_table(
        table, "Offer", "No offer", "Renewed", id_column="Customer ID", costs={"Free month": 0.05},
        exclude=["Spend next 30d"],
    )



# ---------------------------------------------------------------- reading


def test_read_table_csv_and_parquet_give_the_same_tidy_frame(folder: Path, tmp_path: Path):
    csv = read_table(folder / "telco.csv")
    assert csv.shape == (2000, 10)
    assert csv["Total Charges"].isna().sum() == (csv["tenure"] == 0).sum() > 0  # " " is missing, not a level
    csv.to_parquet(tmp_path / "telco.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "telco.parquet"), csv)


def test_read_table_names_the_file_and_the_problem(tmp_path: Path):
    with pytest.raises(ValueError, match=r"nowhere\.csv: no such file"):
        read_table(tmp_path / "nowhere.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("customerID,Churn\n")
    with pytest.raises(ValueError, match=r"header\.csv: the table has no rows"):
        read_table(tmp_path / "header.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"broken\.parquet: could not be read as Parquet"):
        read_table(tmp_path / "broken.parquet")


# ---------------------------------------------------------------- churn


def test_churn_end_to_end_on_a_telco_export(churn_result: TableResult, folder: Path):
    r = churn_result
    assert r.metrics["roc_auc"] > 0.72 and r.metrics["roc_auc_sd"] < 0.06, r.metrics
    assert 0 < r.metrics["ece"] < 0.08 and 0 < r.metrics["brier"] < 0.2
    assert set(r.baselines) == {"logistic", "lightgbm", "lightgbm_tuned", "blend"}
    assert r.baselines["logistic"]["roc_auc"] > 0.7
    assert r.metrics["roc_auc_gain_vs_baseline"] == pytest.approx(
        r.metrics["roc_auc"] - r.baselines["logistic"]["roc_auc"])
    assert all(isinstance(v, float) and np.isfinite(v) for v in r.metrics.values())

    folds = r.tables["folds"]
    chosen = folds.query("model == 'chosen'")
    assert len(folds) == 5 * 5 and chosen["rows"].sum() == 2000
    assert set(chosen["candidate"]) == {"blend"}
    assert {"roc_auc", "pr_auc", "brier", "ece", "lift_at_10", "inner_roc_auc"} <= set(folds.columns)
    assert chosen["roc_auc"].mean() == pytest.approx(r.metrics["roc_auc"])
    for fold in chosen.itertuples():  # the chosen model's outer figures are its candidate's on that fold
        same = folds.query(f"fold == {fold.fold} and model == '{fold.candidate}'")
        assert same["roc_auc"].item() == pytest.approx(fold.roc_auc)
    assert list(r.tables["summary"]["model"]) == ["chosen", "logistic", "lightgbm", "lightgbm_tuned", "blend"]
    assert r.tables["importance"]["feature"].iloc[0] in {"tenure", "Contract"}

    assert set(r.figures) == {"roc", "calibration", "shap_summary"}
    assert all(isinstance(f, Figure) for f in r.figures.values())
    legend = [t.get_text() for t in r.figures["roc"].axes[0].get_legend().get_texts()]
    assert any("chosen" in t for t in legend) and any("logistic" in t for t in legend)

    # id, label and the constant column are no features; blank totals parse as numbers
    assert list(r.input_example.columns) == [
        "SeniorCitizen", "Partner", "tenure", "InternetService", "Contract", "Monthly Charges ($)", "Total Charges"
    ]
    spec = r.model.churn.spec
    assert dict(zip(spec.columns, spec.kinds, strict=True))["Total Charges"] == "numeric"
    assert r.params["dropped_columns"] == "customerID, Country" and r.params["rows"] == 2000
    assert r.params["chosen_model"] in r.baselines

    card = r.model_card
    for text in ("## Data", "2,000 rows", "churn rate", "## Metrics (5-fold", "logistic regression", "## Features",
                 "Monthly Charges ($)", "no time split", "optimistic", "Chosen:"):
        assert text in card, text
    assert "leakage" not in card and not r.warnings

    scored = r.model.predict(read_table(folder / "telco.csv").head(20))
    assert list(scored.columns[:3]) == ["customerID", "churn_probability", "reason_1"]
    assert scored["churn_probability"].between(0, 1).all() and scored["churn_probability"].nunique() > 1


def test_a_shuffled_label_scores_near_chance():
    r = train_churn_table(telco(2000, 2, shuffled=True), "Churn", trials=TRIALS)
    assert abs(r.metrics["roc_auc"] - 0.5) < 0.06, r.metrics
    assert all(abs(c["roc_auc"] - 0.5) < 0.06 for c in r.baselines.values()), r.baselines
    assert "customerID (identifier-like" in r.model_card.replace("`", "")  # no id named: detected and dropped
    assert "dropped column 'customerID': identifier-like (distinct text)" in r.warnings


def test_a_leaking_column_is_called_out_in_the_card():
    table = telco(1000, 3)
    table["Churn Reason"] = np.where(table["Churn"] == "Yes", "Competitor offer", None)
    r = train_churn_table(table, "Churn", id_column="customerID", folds=3, trials=TRIALS)
    assert "possible leakage: 'Churn Reason' alone separates the label" in r.model_card
    assert [w for w in r.warnings if w.startswith("possible leakage: 'Churn Reason'")]
    clean = train_churn_table(table, "Churn", id_column="customerID", folds=3, exclude=["Churn Reason"], trials=1)
    assert "leakage" not in clean.model_card and "`Churn Reason` (excluded)" in clean.model_card
    assert not clean.warnings


def test_churn_rejects_bad_inputs_with_clear_errors():
    table = telco(300, 4)
    with pytest.raises(ValueError, match=r"label column 'churn' is not in the table\. Did you mean 'Churn'"):
        train_churn_table(table, "churn")
    with pytest.raises(ValueError, match=r"id column 'id' is not in the table"):
        train_churn_table(table, "Churn", id_column="id")
    statuses = table.assign(Churn=np.random.default_rng(0).choice(["churned", "active", "paused"], len(table)))
    with pytest.raises(ValueError, match=r"must be binary: Yes/No, True/False or 1/0.*'churned' \(\d+\)") as error:
        train_churn_table(statuses, "Churn")
    assert "'active'" in str(error.value) and "'paused'" in str(error.value)
    with pytest.raises(ValueError, match=r"must be binary.*found values 0 \(100\), 1 \(100\), 2 \(100\)"):
        train_churn_table(table.assign(Churn=[0, 1, 2] * 100), "Churn")
    with pytest.raises(ValueError, match="single value"):
        train_churn_table(table.assign(Churn="No"), "Churn")
    with pytest.raises(ValueError, match=r"only 3 rows of its rarer value; 5-fold validation, with 3-fold model "
                                         r"selection inside, needs at least 25"):
        train_churn_table(table.assign(Churn=["Yes"] * 3 + ["No"] * 297), "Churn")
    with pytest.raises(ValueError, match="columns must all differ"):
        train_churn_table(table, "Churn", id_column="Churn")
    with pytest.raises(ValueError, match="no feature columns left"):
        train_churn_table(table[["customerID", "Country", "Churn"]], "Churn", id_column="customerID")
    with pytest.raises(ValueError, match="folds must be at least 2"):
        train_churn_table(table, "Churn", folds=1)


# ---------------------------------------------------------------- next best action


def test_nba_end_to_end_on_a_three_arm_test(nba_result: TableResult, folder: Path):
    r = nba_result
    assert r.params["arms"] == "No offer, 10% discount, Free month" and r.params["binary_outcome"] is True
    assert r.metrics["qini_auc.Free_month"] > 0.03, r.metrics  # short-tenure customers respond: ranking finds them
    assert r.metrics["gain_vs.no_action.low"] > 0  # the learned policy beats doing nothing, paired CI
    assert r.metrics["gain_vs.random"] > 0
    assert r.metrics["policy_value"] > r.metrics["value.all.Free_month"]
    assert all(np.isfinite(v) for v in r.metrics.values())
    assert 0 < r.metrics["policy_share.Free_month"] < 1

    values = r.tables["policy_values"].set_index("policy")
    assert list(values.index) == ["policy", "all No offer (no action)", "all 10% discount", "all Free month", "random"]
    arms = r.tables["arms"].set_index("arm")
    assert arms["rows"].sum() == 4500 and arms.at["Free month", "cost"] == 0.05
    assert arms["policy_share"].sum() == pytest.approx(1.0)
    assert len(r.tables["qini_folds"]) == 2 * 5  # two arms vs control, five folds
    per_fold = r.tables["qini_folds"].groupby("fold")["qini_auc"].mean()
    assert r.metrics["qini"] == pytest.approx(per_fold.mean()) and r.metrics["qini_sd"] == pytest.approx(per_fold.std())
    assert set(r.baselines) == {"t_learner_lightgbm", "t_learner_linear"}
    assert r.baselines["t_learner_linear"]["qini_sd"] > 0 and len(r.tables["baseline_qini_folds"]) == 2 * 5
    assert not r.warnings  # a cost given, no post-treatment column, no leak
    assert set(r.figures) == {"qini_curves", "policy_values"}
    assert list(r.input_example.columns) == ["Tenure (months)", "Monthly Spend", "Plan"]

    card = r.model_card
    for text in ("## Data", "control arm `No offer`", "10% discount", "net of costs", "paired-bootstrap",
                 "assigned at random", "`Spend next 30d` (excluded)", "`Customer ID` (id column)",
                 f"t learner linear {r.baselines['t_learner_linear']['qini']:.3f} ±"):
        assert text in card, text
    assert "Imbalance" not in card and "Possible leakage" not in card

    scored = r.model.predict(read_table(folder / "offers.csv").head(50))
    assert list(scored.columns) == ["recommended", "expected_gain", *[f"expected: {arm}" for arm in ARMS]]
    assert set(scored["recommended"]) <= set(ARMS)
    net = scored.filter(like="expected: ").set_axis(list(ARMS), axis=1) - pd.Series(r.model.costs).reindex(
        list(ARMS), fill_value=0.0)  # the gain is net of costs
    best = net.to_numpy()[np.arange(len(scored)), [ARMS.index(a) for a in scored["recommended"]]]
    np.testing.assert_allclose(scored["expected_gain"], best - net[ARMS[0]], atol=1e-12)


def test_nba_on_an_amount_with_numeric_arms_and_a_post_treatment_column():
    table = offers(1500, 5)
    table["Offer"] = table["Offer"].map({arm: i for i, arm in enumerate(ARMS)})  # arms exported as 0/1/2
    r = train_nba_table(table, "Offer", "0", "Spend next 30d")  # the CLI passes the control as text
    assert r.params["binary_outcome"] is False and r.params["arms"] == "0, 1, 2"
    assert r.metrics["policy_value"] > 0 and "gain_vs.no_action" in r.metrics
    # "Renewed" was recorded after the offer: it gives the spend away, and the balance table shows it moves by arm
    assert "Possible leakage: 'Renewed'" in r.model_card
    balance = r.tables["balance"].set_index(["arm", "column"])["smd"]
    assert balance.abs().idxmax()[1] == "Renewed"
    heads = [w.partition(":")[0] for w in r.warnings]
    assert heads == ["dropped column 'Customer ID'", "possible leakage", "no --cost given"], r.warnings
    assert r.warnings[1].startswith("possible leakage: 'Renewed'")


def test_a_column_set_by_the_arm_is_called_post_treatment_on_the_console():
    table = offers(1500, 7)
    opened = (table["Offer"] != "No offer") & (np.random.default_rng(7).random(len(table)) < 0.7)
    table["E-mails opened"] = opened.astype(int)  # recorded after the assignment: only the offers send e-mails
    r = train_nba_table(table, "Offer", "No offer", "Renewed", id_column="Customer ID", exclude=["Spend next 30d"])
    assert [w for w in r.warnings if w.startswith("possible post-treatment column 'E-mails opened'")], r.warnings
    assert not [w for w in r.warnings if "'Tenure (months)'" in w or "'Monthly Spend'" in w]


def test_nba_rejects_bad_inputs_with_clear_errors():
    table = offers(600, 6)
    with pytest.raises(ValueError, match=r"control 'Control' is not a value of 'Offer'; its values are "
                                         r"\['10% discount', 'Free month', 'No offer'\]"):
        train_nba_table(table, "Offer", "Control", "Renewed")
    with pytest.raises(ValueError, match=r"treatment column 'offer' is not in the table\. Did you mean 'Offer'"):
        train_nba_table(table, "offer", "No offer", "Renewed")
    with pytest.raises(ValueError, match=r"costs given for \['Gift'\]"):
        train_nba_table(table, "Offer", "No offer", "Renewed", costs={"Gift": 1.0})
    rare = table.assign(Offer=np.where(np.arange(len(table)) < 10, "Call", table["Offer"]))
    with pytest.raises(ValueError, match=r"at least 50 rows.*'Call': 10"):
        train_nba_table(rare, "Offer", "No offer", "Renewed")
    with pytest.raises(ValueError, match=r"outcome column 'Plan' must be numeric.*'Basic'"):
        train_nba_table(table, "Offer", "No offer", "Plan")
    with pytest.raises(ValueError, match="single arm"):
        train_nba_table(table.assign(Offer="No offer"), "Offer", "No offer", "Renewed")


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def registered(churn_result: TableResult, nba_result: TableResult, mlflow_home: Path,
               folder: Path) -> dict[str, ModelVersion]:
    return {
        "churn": log_table_result(churn_result, kind="churn", table_name="telco.csv", home=mlflow_home,
                                  table=read_table(folder / "telco.csv")),
        "nba": log_table_result(nba_result, kind="nba", table_name="offers.csv", home=mlflow_home,
                                table=read_table(folder / "offers.csv")),
    }


def test_log_table_result_registers_challengers_that_load_back(
    churn_result: TableResult, nba_result: TableResult, registered: dict[str, ModelVersion], mlflow_home: Path,
    folder: Path,
):
    churn_version, nba_version = registered["churn"], registered["nba"]
    client: MlflowClient = tracking.configure(mlflow_home)
    for version, name in ((churn_version, "c360-telco"), (nba_version, "c360-offers")):
        assert version.name == name and version.aliases == ["challenger"] and version.run_id
        assert version.tags["source_table"] in {"telco.csv", "offers.csv"} and "-fold on" in version.tags["test_period"]
        assert "Source table:" in version.description

    run = client.get_run(churn_version.run_id)
    assert run.data.metrics["roc_auc"] == pytest.approx(churn_result.metrics["roc_auc"])
    assert "baseline.logistic.roc_auc" in run.data.metrics
    assert run.data.params["label"] == "Churn"
    assert client.get_experiment(run.info.experiment_id).name == "c360-telco"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/roc.png", "plots/calibration.png", "plots/shap_summary.png"}
    assert "qini_auc.Free_month" in client.get_run(nba_version.run_id).data.metrics

    model, _ = tracking.load_model("c360-telco", "challenger", "pyfunc", home=mlflow_home)
    assert isinstance(model, TableChurnModel)
    sample = read_table(folder / "telco.csv").head(30)
    pd.testing.assert_frame_equal(model.predict(sample), churn_result.model.predict(sample))
    nba, _ = tracking.load_model("c360-offers", "challenger", "pyfunc", home=mlflow_home)
    assert isinstance(nba, TableNbaModel)
    example = nba_result.input_example
    pd.testing.assert_frame_equal(nba.predict(example), nba_result.model.predict(example))

    with pytest.raises(ValueError, match="must hold a TableNbaModel"):
        log_table_result(churn_result, kind="nba", table_name="telco.csv", home=mlflow_home)


def test_the_pyfunc_scores_the_csv_as_pandas_reads_it(
    registered: dict[str, ModelVersion], nba_result: TableResult, mlflow_home: Path, folder: Path
):
    tracking.configure(mlflow_home)
    raw = pd.read_csv(folder / "offers.csv")
    assert raw["Tenure (months)"].dtype == "int64"
    scores = mlflow.pyfunc.load_model("models:/c360-offers@challenger").predict(raw)
    expected = nba_result.model.predict(read_table(folder / "offers.csv"))
    pd.testing.assert_frame_equal(scores, expected)


def test_the_pyfunc_takes_the_users_column_types_and_names_a_wrong_one(
    registered, nba_result: TableResult, mlflow_home: Path, folder: Path
):
    tracking.configure(mlflow_home)
    raw = pd.read_csv(folder / "offers.csv")
    gaps = raw.assign(**{"Tenure (months)": raw["Tenure (months)"].where(raw.index % 2 == 0)})  # int → float
    model = mlflow.pyfunc.load_model("models:/c360-offers@challenger")
    pd.testing.assert_frame_equal(model.predict(gaps), nba_result.model.predict(tidy(gaps)))
    with pytest.raises(SchemaError, match=r"column 'Tenure \(months\)' must hold numbers"):
        model.predict(raw.assign(**{"Tenure (months)": "long"}))
    with pytest.raises(MlflowException, match=r"missing inputs \['Tenure \(months\)'\]"):  # the signature's check
        model.predict(raw.drop(columns="Tenure (months)"))


def test_the_saved_model_names_no_c360_module(registered: dict[str, ModelVersion], tmp_path: Path):
    modules: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            modules.add(module)
            return super().find_class(module, name)

    for version in registered.values():
        folder = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / version.name)))
        with (folder / "artifacts" / "model" / "model.pkl").open("rb") as file:
            Recording(file).load()
    assert modules and not {m for m in modules if m.partition(".")[0] in {"c360", "training"}}
