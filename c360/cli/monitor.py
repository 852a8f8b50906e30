"""`c360 monitor`: the monitoring report over the home's latest data (see c360.training.monitor_report); exits 1
when a check says "act", so cron or an orchestrator can alert."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from c360.cli.ui import Json, audited, emit, fail, record_run, stderr, table
from c360.core.settings import Settings


def monitor(
    out: Annotated[Path | None, typer.Option(help="write the report here [default: C360_HOME/monitor/<time>/, "
                                                  "and C360_HOME/monitor/latest]")] = None,
    as_json: Json = False,
) -> dict:
    """Check drift (features, scores), data quality, realized performance and the online store against the latest
    snapshot; write the report (HTML and JSON) and log it to MLflow. Exit code 1 when any check says "act"."""
    from c360.training import monitor_report

    s, started = Settings(), time.time()
    if not s.home.exists():
        raise fail(f"{s.home}: no C360_HOME here (run `c360 generate`, `c360 ingest` and the rest first)")
    try:
        with audited(s, "c360 monitor", []):
            report = monitor_report.run(s, out)
    except (OSError, ValueError) as e:
        raise fail(f"cannot build the report: {e}") from None
    record_run(s, "monitor", started, status=report.worst, act=report.acting, folder=report.folder)
    checks = pd.DataFrame([{"check": c.title, "status": c.status, "summary": c.summary} for c in report.checks])
    emit(report.to_dict(), as_json, table(f"c360 monitor: {report.worst}", checks),
         f"report: {report.folder}/report.html")
    if report.acting:
        stderr.print(f"act: {', '.join(report.acting)}", soft_wrap=True)
        raise typer.Exit(code=1)
    return report.to_dict()
