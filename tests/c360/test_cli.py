"""The foundation's acceptance, end to end through the `c360` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import warehouse
from c360.features import compute

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as a wide terminal shows them, so a cell is not wrapped across lines."""
    from c360.cli.ui import console

    monkeypatch.setattr(console, "width", 200)


def c360(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def c360_json(*args: str) -> Any:
    """The command's stdout with --json, parsed: it must be one JSON document and nothing else."""
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def quarantined(home: Path, out: Path) -> pd.DataFrame:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        q = con.execute('SELECT file, row_number, "column" FROM quarantine').df()
    q["file"] = q["file"].map(lambda f: str(Path(f).relative_to(out.resolve())))
    return q


def test_quarantine_is_exactly_the_injected_faults_and_reingest_adds_nothing(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "D"
    c360("generate", "--customers", "2000", "--seed", "7", "--out", str(out), "--corrupt-rate", "0.02")
    first = c360("ingest", "--source", str(out))
    faults = pd.read_csv(out / "ground_truth" / "faults.csv")
    q = quarantined(home, out)
    got = set(zip(q["file"], q["row_number"], q["column"], strict=True))
    want = set(zip(faults["file"], faults["row_number"], faults["column"], strict=True))
    assert got == want
    assert len(q) == len(want), "one reason per injected fault"
    assert f"quarantined {len(want):,}" in first

    again = c360("ingest", "--source", str(out))
    assert "total: read 0, accepted 0, quarantined 0" in again
    assert len(quarantined(home, out)) == len(want)

    status = c360("status")
    assert "crm/accounts" in status and "ingest" in status
    report = c360_json("status")
    sources = {row["table"]: row for row in report["sources"]}
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        accounts = con.execute("SELECT count(*) FROM crm_accounts").fetchone()[0]
    assert sources["crm/accounts"]["rows"] == accounts
    assert sum(row["count"] for row in report["quarantine"]) == len(want)
    assert [run["command"] for run in report["runs"]] == ["generate", "ingest", "ingest"]


def test_help_on_every_command() -> None:
    for command in ("generate", "ingest", "status", "contract", "demo"):
        assert "--help" in c360(command, "--help")


def test_status_of_an_empty_warehouse(home: Path) -> None:
    from c360.core.settings import Settings

    with warehouse.connect(Settings()):  # created, nothing ingested
        pass
    shown = c360_json("status")
    assert shown["quarantine"] == [] and {row["rows"] for row in shown["sources"]} <= {0}


def test_ingest_of_a_missing_folder_fails_clearly(home: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "--source", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "nowhere" in result.stderr and not result.stdout
    scripted = runner.invoke(app, ["ingest", "--source", str(tmp_path / "nowhere"), "--json"])
    assert scripted.exit_code == 1 and "nowhere" in scripted.stderr
    assert json.loads(scripted.stdout) == {"error": scripted.stderr.removeprefix("error: ").strip()}


def test_ingest_takes_a_mode_and_the_moment_of_the_export(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "crm" / "accounts.csv"
    source.parent.mkdir()
    source.write_text("account_id,account_name,segment,region,created_at\nA-1,Acme,smb,NA,2025-01-01\n")
    bad = runner.invoke(app, ["ingest", "--source", str(source), "--mode", "full"])
    assert bad.exit_code == 1 and "--mode must be one of snapshot, increment" in bad.stderr and not bad.stdout
    report = c360_json("ingest", "--source", str(source), "--mode", "increment", "--exported-at", "2026-01-02")
    assert (report["accepted"], report["closed"]) == (1, 0)
    source.write_text("account_id,account_name,segment,region,created_at\nA-2,Bcme,smb,NA,2025-01-01\n")
    report = c360_json("ingest", "--source", str(source), "--exported-at", "2026-02-01")  # accounts: snapshots
    assert (report["accepted"], report["closed"]) == (1, 1)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT account_id, _valid_to FROM crm_accounts__history").fetchall() == [
            ("A-1", datetime(2026, 2, 1))]


def test_contract_page_is_up_to_date() -> None:
    from c360.features.contract_doc import markdown

    page = Path(__file__).resolve().parents[2] / "docs" / "CONTRACT.md"
    assert page.read_text() == markdown(), "run `c360 contract --out docs/CONTRACT.md`"


def test_features_commands_and_profile(home: Path, resolved: tuple[Path, Path]) -> None:
    home.mkdir(parents=True)
    (home / "warehouse.duckdb").write_bytes((resolved[0] / "warehouse.duckdb").read_bytes())
    c360("features", "build", "--history-days", "56", "--every-days", "28")
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        end, waves = warehouse.data_end(con), compute.experiment_dates(con)
    built = {pd.Timestamp(p.stem.split("=")[1]) for p in (home / "features" / "customer_features").glob("*.parquet")}
    assert built == {end - pd.Timedelta(days=d) for d in (0, 28, 56)} | set(waves)  # the grid and the waves
    c360("features", "apply")
    assert "No changes to registry" in c360("features", "plan")
    c360("features", "materialize")
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        customer = con.execute("SELECT customer_id FROM identity_customers WHERE segment = 'smb' LIMIT 1").fetchone()[0]
    page = c360("profile", customer)
    for heading in ("identity", "past", "present", "health", "red flags"):
        assert heading in page
    assert "no call brief" in page  # no champion yet: said, not a failure
    unknown = runner.invoke(app, ["profile", "C99999999"])
    assert unknown.exit_code == 1 and "unknown customer" in unknown.output
    trail = c360_json("audit", "--customer", customer)["records"]
    assert [(r["action"], r["status"], r["key"].startswith("cli:")) for r in trail] == [("c360 profile", "ok", True)]
    assert c360_json("audit", "--customer", "C99999999")["records"][0]["status"] == "failed"
    _no_personal_values(home)


def _no_personal_values(home: Path) -> None:
    """The run log and the audit trail name no customer's e-mail, phone or name."""
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        values = {v for (v,) in con.execute(
            "SELECT DISTINCT unnest([email, phone, first_name || ' ' || last_name]) FROM crm_contacts").fetchall()
            if v}
    logs = (home / "runs.jsonl").read_text() + (home / "audit" / "audit.jsonl").read_text()
    assert values and not [v for v in values if v in logs]


def test_readme_documents_every_feature() -> None:
    from c360.core.definitions import FEATURES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f.name for f in FEATURES if f"`{f.name}`" not in readme]
    assert not missing, f"README lacks features: {missing}"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a folder outside the repository, with the public data folder at its default."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("C360_PUBLIC_DATA", raising=False)


def public(name: str) -> Path:
    """A data set in `shared/data` beside the repository (the default from a clone); skips when it is absent."""
    folder = Path(__file__).resolve().parents[2].parent / "shared" / "data" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (see the public data README)")
    return folder


def test_eval_cdnow_prints_both_splits(elsewhere: None) -> None:
    public("cdnow")
    out = " ".join(c360("eval", "cdnow").split())
    assert "published split" in out and "forward-honest split" in out and "r = 0.243, alpha = 4.414" in out


def test_eval_hillstrom_prints_policies_and_qini(tmp_path: Path) -> None:
    """On a quarter of the experiment (`--data`): what is printed, not the figures (tests/training/test_uplift.py)."""
    rows = pd.read_csv(public("hillstrom") / "hillstrom.csv")
    rows.iloc[::4].to_csv(tmp_path / "hillstrom.csv", index=False)
    out = " ".join(c360("eval", "hillstrom", "--data", str(tmp_path / "hillstrom.csv"), "--outcome", "conversion",
                        "--resamples", "100").split())
    assert "all Mens E-Mail" in out and "Qini AUC" in out and "uplift@30%" in out


def test_eval_febrl_without_the_id_column(elsewhere: None) -> None:
    public("febrl")
    out = " ".join(c360("eval", "febrl", "--drop-columns", "soc_sec_id").split())
    assert "dropped: soc_sec_id" in out and "threshold curve" in out


def test_public_data_defaults_to_an_absolute_folder_whatever_the_current_one(elsewhere: None) -> None:
    from c360.core.settings import Settings

    assert Settings().public_data == public("").resolve()


def test_eval_febrl_json_pipes_into_json_tool() -> None:
    """A real process and a real pipe: whatever a library prints must not reach the document."""
    from c360.core.settings import Settings

    folder = Settings().public_data / "febrl"
    if not (folder / "dataset4a.csv").exists():
        pytest.skip(f"FEBRL files not found in {folder}")
    c360 = f"{sys.executable} -m c360.cli.main eval febrl --threshold 0.9 --json"
    piped = subprocess.run(f"{c360} | {sys.executable} -m json.tool", shell=True, capture_output=True, text=True,
                           check=True)
    result = json.loads(piped.stdout)
    assert result["threshold"] == 0.9 and result["drop_columns"] == []
    assert result["precision"] == pytest.approx(result["true_positive_pairs"] / result["predicted_pairs"])
    assert result["recall"] == pytest.approx(result["true_positive_pairs"] / result["true_pairs"])
    assert 0.9 in [point["threshold"] for point in result["curve"]]


def test_resolve_explain_prints_weights_and_draws_them(home: Path, resolved: tuple[Path, Path], tmp_path: Path) -> None:
    home.mkdir(parents=True)
    (home / "warehouse.duckdb").write_bytes((resolved[0] / "warehouse.duckdb").read_bytes())
    (home / "identity").mkdir()
    (home / "identity" / "splink_model.json").write_bytes((resolved[0] / "model.json").read_bytes())
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        source, key = con.execute("SELECT source, source_key FROM identity_crosswalk WHERE method = 'model' "
                                  "LIMIT 1").fetchone()
    out = c360("resolve", "explain", source, key, "--png", str(tmp_path / "why.png"))
    assert "match weights" in out and "final match weight" in out
    assert (tmp_path / "why.png").stat().st_size > 1000
    missing = runner.invoke(app, ["resolve", "explain", "support/tickets", "NOPE"])
    assert missing.exit_code == 1 and "not in the crosswalk" in missing.output


def test_train_on_your_own_tables(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(0)
    n = 1500
    charges = rng.uniform(20, 120, n)
    contract = rng.choice(["Month-to-month", "One year", None], n)
    churn = rng.random(n) < 1 / (1 + np.exp(-(charges - 70) / 15 - (contract == "Month-to-month")))
    pd.DataFrame({"customerID": [f"{i:04d}-X" for i in range(n)], "Monthly Charges ($)": charges.round(2),
                  "Contract": contract, "Churn": np.where(churn, "Yes", "No")}).to_csv(tmp_path / "telco.csv",
                                                                                     index=False)
    out = c360("train", "churn", "--table", str(tmp_path / "telco.csv"), "--label", "Churn", "--id", "customerID",
               "--folds", "3")
    assert "registered c360-telco v1 @challenger" in out
    arm = rng.choice(["No offer", "Free month"], n)
    bought = rng.random(n) < 0.1 + 0.1 * ((arm == "Free month") & (charges > 70))
    pd.DataFrame({"charges": charges, "offer": arm, "renewed": bought.astype(int)}).to_csv(tmp_path / "exp.csv",
                                                                                           index=False)
    trained = c360_json("train", "nba", "--table", str(tmp_path / "exp.csv"), "--treatment", "offer", "--control",
                        "No offer", "--outcome", "renewed", "--cost", "Free month=0.01")
    from c360.training import tracking

    client = tracking.configure(home)
    challenger = tracking.version_by_alias(client, "c360-exp", tracking.CHALLENGER)
    assert (trained["model"], trained["version"], trained["run_id"]) == \
        ("c360-exp", int(challenger.version), challenger.run_id)
    logged = client.get_run(challenger.run_id).data.metrics
    assert trained["metrics"] == pytest.approx({k: v for k, v in logged.items() if not k.startswith("baseline.")})
    assert trained["candidates"]["t_learner_linear"]["qini"] == pytest.approx(logged["baseline.t_learner_linear.qini"])
    assert {row["arm"] for row in trained["arms"]} == {"No offer", "Free month"}
    wrong = runner.invoke(app, ["train", "churn", "--table", str(tmp_path / "telco.csv"), "--label", "Churned"])
    assert wrong.exit_code == 1 and "Churned" in wrong.output
