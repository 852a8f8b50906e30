"""`c360 score` (batch scores into Parquet and the online store; with `--model`, a table model's scores of a table) and
`c360 serve` (the HTTP service)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from c360.cli.ui import Json, audited, console, emit, fail, progress, record_run, require_engine
from c360.core import audit
from c360.core.settings import Settings


def score(
    customers: Annotated[Path | None, typer.Option(help="only these customers: one id per line, or a CSV / Parquet "
                                                        "with a customer_id column [default: every customer]")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="customers per resumable chunk")] = 100_000,
    processes: Annotated[int | None, typer.Option(
        min=1, help="worker processes scoring the chunks [default: one per core from 200,000 customers, else 1]")
    ] = None,
    model: Annotated[str | None, typer.Option(
        help="a table model's NAME (`c360 train churn|nba --table`): score --table with it instead")] = None,
    table_path: Annotated[Path | None, typer.Option(
        "--table", help="with --model: the CSV or Parquet table to score, in the training table's columns")] = None,
    out: Annotated[Path | None, typer.Option(help="with --model: where the scores go, .csv or .parquet")] = None,
    alias: Annotated[str, typer.Option(help="with --model: the version to use, by alias")] = "champion",
    as_json: Json = False,
) -> dict:
    """Score every customer with the champion churn, CLV and next-best-action models, with top-3 reasons.

    Writes dated Parquet under C360_HOME/scores and pushes the latest scores into the online store (feature view
    `predictions`), where the service reads them. Re-running resumes an interrupted run and changes nothing after a
    complete one; a new snapshot or champion makes a new run. Every core scores: LightGBM's threads, and from
    200,000 customers one worker process per core; with C360_ENGINE=spark, Spark tasks score the chunks
    (C360_SPARK_MASTER; the `spark` extra and Java).

    With --model NAME --table FILE --out FILE: score your own table with a table model instead (churn probability
    and top-3 reasons, or the recommended action and its expected gain, per row).
    """
    if model is not None or table_path is not None or out is not None:
        if model is None or table_path is None or out is None:
            raise fail("scoring a table needs --model, --table and --out together")
        if customers is not None:
            raise fail("--customers scores the feature store's customers: it does not go with --model")
        return _score_table(model, table_path, out, alias, as_json)
    from c360.serving import batch
    from c360.serving.errors import Unavailable

    s, started = Settings(), time.time()
    require_engine(s)
    ids = None
    if customers is not None:
        if not customers.is_file():
            raise fail(f"{customers} does not exist")
        ids = batch.read_customers(customers)
    holder: dict = {}

    def on_start(total: int) -> None:
        holder["bar"] = progress("scoring customers (churn, CLV, next best action)", total)
        holder["advance"] = holder["bar"].__enter__()

    try:
        with audited(s, "c360 score", ids if ids is not None else [audit.ALL]):
            report = batch.score(s, ids, chunk_size=chunk_size, on_start=on_start,
                                 on_chunk=lambda n: holder["advance"](n), processes=processes)
    except (FileNotFoundError, LookupError, Unavailable) as e:
        raise fail(str(e)) from None
    finally:
        if "bar" in holder:
            holder["bar"].__exit__(None, None, None)
    changes = refresh_audiences(s)
    record_run(s, "score", started, customers=report.customers, chunks=report.chunks,
               scored_chunks=report.scored_chunks, folder=report.folder, **report.versions)
    versions = ", ".join(f"{kind} v{v}" for kind, v in report.versions.items())
    if report.scored_chunks:
        done = (f"{report.customers:,} customers scored with {versions}, features as of {report.as_of:%Y-%m-%d}, "
                f"in {report.seconds:.1f} s ({report.per_second:,.0f} customers/s, "
                f"{len(report.versions) * report.per_second:,.0f} predictions/s) on the {report.engine} engine"
                + (f", {report.processes} processes" if report.processes > 1 else ""))
    else:
        done = (f"{report.customers:,} customers already scored with {versions} (features as of "
                f"{report.as_of:%Y-%m-%d}): nothing to score, online store refreshed in {report.seconds:.1f} s")
    result = {**asdict(report), "as_of": report.as_of.date(), "customers_per_second": report.per_second,
              "audiences": [asdict(c) for c in changes]}
    moved = "".join(f"; audience {c.audience}: {c.size:,} (+{c.entered:,} -{c.left:,})"
                    + (f", not refreshed: {c.problem}" if c.problem else "") for c in changes)
    return emit(result, as_json, done,
                f"scores: {report.folder}; online store: feature view `predictions`{moved}")


def refresh_audiences(s: Settings) -> list[Any]:
    """Recompute the audiences' members over the new scores (`c360.features.audiences`), audited."""
    from c360.features import audiences

    if not audiences.listed(s):
        return []
    with audited(s, "c360 score: audiences refreshed", [audit.ALL]):
        return audiences.refresh(s)


def _score_table(model: str, path: Path, out: Path, alias: str, as_json: bool) -> dict:
    """`c360 score --model`: a table model's predictions for a table, written to `out`; an audit record (the
    table's rows are not c360's customers, so it names none)."""
    from c360.serving.table_models import score_table, write_scores
    from c360.training.table_models import SchemaError
    from c360.training.tables import read_table

    s, started = Settings(), time.time()
    with audited(s, "c360 score --model", []):
        try:
            scores, version = score_table(s.home, model, read_table(path), alias)
            write_scores(scores, out)
        except (LookupError, SchemaError) as e:
            raise fail(f"{path.name}: {e}" if isinstance(e, SchemaError) else str(e)) from None
        except ValueError as e:
            raise fail(str(e)) from None
    name = f"c360-{model.removeprefix('c360-')}"
    record_run(s, "score --model", started, model=name, version=version, rows=len(scores), out=out)
    return emit({"model": name, "version": version, "alias": alias, "rows": len(scores), "out": out}, as_json,
                f"{len(scores):,} rows of {path.name} scored with {name} v{version} (@{alias}): {out}")


def serve(
    port: Annotated[int, typer.Option(help="port to listen on")] = 3000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
) -> None:
    """Start the profile and prediction service (BentoML) on C360_HOME; Ctrl-C stops it.

    Endpoints: GET /customers/{id}/profile, POST /predict/churn|clv|nba, POST /models/{name}/predict (every
    promoted table model), POST /admin/reload, GET /status,
    /healthz, /readyz, /metrics (Prometheus, by route), /ui (profile page); OpenAPI at /docs.json, Swagger UI at /.
    Requests carry `Authorization: Bearer KEY` (`c360 keys create`); C360_AUTH=off (no keys) binds loopback only.
    C360_RELOAD_SECONDS sets how often the champions are polled (default 30); C360_TRACING=1 keeps BentoML's
    OpenTelemetry middleware (off: at BentoML's default sample rate it records nothing).
    """
    import signal

    from c360.serving.server import serve_command, start, stop

    try:
        command, env = serve_command(port, host, workers)
    except ValueError as e:
        raise fail(str(e)) from None
    console.print(f"serving {Settings().home} on http://{host}:{port} ({workers} worker(s)); docs at "
                  f"http://{host}:{port}/")

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    process = start(command, env, None)  # its own process group: stopped with its workers below
    try:
        code = process.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stop(process)
    if code:
        raise typer.Exit(code)
