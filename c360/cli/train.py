"""`c360 train churn|clv|nba|expansion|response|all` and `c360 promote MODEL`: models trained, tracked in MLflow,
promoted by a gate."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import typer
from rich.markup import escape

from c360.cli.ui import Json, audited, emit, fail, record_run, require_engine, stderr, table
from c360.core.settings import Settings
from c360.training.specs import MODELS

train_app = typer.Typer(help="Train models on the feature store (or on your own table) and register them in MLflow.",
                        no_args_is_help=True)


TableOption = Annotated[Path | None, typer.Option("--table", help="your own CSV or Parquet table (no feature store)")]
Excluded = Annotated[list[str] | None, typer.Option("--exclude", help="columns that are not features (repeatable)")]
Folds = Annotated[int, typer.Option(min=2, help="with --table: outer cross-validation folds")]
NameOption = Annotated[str | None, typer.Option(
    "--name", help="with --table: the model's name, registered as c360-NAME (lowercase letters, digits, dashes) "
                   "[default: the file's name]")]


@train_app.command("churn")
def train_churn(
    table_path: TableOption = None,
    label: Annotated[str | None, typer.Option(help="with --table: the churn column (Yes/No, 1/0, True/False)")] = None,
    id_column: Annotated[str | None, typer.Option("--id", help="with --table: the customer id column")] = None,
    exclude: Excluded = None,
    folds: Folds = 5,
    name: NameOption = None,
    as_json: Json = False,
) -> dict:
    """Churn within 90 days: LightGBM (calibrated) vs logistic regression, time split over the feature snapshots,
    logged to MLflow and registered as c360-churn@challenger. With --table: nested k-fold on your table, where an
    inner cross-validation chooses between logistic regression, default LightGBM and tuned LightGBM, registered as
    c360-NAME@challenger."""
    if table_path:
        if not label:
            raise fail("--table needs --label: the column saying whether the customer churned")
        from c360.training.table_churn import train_churn_table

        return _train_table("churn", table_path, name, as_json, lambda df: train_churn_table(
            df, label, id_column, folds=folds, exclude=exclude or []))
    return _run_pipeline("churn", as_json)


@train_app.command("clv")
def train_clv(
    transactions: Annotated[Path | None, typer.Option(
        help="your own transaction log, CSV or Parquet, a row per transaction (no feature store)")] = None,
    customer: Annotated[str | None, typer.Option(help="with --transactions: the customer id column")] = None,
    date: Annotated[str | None, typer.Option(help="with --transactions: the transaction date column")] = None,
    amount: Annotated[str | None, typer.Option(
        help="with --transactions: the amount column (text like '$1,234.50' is read; negative = a return)")] = None,
    calibration_end: Annotated[str | None, typer.Option(
        help="with --transactions: last day of calibration, YYYY-MM-DD; the holdout runs from the next day to the "
             "log's end (default: the log's middle day)")] = None,
    date_format: Annotated[str | None, typer.Option(
        help="with --transactions: the dates' strftime format, e.g. %d/%m/%Y (default: ISO 8601 or YYYYMMDD)")] = None,
    as_json: Json = False,
) -> dict:
    """12-month net revenue: LightGBM (Tweedie) on clv_v1 against BG/NBD x Gamma-Gamma; registered as c360-clv.
    With --transactions: BG/NBD x Gamma-Gamma beside LightGBM on your transaction log, judged on its holdout."""
    if transactions:
        if not (customer and date and amount):
            raise fail("--transactions needs --customer, --date and --amount: the columns holding each")
        return _train_clv_log(transactions, (customer, date, amount), calibration_end, date_format, as_json)
    return _run_pipeline("clv", as_json)


def _train_clv_log(path: Path, columns: tuple[str, str, str], calibration_end: str | None,
                   date_format: str | None, as_json: bool) -> dict:
    """`c360 train clv --transactions`: both models on the log's holdout, one MLflow run, an audit record (the
    file's ids are not c360's customers, so it names none)."""
    from c360.training.clv_transactions import EXPERIMENT, evaluate_log, log_result, read_log

    s, started = Settings(), time.time()
    with audited(s, "c360 train clv --transactions", []):
        try:
            log = read_log(path, *columns, date_format=date_format)
            with stderr.status(f"fitting BG/NBD x Gamma-Gamma and LightGBM on {path.name}"):
                result = evaluate_log(log, calibration_end)
        except ValueError as e:
            raise fail(str(e)) from None
        run_id = log_result(result, path.name, s.home)
    record_run(s, "train clv --transactions", started, run_id=run_id, customers=result["customers"],
               actual_total=result["actual_total"], bgnbd_total=result["bgnbd_total"],
               lightgbm_total=result["lightgbm_total"])
    left_out = ", ".join(f"{reason} {n:,}" for reason, n in result["dropped"].items() if n) or "none"
    frames = {"metrics": result["metrics"].reset_index(names="model"),
              "table": result["table"].reset_index(names="row"), "value": result["value"].reset_index(names="model")}
    titles = {"metrics": "holdout repeat purchases", "table": "mean holdout purchases by calibration repeats",
              "value": "holdout spend"}
    return emit({**result, **frames, "experiment": EXPERIMENT, "run_id": run_id}, as_json,
                f"{result['customers']:,} customers; calibration to {result['calibration_end']}, holdout to "
                f"{result['holdout_end']} ({result['horizon_weeks']:.1f} weeks); rows left out: {left_out}",
                *(table(titles[name], frame.round(3)) for name, frame in frames.items()),
                f"logged to MLflow experiment {EXPERIMENT} (run {run_id}): model card and holdout chart; "
                "no model registered")


@train_app.command("nba")
def train_nba(
    table_path: TableOption = None,
    treatment: Annotated[str | None, typer.Option(help="with --table: the column naming each customer's arm")] = None,
    control: Annotated[str | None, typer.Option(help="with --table: the arm that means no action")] = None,
    outcome: Annotated[str | None, typer.Option(help="with --table: the column measured after the action")] = None,
    id_column: Annotated[str | None, typer.Option("--id", help="the customer id column")] = None,
    cost: Annotated[list[str] | None, typer.Option(
        help="ARM=VALUE: what sending ARM to one customer costs, in the same money as --value (repeatable; arms "
             "without one cost 0). Without it every action is free and the policy sends whichever arm is expected to "
             "do best",
    )] = None,
    value: Annotated[float, typer.Option(
        help="what one unit of --outcome is worth, in the currency of --cost (e.g. 40 when a conversion brings 40 "
             "and --cost is in the same money); default 1: costs are in the outcome's own units",
    )] = 1.0,
    exclude: Excluded = None,
    folds: Folds = 5,
    name: NameOption = None,
    as_json: Json = False,
) -> dict:
    """Next best action: multi-arm uplift (LightGBM) from the company's randomized campaign waves (train on the
    earlier waves, test on the last, registered as c360-nba) — or, with --table, from your own experiment table
    (registered as c360-NAME)."""
    if not table_path:
        return _run_pipeline("nba", as_json)
    if not (treatment and control and outcome):
        raise fail("--table needs --treatment, --control and --outcome")
    if not value > 0:
        raise fail(f"--value must be positive: what one unit of the outcome is worth, got {value}")
    costs = {arm: amount / value for arm, amount in (_cost(c) for c in cost or [])}  # in outcome units
    from c360.training.table_nba import train_nba_table

    return _train_table("nba", table_path, name, as_json, lambda df: train_nba_table(
        df, treatment, control, outcome, id_column, costs=costs or None, folds=folds, exclude=exclude or []))


def _run_pipeline(kind: str, as_json: bool = False) -> dict:
    """Train one model on the feature store (a status line, a clear error for missing inputs), log the run (with the
    engine whose offline store built the training set), and show its report: the model's test metrics beside each
    baseline's."""
    from c360.training.trainers import trainers

    run = trainers()[kind]
    s, started = Settings(), time.time()
    require_engine(s)
    if not s.snapshots.exists():
        raise fail("no feature snapshots: run `c360 features build` and `c360 features apply` first")
    with stderr.status(f"training {kind} on the feature store ({s.engine} offline store; MLflow run)"):
        try:
            report = run(s)
        except (ValueError, FileNotFoundError) as e:
            raise fail(str(e)) from None
    record_run(s, f"train {kind}", started, engine=s.engine, version=report.version, run_id=report.run_id,
               **report.metrics)
    scores = pd.DataFrame({"lightgbm": report.metrics, **report.baselines}).T.reset_index(names="model")
    result = {f.name: getattr(report, f.name) for f in fields(report) if f.name != "evaluation"}
    return emit(result, as_json, table(f"{kind}, test {report.test_period} ({report.rows['test']:,} rows)", scores),
                f"registered {report.model} v{report.version} @challenger (run {report.run_id}); "
                f"`c360 promote {kind}` moves @champion if it passes the gate")


def _cost(text: str) -> tuple[str, float]:
    arm, _, value = text.rpartition("=")
    try:
        return arm, float(value)
    except ValueError:
        raise typer.BadParameter(f"--cost takes ARM=NUMBER, got {text!r}") from None


def _train_table(kind: Literal["churn", "nba"], path: Path, name: str | None, as_json: bool,
                 train: Callable[[pd.DataFrame], Any]) -> dict:
    from c360.training import tracking
    from c360.training.table_models import check_table, log_table_result, model_name
    from c360.training.tables import read_table

    s, started = Settings(), time.time()
    try:
        registered = model_name(name, path.name)
        frame = read_table(path)
        check_table(tracking.configure(s.home), registered, kind, frame)  # before training: refused, nothing done
        with stderr.status(f"training {kind} on {path.name}"):
            result = train(frame)
        version = log_table_result(result, kind=kind, table_name=path.name, home=s.home, name=name, table=frame)
    except ValueError as e:
        raise fail(str(e)) from None
    for line in result.warnings:
        stderr.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    record_run(s, f"train {kind} --table", started, table=path, model=registered, version=version.version)
    shown = {key: rows for key, rows in result.tables.items() if key in ("summary", "arms", "policy_values")}
    headline = ("roc_auc", "roc_auc_sd") if kind == "churn" else ("qini", "qini_sd")
    return emit({"model": registered, "version": int(version.version), "run_id": version.run_id, "table": path,
                 **{k: result.metrics.get(k) for k in headline}, "chosen": result.params.get("chosen_model"),
                 "candidates": result.baselines, "warnings": result.warnings, "metrics": result.metrics, **shown},
                as_json,
                *(table(key, rows) for key, rows in shown.items()),
                f"registered {registered} v{version.version} @challenger (run {version.run_id}); "
                f"`c360 promote {registered.removeprefix('c360-')}` moves @champion if it passes the gate")


@train_app.command("expansion")
def train_expansion(as_json: Json = False) -> dict:
    """Account scoring: the probability that a customer expands (plan upgrade, seat increase or add-on order) within
    90 days. LightGBM (calibrated) on expansion_v1 vs logistic regression (and the generator's truth on generated
    data), time split over the feature snapshots, registered as c360-expansion@challenger."""
    return _run_pipeline("expansion", as_json)


@train_app.command("response")
def train_response(as_json: Json = False) -> dict:
    """Campaign response propensity: the probability that a message of a channel and content topic is clicked or
    answered within 14 days, learned from the marketing sends (features as of each send, channel and topic as
    inputs). LightGBM (calibrated) vs logistic regression, tested on each channel's latest campaign wave,
    registered as c360-response@challenger."""
    return _run_pipeline("response", as_json)


@train_app.command("all")
def train_all(as_json: Json = False) -> dict:
    """Train churn, CLV, next best action, expansion and response on the feature store, each registered as
    @challenger."""
    from c360.training.trainers import trainers

    return emit({kind: _run_pipeline(kind) for kind in trainers()}, as_json)


ModelName = Annotated[str, typer.Argument(
    help="churn, clv, nba, expansion or response (feature-store models), or a table model's NAME")]


def promote(
    model: ModelName,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="move @champion back to the champion it took over from (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option(
        help="with --rollback: why, in a few words about the model (no personal data: it goes into the audit "
             "trail); recorded in MLflow, the audit trail and the run log")] = None,
    as_json: Json = False,
) -> dict:
    """Move @champion to @challenger when it beats the champion on the same test period (a table model: the same
    table and folds) by the gate's margin, regresses no guard metric and treats groups no more differently than the
    fairness settings allow; print why otherwise. Gates: `training/specs.py`, `training/table_models.py`. With
    --rollback: back to the previous champion."""
    from c360.training import tracking
    from c360.training.registry import promote as run
    from c360.training.registry import promote_table
    from c360.training.table_models import model_name

    if rollback:
        return _rollback(model, reason, as_json)
    if reason is not None:
        raise fail("--reason goes with --rollback")
    s = Settings()
    try:
        client = tracking.configure(s.home)
        if model in MODELS:
            name = MODELS[model].name
            decision = run(client, name, MODELS[model].gate)
        else:
            name = model_name(model, model)
            decision = promote_table(client, name)
    except (LookupError, ValueError) as e:
        raise fail(str(e)) from None
    return emit({"model": name, **asdict(decision)}, as_json, f"{name}: {decision}")


MAX_REASON = 200
PERSONAL = re.compile(r"@|\d{6,}")  # an e-mail address, a phone number or an id: none belongs in a reason


def _rollback(model: str, reason: str | None, as_json: bool) -> dict:
    """`c360 promote MODEL --rollback --reason TEXT`: MLflow tags, an audit record and a run log entry."""
    from c360.training import tracking
    from c360.training.registry import rollback
    from c360.training.table_models import model_name

    if not reason or not reason.strip():
        raise fail("--rollback needs --reason: why the champion is rolled back")
    if len(reason) > MAX_REASON or PERSONAL.search(reason):
        raise fail(f"--reason must be at most {MAX_REASON} characters about the model, without e-mail addresses, "
                   "phone numbers or ids: it is kept in the audit trail")
    s, started, reason = Settings(), time.time(), reason.strip()
    with audited(s, f"c360 promote {model} --rollback --reason {json.dumps(reason)}", []):
        try:
            name = MODELS[model].name if model in MODELS else model_name(model, model)
            done = rollback(tracking.configure(s.home), name, reason)
        except (LookupError, ValueError) as e:
            raise fail(str(e)) from None
    record_run(s, f"promote {model} --rollback", started, model=name, rolled_back=done.rolled_back,
               champion=done.champion, reason=done.reason)
    return emit(asdict(done), as_json, f"{name}: @champion rolled back from v{done.rolled_back} to "
                                        f"v{done.champion} ({done.reason}); the service follows at its next poll")


def champions(as_json: Json = False) -> dict:
    """Each model's @champion and @challenger (the feature store's and the table models): version and run id."""
    from c360.training import tracking
    from c360.training.table_models import table_models

    client, rows = tracking.configure(Settings().home), []
    names = [*(spec.name for spec in MODELS.values()), *sorted(table_models(client))]
    for name in names:
        for alias in (tracking.CHAMPION, tracking.CHALLENGER):
            try:
                v = tracking.version_by_alias(client, name, alias)
            except tracking.ModelNotFound:
                continue
            rows.append({"model": name, "alias": f"@{alias}", "version": int(v.version), "run_id": v.run_id})
    models = pd.DataFrame(rows)
    return emit({"models": models}, as_json, table("models in the MLflow registry", models))
