"""`c360 train clv --transactions`: reading odd transaction logs, the CDNOW acceptance, nothing personal kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit
from c360.core.settings import Settings
from c360.training import cdnow, clv_transactions, tracking

runner = CliRunner()
ODD = ("Kunden Nr", "Datum", "Betrag (EUR)")  # customer, date, amount
START, CALIBRATION_END = pd.Timestamp("2022-01-03"), "2022-12-31"


def train_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["train", "clv", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def simulated(seed: int = 3, customers: int = 400) -> pd.DataFrame:
    """Two years of a shop's purchases: each customer buys at a rate of their own and may stop after any purchase."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(customers):
        day, rate, stop = rng.integers(0, 84), rng.gamma(0.8, 0.6), rng.beta(1.0, 4.0)
        spend = rng.gamma(4, 12)
        while day < 728:
            rows.append((f"KD-{i:05d}-Z", START + pd.Timedelta(days=int(day)), round(rng.gamma(4, spend / 4), 2)))
            if rng.random() < stop:
                break
            day += 1 + int(rng.exponential(7 / rate))
    return pd.DataFrame(rows, columns=["customer", "date", "amount"])


def _euro(amount: float) -> str:
    """1234.5 → "€1.234,50": a German shop's export."""
    text = f"{abs(amount):,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")
    return f"-€{text}" if amount < 0 else f"€{text}"


def odd_log(clean: pd.DataFrame, path: Path) -> Path:
    """`clean` as a German CSV export, plus one row of each fault: no customer, an impossible date, no amount, and a
    return."""
    first = clean["customer"].iloc[0]
    faults = pd.DataFrame({ODD[0]: [None, first, first, first], ODD[1]: ["02/03/2022", "31/02/2022", "03/03/2022",
                                                                           "05/03/2023"],
                           ODD[2]: ["€10,00", "€12,00", None, "-€20,00"]})
    export = pd.DataFrame({ODD[0]: clean["customer"], ODD[1]: clean["date"].dt.strftime("%d/%m/%Y"),
                           ODD[2]: clean["amount"].map(_euro)})
    pd.concat([export, faults]).sample(frac=1.0, random_state=0).to_csv(path, index=False)
    return path


def actual_holdout_purchases(clean: pd.DataFrame, cut: pd.Timestamp) -> float:
    """Purchase days in the holdout of the customers who bought before it, counted directly."""
    known = set(clean.loc[clean["date"] < cut, "customer"])
    later = clean[(clean["date"] >= cut) & clean["customer"].isin(known)]
    return float(len(later.drop_duplicates(["customer", "date"])))


# --- reading -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("$1,234.50", 1234.5), ("€1.234,50", 1234.5), ("12,50", 12.5), ("1,234", 1234.0), ("(12.00)", -12.0),
    ("12.00-", -12.0), (" 7 EUR ", 7.0), ("3.5", 3.5), ("1.234.567", 1234567.0), ("n/a", np.nan), (None, np.nan),
])
def test_amounts_as_exports_write_them(text: str | None, value: float) -> None:
    parsed = clv_transactions.parse_amounts(pd.Series([text], dtype=object)).iloc[0]
    assert parsed == pytest.approx(value, nan_ok=True)


def test_dates_iso_yyyymmdd_offsets_and_formats() -> None:
    iso = clv_transactions.parse_dates(pd.Series(["1997-01-02", "1997-01-03T23:30:00-02:00", "soon", None]))
    assert list(iso) == [pd.Timestamp("1997-01-02"), pd.Timestamp("1997-01-04 01:30"), pd.NaT, pd.NaT]
    assert clv_transactions.parse_dates(pd.Series([19970101]))[0] == pd.Timestamp("1997-01-01")
    day_first = clv_transactions.parse_dates(pd.Series(["31/01/1997"]), "%d/%m/%Y")
    assert day_first[0] == pd.Timestamp("1997-01-31")


def test_a_wrong_date_format_is_an_error_not_dropped_rows(tmp_path: Path) -> None:
    path = odd_log(simulated(customers=30), tmp_path / "log.csv")
    with pytest.raises(ValueError, match=r"column 'Datum': .* could not be read as dates .*--date-format"):
        clv_transactions.read_log(path, *ODD)  # "13/01/2022" is no ISO date
    log = clv_transactions.read_log(path, *ODD, date_format="%d/%m/%Y")
    assert log.dropped == {"no customer": 1, "unreadable date": 1, "missing or unreadable amount": 1,
                           "returns (negative amounts)": 1}
    assert log.rows == len(log.transactions) + 4


def test_a_calibration_end_outside_the_log_is_refused(tmp_path: Path) -> None:
    log = clv_transactions.read_log(odd_log(simulated(customers=30), tmp_path / "log.csv"), *ODD, "%d/%m/%Y")
    with pytest.raises(ValueError, match="must fall inside the log"):
        clv_transactions.cutoff(log.transactions, "2030-01-01")
    with pytest.raises(ValueError, match="is not a date"):
        clv_transactions.cutoff(log.transactions, "last Tuesday")


# --- the command -------------------------------------------------------------------------------------------------


def test_an_odd_transaction_log_through_the_command(home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    clean = simulated()
    path = odd_log(clean, tmp_path / "Bestellungen 2022-23.csv")
    result = train_json("--transactions", str(path), "--customer", ODD[0], "--date", ODD[1], "--amount", ODD[2],
                        "--date-format", "%d/%m/%Y", "--calibration-end", CALIBRATION_END)
    cut = pd.Timestamp(CALIBRATION_END) + pd.Timedelta(days=1)
    assert result["actual_total"] == actual_holdout_purchases(clean, cut)
    assert result["customers"] == clean.loc[clean["date"] < cut, "customer"].nunique()
    assert sum(result["dropped"].values()) == 4
    for model in ("bgnbd", "lightgbm"):
        assert result[f"{model}_total"] > 0
        assert 0 < result[f"{model}_bin_error"] < 5 and 0 < result[f"{model}_deviance"] < 10
    logged = tracking.configure(home).get_run(result["run_id"]).data.metrics
    assert logged["bgnbd_total"] == pytest.approx(result["bgnbd_total"])
    assert logged["lightgbm_bin_error"] == pytest.approx(result["lightgbm_bin_error"])
    _nothing_personal_kept(home, clean)
    (record,) = audit.records(Settings())
    assert (record["action"], record["customers"], record["status"]) == ("c360 train clv --transactions", [], "ok")


def _nothing_personal_kept(home: Path, clean: pd.DataFrame) -> None:
    """No customer id anywhere under C360_HOME: MLflow's database and artifacts, the run log, the audit trail."""
    ids = [customer.encode() for customer in clean["customer"].unique()]
    files = [f for f in home.rglob("*") if f.is_file()]
    assert any(f.name == "mlflow.db" for f in files) and any(f.name == "model_card.md" for f in files)
    for file in files:
        content = file.read_bytes()
        assert not any(value in content for value in ids), f"{file} holds a customer id"


@pytest.mark.parametrize(("args", "message"), [
    (["--customer", "Kunde", "--date", ODD[1], "--amount", ODD[2]], "customer column 'Kunde' is not in the table"),
    (["--customer", ODD[0], "--amount", ODD[2]], "--transactions needs --customer, --date and --amount"),
    (["--customer", ODD[0], "--date", ODD[1], "--amount", ODD[1]], "must name three different columns"),
])
def test_bad_options_are_one_line_errors(home: Path, tmp_path: Path, args: list[str], message: str) -> None:
    path = odd_log(simulated(customers=30), tmp_path / "log.csv")
    result = runner.invoke(app, ["train", "clv", "--transactions", str(path), *args])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


# --- the acceptance on CDNOW ------------------------------------------------------------------------------------


@pytest.mark.skipif(not cdnow.available(), reason=f"CDNOW files not found in {cdnow.default_dir()} "
                                                  "(see shared/data/README.md)")
def test_cdnow_as_a_transaction_csv_reproduces_eval_cdnow(home: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sample = cdnow.load_sample()
    path = tmp_path / "cdnow_sample.csv"
    sample.assign(date=sample["date"].dt.strftime("%Y-%m-%d"))[["sample_id", "date", "cds", "dollars"]].to_csv(
        path, index=False)
    ours = train_json("--transactions", str(path), "--customer", "sample_id", "--date", "date",
                      "--amount", "dollars", "--calibration-end", "1997-09-30")
    published = cdnow.SPLITS[0]
    evaluated = cdnow.evaluate_split(cdnow.load_master(), sample, published)["metrics"]
    assert (ours["holdout_end"], ours["horizon_weeks"]) == ("1998-06-30", published.horizon_weeks)
    assert ours["actual_total"] == evaluated.loc["actual", "total"] == cdnow.PUBLISHED_TOTALS["actual"]
    assert ours["bgnbd_total"] == pytest.approx(evaluated.loc["BG/NBD (ours)", "total"], rel=1e-9)
    assert ours["bgnbd_bin_error"] == pytest.approx(evaluated.loc["BG/NBD (ours)", "bin_mae"], rel=1e-9)
    assert ours["bgnbd_deviance"] == pytest.approx(evaluated.loc["BG/NBD (ours)", "poisson_deviance"], rel=1e-9)
    assert round(ours["bgnbd_total"]) == cdnow.PUBLISHED_TOTALS["BG/NBD"]
    default = train_json("--transactions", str(path), "--customer", "sample_id", "--date", "date",
                         "--amount", "dollars")
    assert default["calibration_end"] == "1997-09-30"  # the log's middle day is the published split
