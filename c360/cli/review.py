"""`c360 mlflow-ui`: the MLflow UI on the project's tracking store, for reviewing a challenger against the champion."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from c360.cli.ui import console
from c360.core.settings import Settings


def server_command(uri: str, artifacts: str, host: str, port: int, workers: int) -> list[str]:
    """The `mlflow server` command line that serves `uri` with its artifacts (runs this interpreter's
    MLflow, so the UI matches the version that wrote the store)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--default-artifact-root", artifacts, "--artifacts-destination", artifacts,
            "--host", host, "--port", str(port), "--workers", str(workers)]


def server_env() -> dict[str, str]:
    """This environment without MLflow's GenAI job runner (seven huey consumers we do not use, a slow start)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_ui(
    host: Annotated[str, typer.Option(help="interface to bind; 0.0.0.0 to reach it from other machines")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 5000,
    workers: Annotated[int, typer.Option(min=1, help="server worker processes")] = 1,
) -> None:
    """Serve the MLflow UI on the project's tracking store (C360_HOME/mlflow.db, or MLFLOW_TRACKING_URI) to compare
    runs and review c360-churn@challenger against @champion; stop with Ctrl+C."""
    from c360.training.tracking import artifact_root, configure, tracking_uri

    s = Settings()
    configure(s.home)  # creates the store and the artifact folder when nothing was trained yet
    uri, artifacts = tracking_uri(s.home), artifact_root(s.home).as_uri()
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    console.print(f"MLflow UI on {uri}\nopen [bold]http://{shown}:{port}[/] "
                  f"(models: http://{shown}:{port}/#/models/c360-churn) — Ctrl+C stops it", soft_wrap=True)
    try:
        subprocess.run(server_command(uri, artifacts, host, port, workers), check=False, env=server_env())
    except KeyboardInterrupt:
        console.print("stopped")
