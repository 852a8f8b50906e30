"""`c360 refresh`: the job for cron or an orchestrator that takes new exports all the way to new scores.

The steps, in order, and what each one's fingerprint is made of (`c360.features.refresh` skips a step whose inputs
are those of its last successful run, and keeps the state):

- ingest: the new files of the landing folder, then the event log folded. Inputs: the folder's files (path, size,
  modification time) and the event log's.
- resolve: records linked to customers, ids stable. Inputs: the identity-bearing rows (every person record and CRM
  account, hashed) and the stewards' decisions.
- build: the feature snapshot as of the data's end (and a new experiment wave's). Inputs: the ingest log and the
  crosswalk, hashed.
- materialize: the latest snapshot into the online store. Inputs: that file, the online store setting.
- train: challengers of every model (`training.trainers`), when due. Inputs: the snapshot files.
- promote: the gate on each challenger. Inputs: the challengers' versions.
- score: every customer by the champions, audiences refreshed. Inputs: the latest snapshot file, the champions'
  versions.
- purge: quarantined rows and audit records past retention. Inputs: the day (UTC), the retention settings.
- monitor: the monitoring report. Inputs: the snapshot and score files.

Training is due when the oldest of the models' last trainings (their `@challenger`'s registration) is
C360_RETRAIN_DAYS old, or when the last monitoring report said "act".
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from c360.cli.ui import Json, audited, emit, fail, plain, record_run, stderr
from c360.core import audit, locks, warehouse
from c360.core.settings import Settings
from c360.features.refresh import NOTHING_NEW, Outcome, State, Step, digest, files, rows, run
from c360.training.specs import MODELS

DAY_MS = 86_400_000


def refresh(
    source: Annotated[Path | None, typer.Option(help="the landing folder where new exports arrive "
                                                     "(<silo>/<table>*.csv) [default: C360_LANDING]")] = None,
    as_json: Json = False,
) -> dict:
    """Take what is new all the way to new scores, skipping every step whose inputs did not change: ingest the
    landing folder and the event log, resolve, build the snapshot as of the data's end, materialize, train
    challengers when due (C360_RETRAIN_DAYS) and promote them through the gate, score, purge what retention
    expires, monitor.

    One run at a time (a second one ends at once, with exit code 1). A run killed midway leaves every step done or
    to be done: run it again. The state of the steps is kept in C360_HOME/refresh.json. Exit code 1 when a step
    fails, naming it."""
    s, started = Settings(), time.time()
    source = source or s.landing
    if not source.is_dir():
        raise fail(f"{source}: no such folder of exports (--source, or C360_LANDING)")
    todo = steps(source)
    try:
        with locks.job(s, "refresh"), audited(s, "c360 refresh", [audit.ALL]):
            outcomes = run(s, todo, partial(_starting, todo), _ended)
            failed = next((o for o in outcomes if o.status == "failed"), None)
            record_run(s, "refresh", started, steps={o.step: o.status for o in outcomes})
            if failed:
                raise fail(f"refresh step {failed.step} failed: {failed.note}")
            if acting := State(s).figures("monitor").get("acting"):
                raise fail(f"monitoring says act on {', '.join(acting)}: see `c360 monitor`")
    except locks.JobBusy as e:
        raise fail(str(e)) from None
    seconds = round(time.time() - started, 1)
    new = any(o.status == "done" for o in outcomes)
    summary = f"refreshed in {seconds} s" if new else f"{NOTHING_NEW}: every step skipped, in {seconds} s"
    return emit({"source": source, "seconds": seconds, "changed": new, "steps": outcomes}, as_json,
                _table(outcomes), summary)


def steps(source: Path) -> tuple[Step, ...]:
    return (Step("ingest", partial(_landed, source), partial(_ingest, source)),
            Step("resolve", _identity_rows, _resolve),
            Step("build", _loads_and_crosswalk, _build),
            Step("materialize", _latest_snapshot, _materialize),
            Step("train", _snapshots, _train, wait=not_due),
            Step("promote", _challengers, _promote),
            Step("score", _snapshot_and_champions, _score),
            Step("purge", _retention_day, _purge),
            Step("monitor", _snapshots_and_scores, _monitor))


def _starting(todo: tuple[Step, ...], step: Step) -> None:
    stderr.print(f"[bold]refresh[/] {step.name} ({todo.index(step) + 1}/{len(todo)}) …", soft_wrap=True)


def _ended(outcome: Outcome) -> None:
    note = escape(outcome.note)
    said = {"done": f"done in {outcome.seconds:.1f} s", "skipped": f"skipped: {note}",
            "failed": f"[red]failed[/]: {note}"}
    stderr.print(f"[bold]refresh[/] {outcome.step}: {said[outcome.status]}", soft_wrap=True)


def _table(outcomes: list[Outcome]) -> Table:
    shown = Table("step", "status", "seconds", "note", "figures", title="refresh")
    for o in outcomes:
        figures = ", ".join(f"{k} {v if isinstance(v, str | int | float) else json.dumps(v)}"
                            for k, v in plain(o.figures).items())
        shown.add_row(o.step, o.status, f"{o.seconds:.1f}", escape(o.note), escape(figures))
    return shown


# ------------------------------------------------------------------------------------------------------- ingest


def _landed(source: Path, s: Settings) -> str:
    from c360.features import event_log
    from c360.features.ingest import IngestWarning, discover

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IngestWarning)  # said by the step itself when it runs
        found = [path for _, path in discover(source)]
    return digest(str(source.resolve()), files(found), files([event_log.log_path(s)]))


def _ingest(source: Path, s: Settings) -> dict[str, Any]:
    from c360.features.event_log import fold
    from c360.features.ingest import IngestWarning, ingest
    from c360.features.privacy import Suppressed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IngestWarning)
        with warehouse.connect(s) as con:
            suppressed = Suppressed.load(s)
            reports = ingest(con, source, max_line=s.csv_max_line, suppress=suppressed.mask if suppressed else None)
            folded = fold(s, con)
    loaded = [r for r in reports if not r.skipped]
    return {"files": len(loaded), **{k: sum(getattr(r, k) for r in loaded)
                                     for k in ("accepted", "quarantined", "suppressed", "closed")},
            "events": sum(f.read for f in folded), "notes": list(dict.fromkeys(str(w.message) for w in caught))}


# ------------------------------------------------------------------------------------------------------ resolve


def _identity_rows(s: Settings) -> str:
    from c360.features.identity import ACCOUNT_SQL, RECORD_SQL

    with warehouse.connect(s, read_only=True) as con:
        decided = (rows(con, "SELECT * FROM identity_decisions")
                   if warehouse.has_table(con, "identity_decisions") else None)
        return digest(rows(con, RECORD_SQL), rows(con, ACCOUNT_SQL), decided)


def _resolve(s: Settings) -> dict[str, Any]:
    from c360.features.identity import resolve
    from c360.features.live_identity import Ledger

    with warehouse.connect(s) as con:
        report = resolve(con, s.identity_model, threshold=s.match_threshold, ledger=Ledger(s))
    return {"records": report.records, "customers": report.customers, "merges": report.merges,
            "splits": report.splits}


# -------------------------------------------------------------------------------------------- build, materialize


def _loads_and_crosswalk(s: Settings) -> str:
    with warehouse.connect(s, read_only=True) as con:
        return digest(rows(con, "SELECT * FROM ingest_log"), rows(con, "SELECT * FROM identity_crosswalk"))


def _build(s: Settings) -> dict[str, Any]:
    """The snapshot as of the data's end; and an experiment wave's or a campaign's that has none yet (the next best
    action learns from them)."""
    from c360.features import campaigns, compute, spark_build, store

    built = set(store.snapshot_dates(s))
    with warehouse.connect(s, read_only=True) as con:
        end = warehouse.data_end(con)
        launches = sorted({*compute.experiment_dates(con), *campaigns.launch_dates(s)})
        days = [*(d for d in launches if d < end and d not in built), end]
        with spark_build.builder(s, con) as build_one:
            snapshots = [build_one(day) for day in days]
    for snapshot in snapshots:
        store.write_snapshot(s, snapshot)
    return {"as_of": [d.date() for d in days], "customers": len(snapshots[-1]),
            "snapshots": len(store.snapshot_dates(s)), "engine": s.engine}


def _latest_snapshot(s: Settings) -> str:
    from c360.features import store

    latest = [s.snapshots / f"as_of={d:%Y-%m-%d}.parquet" for d in store.snapshot_dates(s)[-1:]]
    return digest(files(latest), s.online_store)


def _materialize(s: Settings) -> dict[str, Any]:
    from c360.features import store

    return {"customers": store.materialize(s), "online_store": s.online_store}


# ---------------------------------------------------------------------------------------------- train, promote


def _snapshots(s: Settings) -> str:
    return digest(files(s.snapshots.glob("as_of=*.parquet")))


def not_due(s: Settings, state: State) -> str | None:
    """Why training waits: None when the last monitoring report said "act", a model was never trained, or the oldest
    of the last trainings is C360_RETRAIN_DAYS old."""
    from c360.training import tracking

    if state.figures("monitor").get("worst") == "act":
        return None
    client = tracking.configure(s.home)
    try:
        trained = [tracking.version_by_alias(client, spec.name, tracking.CHALLENGER).creation_timestamp
                   for spec in MODELS.values()]
    except tracking.ModelNotFound:
        return None
    days = (time.time() * 1000 - min(trained)) / DAY_MS
    if days >= s.retrain_days:
        return None
    return f"not due: trained {days:.1f} days ago, every {s.retrain_days} (C360_RETRAIN_DAYS)"


def _train(s: Settings) -> dict[str, Any]:
    """Each model's new version, or why it was skipped (too little to learn from yet)."""
    from c360.training.trainers import train, trainers

    return {kind: {"skipped": report} if isinstance(report, str) else
            {"version": report.version, "test_period": report.test_period}
            for kind, report in ((kind, train(s, kind)) for kind in trainers())}


def _versions(s: Settings, alias: str) -> dict[str, int]:
    """Each model's version under `alias`; an optional model (`ModelSpec.required`) a home lacks is left out."""
    from c360.training import tracking

    client = tracking.configure(s.home)
    versions = {}
    for spec in MODELS.values():
        try:
            versions[spec.name] = int(tracking.version_by_alias(client, spec.name, alias).version)
        except tracking.ModelNotFound:
            if spec.required:
                raise
    return versions


def _challengers(s: Settings) -> str:
    from c360.training.tracking import CHALLENGER

    return digest(_versions(s, CHALLENGER))


def _promote(s: Settings) -> dict[str, Any]:
    from c360.training import tracking
    from c360.training.registry import promote

    client = tracking.configure(s.home)
    decisions = {kind: promote(client, spec.name, spec.gate) for kind, spec in MODELS.items()}
    return {kind: {"promoted": d.promoted, "challenger": d.challenger, "champion_before": d.champion,
                   "reasons": d.reasons} for kind, d in decisions.items()}


# ------------------------------------------------------------------------------------- score, purge, monitor


def _snapshot_and_champions(s: Settings) -> str:
    from c360.training.tracking import CHAMPION

    return digest(_latest_snapshot(s), _versions(s, CHAMPION))


def _score(s: Settings) -> dict[str, Any]:
    from c360.cli.serve import refresh_audiences
    from c360.serving import batch

    report = batch.score(s)
    changes = refresh_audiences(s)
    return {"customers": report.customers, "as_of": report.as_of.date(), "scored_chunks": report.scored_chunks,
            "folder": report.folder, "versions": report.versions, "audiences": len(changes)}


def _retention_day(s: Settings) -> str:
    return digest(datetime.now(UTC).date(), s.quarantine_retention_days, s.audit_retention_days)


def _purge(s: Settings) -> dict[str, Any]:
    from c360.features.privacy import purge_expired

    return purge_expired(s)


def _snapshots_and_scores(s: Settings) -> str:
    return digest(_snapshots(s), files(s.scores.rglob("*.parquet")))


def _monitor(s: Settings) -> dict[str, Any]:
    from c360.training.monitor_report import run as monitor

    report = monitor(s)
    return {"worst": report.worst, "acting": report.acting}

