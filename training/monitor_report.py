"""`c360 monitor`: one report over a home's latest data, its checks each ok, watch or act.

The checks (`CHECKS`), each a function of the home returning one `Check` with its status, a one-line summary, key
figures (numbers, the gauges of `/metrics`) and a table:

* feature drift of every model input (the feature services' features): the latest snapshot against the previous
  one (or, when that is over `PERIOD` older or missing, the features built as of a month before), and against the
  champion's data window (the snapshots up to its test period), PSI per feature over the customers subscribed at
  each date, weighted by the feature's share of the latest scoring run's reasons
  (`monitoring.feature_drift`). The window ends a horizon or more before the latest data by construction, and
  spans months: over that time the customer base ages (those left have grown their seats and plans), which would
  show as drift of revenue and usage in every home. So each month of the window is age-matched to the latest
  snapshot (`monitoring.age_matched`: weighted to the latest's mix of tenure bands), the latest is read against
  the month it is nearest to (`monitoring.nearest_drift`: a pool of months with and without a discount campaign
  is like no month), and that comparison says "watch" at most: acting is left to the previous-snapshot drift, the
  score drift and realized performance;
* score drift between the two latest complete scoring runs, over the customers subscribed at the later one's date
  (`monitoring.score_drift`), by PSI and the relative change of the mean score (`monitoring.score_status`);
* data quality: each source table's quarantine rate in its latest batch (`ingest_log`), and the change of each
  feature's null rate from the previous snapshot;
* realized performance: every scoring run whose horizon has passed, joined with what happened (`training.labels`,
  the same definitions training uses): churn AUC, ECE and calibration curve per run; CLV predicted against
  realized by decile; else how many days are still to go;
* the next best action's realized value: each campaign whose outcome window has passed, its readout's gain over
  the holdout (`training.readout`, the same figures as `c360 campaign readout`), judged by `campaign_status`;
* online against offline: a sample of the latest snapshot's customers, read back from the online store, leaving
  out (and counting) those the live update recomputed since the snapshot.

`run(s)` writes `report.json` and `report.html` under `C360_HOME/monitor/<time>/`, points `monitor/latest` at it,
and logs the folder as the artifacts of a run of the `c360-monitoring` MLflow experiment. The report holds
figures per feature, model, table and run, never a customer's id or value.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c360.core import warehouse
from c360.core.definitions import FEATURES
from c360.core.settings import Settings
from c360.feature_repo.services import MODELS as SERVICES
from c360.feature_repo.services import NOT_FOR_MODELS
from c360.features import campaigns, compute, live, store
from c360.training import labels, monitoring, readout, tracking
from c360.training.churn import metrics as churn_metrics
from c360.training.specs import CHURN, CLV

EXPERIMENT = "c360-monitoring"
STATUS_VALUE = {"ok": 0, "watch": 1, "act": 2}  # a status as a gauge
SAMPLE = 200  # customers read back from the online store
QUARANTINE_WATCH, QUARANTINE_ACT = 0.05, 0.20  # share of a batch's rows quarantined
NULLS_WATCH, NULLS_ACT = 0.05, 0.20  # rise of a feature's null share since the previous snapshot
AUC_WATCH, AUC_ACT = 0.03, 0.07  # realized AUC below the champion's test AUC by this much (or 2 and 3 SE of the gap)
ECE_WATCH, ECE_ACT = 0.05, 0.10
CLV_WATCH, CLV_ACT = 0.15, 0.30  # |mean predicted / mean realized - 1|
ONLINE_WATCH, ONLINE_ACT = 0.001, 0.01  # share of sampled customers whose online features differ
PERIOD, MONTH = pd.Timedelta(days=35), pd.Timedelta(days=28)  # the previous-period drift check's reference


@dataclass
class Check:
    name: str  # identifier: feature_drift_previous, score_drift, realized_churn, ...
    title: str
    status: str  # ok | watch | act
    summary: str
    figures: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    created: str
    checks: list[Check]
    folder: Path | None = None
    run_id: str | None = None

    @property
    def worst(self) -> str:
        """"ok", "watch" or "act": the worst status of any check."""
        return monitoring.worst(c.status for c in self.checks)

    @property
    def acting(self) -> list[str]:
        return [c.name for c in self.checks if c.status == "act"]

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "status": self.worst, "folder": str(self.folder) if self.folder else None,
                "mlflow_run_id": self.run_id, "checks": [_plain(asdict(c)) for c in self.checks]}


def folder(s: Settings) -> Path:
    return s.home / "monitor"


def run(s: Settings, out: Path | None = None, log: bool = True) -> Report:
    """Every check over the home `s`; the report written to `out` (default `C360_HOME/monitor/<time>/`, then
    `monitor/latest`) and, with `log`, to MLflow."""
    now = pd.Timestamp.now(tz="UTC").tz_convert(None).floor("s")
    report = Report(now.isoformat(), [check for make in CHECKS for check in make(s)])
    report.folder = out or folder(s) / f"{now:%Y%m%dT%H%M%S}"
    write(report, report.folder)
    if out is None:
        _point_latest(folder(s), report.folder)
    if log:
        report.run_id = tracking.log_folder_run(
            experiment=EXPERIMENT, run_name=f"monitor {now:%Y-%m-%d %H:%M}", folder=report.folder,
            metrics=gauges(report.to_dict()), tags={"status": report.worst}, home=s.home)
        write(report, report.folder)
    return report


def write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = report.to_dict()
    (out / "report.json").write_text(json.dumps(document, indent=2))
    (out / "report.html").write_text(html(document))


def _point_latest(root: Path, target: Path) -> None:
    link = root / "latest"
    tmp = root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    tmp.replace(link)  # atomic: a reader sees the old report or the new one


def latest(s: Settings) -> dict[str, Any] | None:
    """The latest report's JSON document, or None before the first."""
    path = folder(s) / "latest" / "report.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gauges(document: dict[str, Any]) -> dict[str, float]:
    """The report's figures as flat gauges: `<check>_status` (0 ok, 1 watch, 2 act) and `<check>_<figure>`."""
    values = {"status": float(STATUS_VALUE[document["status"]])}
    for check in document["checks"]:
        values[f"{check['name']}_status"] = float(STATUS_VALUE[check["status"]])
        values |= {f"{check['name']}_{k}": float(v) for k, v in check["figures"].items()
                   if isinstance(v, int | float) and math.isfinite(v)}
    return values


# --- feature drift -------------------------------------------------------------------------------------------


def model_inputs() -> list[str]:
    """Every feature some model's feature service reads."""
    sections = {s for kept in SERVICES.values() for s in kept}
    return [f.name for f in FEATURES if f.section in sections and f.name not in NOT_FOR_MODELS]


def _population(snapshot: pd.DataFrame) -> pd.DataFrame:
    """The customers subscribed at the snapshot's date (those the models predict for), when it says."""
    return snapshot[snapshot["subscribed"].astype(bool)] if "subscribed" in snapshot else snapshot


def _drift_check(name: str, title: str, table: pd.DataFrame, against: str, cap: str = "act") -> Check:
    status = min(monitoring.worst(table["status"]), cap, key=monitoring.STATUSES.index)
    flagged = table[table["status"] != "ok"].sort_values("psi", ascending=False)
    quiet = table[(table["status"] == "ok") & (table["reading"] != "ok")]
    summary = (f"against {against}: " + (", ".join(f"{r.feature} {r.status} (PSI {r.psi:.2f})"
                                                   for r in flagged.itertuples()) or "no feature drifted")
               + (f"; {len(quiet)} drifted that move no score ({', '.join(quiet['feature'])})" if len(quiet) else "")
               + f"; {int((table['compared'] == 'skipped').sum())} skipped")
    figures = {"max_psi": float(table["psi"].max()), "features_watch": int((table["status"] == "watch").sum()),
               "features_act": int((table["status"] == "act").sum())}
    return Check(name, title, status, summary, figures, table.to_dict("records"))


def feature_drift(s: Settings) -> list[Check]:
    dates = store.snapshot_dates(s)
    if not dates:
        return [Check("feature_drift_previous", "Feature drift", "ok", "no feature snapshots yet")]
    latest_snapshot = store.read_snapshot(s, dates[-1])
    runs = scoring_runs(s)
    weights = monitoring.explanation_weights(read_scores(runs[-1][0], reasons=True)) if runs else None
    before, against = _previous(s, dates)
    after = _population(latest_snapshot)
    table = monitoring.feature_drift(_population(before), after, model_inputs(), weights)
    checks = [_drift_check("feature_drift_previous", "Feature drift: latest snapshot against a month before",
                           table, against)]
    window = _champion_window(s, dates)
    if window:
        months = {f"{d:%Y-%m-%d}": _population(store.read_snapshot(s, d)) for d in window}
        table = monitoring.nearest_drift(months, after, model_inputs(), weights)
        checks.append(_drift_check("feature_drift_training", "Feature drift: latest snapshot against the champion's "
                                   "data window (watch at most)", table,
                                   f"the nearest month of {window[0]:%Y-%m-%d} to {window[-1]:%Y-%m-%d} "
                                   "(age-matched)", cap="watch"))
    return checks


def _previous(s: Settings, dates: list[pd.Timestamp]) -> tuple[pd.DataFrame, str]:
    """The reference of the previous-period check: the previous snapshot when it is at most `PERIOD` older, else
    the features built as of `MONTH` before the latest (PSI's thresholds read a period's change: between snapshots
    months apart, trends such as prices would act every time)."""
    if len(dates) > 1 and dates[-1] - dates[-2] <= PERIOD:
        return store.read_snapshot(s, dates[-2]), f"{dates[-2]:%Y-%m-%d}"
    day = dates[-1] - MONTH
    with warehouse.connect(s, read_only=True) as con:
        return compute.build(con, day), f"{day:%Y-%m-%d} (built: no snapshot within {PERIOD.days} days)"


def _champion_window(s: Settings, dates: list[pd.Timestamp]) -> list[pd.Timestamp]:
    """The snapshots the churn champion could have learned from: up to its test period (none without one)."""
    try:
        client = tracking.configure(s.home)
        version = tracking.version_by_alias(client, CHURN.name, tracking.CHAMPION)
        test_period = pd.Timestamp(client.get_run(str(version.run_id)).data.tags["test_period"])
    except Exception:  # no registry, no champion, or a run without its tag: the check is left out
        return []
    return [d for d in dates if d <= test_period and d < dates[-1]]


# --- score drift ---------------------------------------------------------------------------------------------


def scoring_runs(s: Settings) -> list[tuple[Path, pd.Timestamp, pd.Timestamp]]:
    """The complete scoring runs of every customer (not a subset): (folder, as_of, scored_at), oldest first."""
    found = []
    for done in s.scores.glob("as_of=*/run=*/_SUCCESS.json"):
        run_dir = done.parent
        if ".subset-" in run_dir.name:
            continue
        manifest = json.loads((run_dir / "_run.json").read_text())
        found.append((run_dir, pd.Timestamp(manifest["as_of"]), pd.Timestamp(manifest["scored_at"])))
    return sorted(found, key=lambda r: r[2])


def read_scores(run_dir: Path, reasons: bool = False) -> pd.DataFrame:
    columns = ["customer_id", "model", "version", "score", "label", *(["reasons"] if reasons else [])]
    return pd.concat([pd.read_parquet(p, columns=columns) for p in sorted(run_dir.glob("part-*.parquet"))],
                     ignore_index=True)


def score_drift(s: Settings) -> list[Check]:
    runs = scoring_runs(s)
    if len(runs) < 2:
        return [Check("score_drift", "Score drift", "ok", f"{len(runs)} scoring run(s): nothing to compare yet")]
    (before, _, at_before), (after, as_of, at_after) = runs[-2:]
    population = _population(store.read_snapshot(s, as_of))["customer_id"]
    old, new = (read_scores(run_dir) for run_dir in (before, after))
    table = monitoring.score_drift(old[old["customer_id"].isin(population)],
                                   new[new["customer_id"].isin(population)]).reset_index()
    table.columns = [c.replace(" ", "_") for c in table.columns]
    table["status"] = [monitoring.score_status(p, d) for p, d in zip(table["psi"], table["mean_change"],
                                                                        strict=True)]
    summary = f"run of {at_after:%Y-%m-%d %H:%M} against {at_before:%Y-%m-%d %H:%M}: " + ", ".join(
        f"{r.model} {r.status} (PSI {r.psi:.2f}, mean {r.mean_change:+.1%})" for r in table.itertuples())
    figures = {f"{measure}_{r.model}": float(getattr(r, measure)) for r in table.itertuples()
               for measure in ("psi", "mean_change", "smd")}
    return [Check("score_drift", "Score drift between consecutive scoring runs", monitoring.worst(table["status"]),
                  summary, figures, table.to_dict("records"))]


# --- data quality --------------------------------------------------------------------------------------------


def data_quality(s: Settings) -> list[Check]:
    rows: list[dict[str, Any]] = []
    if s.warehouse.exists():
        with warehouse.connect(s, read_only=True) as con:
            if warehouse.has_table(con, "ingest_log"):
                log = con.execute("SELECT table_id, file, rows_read, rows_quarantined, ingested_at "
                                  "FROM ingest_log").df()
                rates = monitoring.quarantine_rates(log)
                rates["file"] = rates["file"].map(lambda f: Path(str(f)).name)
                rates["status"] = [monitoring.status(r, QUARANTINE_WATCH, QUARANTINE_ACT) for r in rates["rate"]]
                rows = rates.assign(measure="quarantine rate", latest=~rates["table_id"].duplicated(keep="last")
                                    ).to_dict("records")
    latest_batches = [r for r in rows if r["latest"]]
    nulls = _null_trend(s)
    status = monitoring.worst([*(r["status"] for r in latest_batches), *(r["status"] for r in nulls)])
    judged = [*latest_batches, *nulls]
    flagged = [f"{r.get('table_id') or r.get('feature')} {r['status']}" for r in judged if r["status"] != "ok"]
    worst_rate = max((r["rate"] for r in latest_batches), default=0.0)
    summary = (f"latest batch of {len(latest_batches)} source tables, highest quarantine rate {worst_rate:.1%}; "
               f"null rates of {len(nulls)} features: " + (", ".join(flagged) or "all ok"))
    figures = {"max_quarantine_rate": worst_rate,
               "max_null_rise": max((r["rise"] for r in nulls), default=0.0)}
    return [Check("data_quality", "Data quality: quarantine per batch, null rates", status, summary, figures,
                  [*rows, *nulls])]


def _null_trend(s: Settings) -> list[dict[str, Any]]:
    """Per model input, its null share in the previous and the latest snapshot, and the status of its rise."""
    dates = store.snapshot_dates(s)
    if len(dates) < 2:
        return []
    before, after = (store.read_snapshot(s, d) for d in dates[-2:])
    rows = []
    for name in model_inputs():
        if name in before and name in after:
            old, new = float(before[name].isna().mean()), float(after[name].isna().mean())
            rows.append({"measure": "null rate", "feature": name, "before": old, "after": new, "rise": new - old,
                         "status": monitoring.status(new - old, NULLS_WATCH, NULLS_ACT)})
    return rows


# --- realized performance ------------------------------------------------------------------------------------


def realized(s: Settings) -> list[Check]:
    runs = scoring_runs(s)
    if not runs or not s.warehouse.exists():
        return [Check("realized_churn", "Realized churn performance", "ok", "no scoring run yet"),
                Check("realized_clv", "Realized customer value", "ok", "no scoring run yet")]
    with warehouse.connect(s, read_only=True) as con:
        end = warehouse.data_end(con)
        return [_realized_churn(s, con, runs, end), _realized_clv(con, runs, end)]


def _to_go(runs: list, end: pd.Timestamp, days: int) -> str:
    first = min(as_of for _, as_of, _ in runs)
    return f"not yet: {(first + pd.Timedelta(days=days) - end).days} days to go for the earliest run"


def _realized_churn(s: Settings, con: Any, runs: list, end: pd.Timestamp) -> Check:
    rows, statuses = [], []
    for run_dir, as_of, scored_at in runs:
        if not labels.labelable(as_of, end, CHURN.horizon_days):
            continue
        scores = read_scores(run_dir).query("model == 'churn'")
        joined = scores.merge(labels.churn(con, as_of), on="customer_id")
        if joined["churned"].nunique() < 2:
            continue
        figures = churn_metrics(joined["churned"], joined["score"])
        expected = _test_auc(s, int(scores["version"].iloc[0]))
        row = {"run": run_dir.name, "as_of": f"{as_of:%Y-%m-%d}", "scored_at": scored_at.isoformat(),
               "version": int(scores["version"].iloc[0]), "customers": len(joined),
               "churn_rate": float(joined["churned"].mean()), "auc": figures["roc_auc"], "ece": figures["ece"],
               "test_auc": expected,
               "calibration": monitoring.calibration(joined["churned"], joined["score"]).to_dict("records")}
        row["gap_se"] = se = _gap_se(row["auc"], joined["churned"])
        row["status"] = monitoring.worst([
            monitoring.status(expected - row["auc"], max(AUC_WATCH, 2 * se), max(AUC_ACT, 3 * se)),
            monitoring.status(row["ece"], ECE_WATCH, ECE_ACT)])
        rows.append(row)
        statuses.append(row["status"])
    if not rows:
        return Check("realized_churn", "Realized churn performance", "ok", _to_go(runs, end, CHURN.horizon_days))
    last = rows[-1]
    summary = (f"{len(rows)} run(s) past the {CHURN.horizon_days}-day horizon; latest (as of {last['as_of']}): "
               f"AUC {last['auc']:.3f} (test {last['test_auc']:.3f}), ECE {last['ece']:.3f}")
    return Check("realized_churn", "Realized churn performance", monitoring.worst(statuses), summary,
                 {"auc": last["auc"], "ece": last["ece"], "runs": len(rows)}, rows)


def _gap_se(auc: float, churned: pd.Series) -> float:
    """Standard error of the realized AUC's gap to the test AUC. The test period was one snapshot of the same
    population, so both AUCs have about the same error: the gap's is √2 times the realized one's. On a small
    company (a few hundred subscribers, a few dozen churners) it is several points: a gap that a re-draw of the
    same month would show is no finding, so the thresholds rise to 2 and 3 of it."""
    positives = int(churned.sum())
    return math.sqrt(2) * monitoring.auc_se(auc, positives, len(churned) - positives)


def _test_auc(s: Settings, version: int) -> float:
    """The test AUC the churn model's training run logged (NaN when the registry cannot say)."""
    try:
        client = tracking.configure(s.home)
        run_id = client.get_model_version(CHURN.name, str(version)).run_id
        return float(client.get_run(str(run_id)).data.metrics["roc_auc"])
    except Exception:  # a model trained elsewhere, or a registry without the run: judged by ECE alone
        return float("nan")


def _realized_clv(con: Any, runs: list, end: pd.Timestamp) -> Check:
    title = "Realized customer value"
    done = [r for r in runs if labels.labelable(r[1], end, CLV.horizon_days)]
    if not done:
        return Check("realized_clv", title, "ok", _to_go(runs, end, CLV.horizon_days))
    run_dir, as_of, _ = done[-1]
    scores = read_scores(run_dir).query("model == 'clv'")
    joined = scores.merge(labels.clv(con, as_of), on="customer_id")
    table = monitoring.by_decile(joined["score"], joined["value"])
    gap = abs(joined["score"].mean() / joined["value"].mean() - 1) if joined["value"].mean() else float("nan")
    summary = f"run as of {as_of:%Y-%m-%d}: mean predicted {joined['score'].mean():,.0f}, realized " \
              f"{joined['value'].mean():,.0f} ({gap:.1%} apart)"
    return Check("realized_clv", title, monitoring.status(gap, CLV_WATCH, CLV_ACT), summary,
                 {"mean_gap": gap, "customers": len(joined)}, table.to_dict("records"))


# --- the next best action's realized value ------------------------------------------------------------------


def campaign_status(gain: dict[str, float], mismatch: bool) -> str:
    """A campaign's policy against its holdout, from the readout's gain per member and its 95 % CI: "act" when
    the CI lies below 0 (the policy loses money for sure), "watch" when the estimate is below 0 or the arms'
    sizes do not match the plan (a loss that depends on the arm biases the comparison), else "ok"."""
    if gain["high"] < 0:
        return "act"
    return "watch" if gain["value"] < 0 or mismatch else "ok"


def realized_nba(s: Settings) -> list[Check]:
    """Every launched campaign read out as `c360 campaign readout` reads it; those whose outcome window the data
    does not cover yet are named as waiting."""
    title = "Next best action: realized value of campaigns"
    rows, waiting = [], []
    for plan in campaigns.listed(s):
        if plan["launched_at"] is None:
            continue
        try:
            result = readout.compute(s, plan["name"])  # the figures of `c360 campaign readout`
        except readout.ReadoutError as e:
            waiting.append(f"{plan['name']} ({e})")
            continue
        gain, srm = result["gain_over_holdout"], result["sample_ratio"]
        rows.append({"campaign": plan["name"], "window_start": result["window"]["start"],
                     "window_end": result["window"]["end"], "members": result["members"],
                     "gain_per_member": gain["value"], "gain_low": gain["low"], "gain_high": gain["high"],
                     "truth": gain["truth"], "gain_total": result["net_value"]["gain_total"],
                     "costs": result["net_value"]["costs"], "srm_p_value": srm["p_value"],
                     "status": campaign_status(gain, srm["mismatch"])})
    pending = f"; waiting: {', '.join(waiting)}" if waiting else ""
    if not rows:
        return [Check("realized_nba", title, "ok", "no campaign read out yet" + pending)]
    last = rows[-1]
    summary = (f"{len(rows)} campaign(s) read out; latest, {last['campaign']}: gain over the holdout "
               f"{last['gain_per_member']:.2f} per member (95 % CI {last['gain_low']:.2f} to {last['gain_high']:.2f})"
               + pending)
    return [Check("realized_nba", title, monitoring.worst(r["status"] for r in rows), summary,
                  {"campaigns": len(rows), "gain_per_member": last["gain_per_member"],
                   "gain_low": last["gain_low"], "gain_high": last["gain_high"]}, rows)]


# --- online against offline ----------------------------------------------------------------------------------


def online_offline(s: Settings) -> list[Check]:
    """A sample of the latest snapshot's customers read back from the online store. Customers the live update
    recomputed since the snapshot (`live.updated_since`) are left out, and counted: their online row holds the
    newer values by design."""
    title = "Online store against the latest snapshot"
    dates = store.snapshot_dates(s)
    if not dates or not (s.feast / "feature_store.yaml").exists():
        return [Check("online_offline", title, "ok", "no feature store yet")]
    snapshot = store.read_snapshot(s, dates[-1])
    updated = snapshot["customer_id"].isin(live.updated_since(s, dates[-1]))
    rest = snapshot[~updated]
    if rest.empty:
        return [Check("online_offline", title, "ok", f"all {len(snapshot)} customers updated by live events since "
                      "the snapshot: none to compare with it", {"live_excluded": len(snapshot)})]
    sample = rest.sample(min(SAMPLE, len(rest)), random_state=0)
    online = store.online_features(store.feature_store(s), sample["customer_id"].tolist())
    features = [f for f in model_inputs() if f in online]
    differ = monitoring.differences(online, sample, features)
    counts, differing = differ.sum(), int(differ.any(axis=1).sum())
    share = differing / len(sample) if len(sample) else 0.0
    summary = (f"{len(sample)} customers of {dates[-1]:%Y-%m-%d} read back: {differing} differ"
               + (" in " + ", ".join(counts[counts > 0].index) if differing else "")
               + f"; {int(updated.sum())} updated by live events since the snapshot left out")
    rows = [{"feature": f, "customers_differing": int(n)} for f, n in counts.items()]
    return [Check("online_offline", title, monitoring.status(share, ONLINE_WATCH, ONLINE_ACT), summary,
                  {"sampled": len(sample), "differing": differing, "share_differing": share,
                   "live_excluded": int(updated.sum())}, rows)]


CHECKS: tuple[Callable[[Settings], list[Check]], ...] = (feature_drift, score_drift, data_quality, realized,
                                                          realized_nba, online_offline)


# --- the page ------------------------------------------------------------------------------------------------


def html(document: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("c360.training", "templates"), autoescape=select_autoescape())
    return env.get_template("monitor.html").render(report=document)


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, timestamps as text, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
