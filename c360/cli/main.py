"""`c360`: one command line for every stage. Each command is a thin wrapper around a plain function."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import RenderableType
from rich.table import Table
from typer._click import Context as ClickContext
from typer.core import TyperGroup

from c360.cli import evaluate  # noqa: F401  (registers `c360 eval cdnow` / `eval hillstrom`)
from c360.cli.advance import advance
from c360.cli.audience import audience_app
from c360.cli.audit import audit_app
from c360.cli.campaign import campaign_app
from c360.cli.events import events_app
from c360.cli.features import apply, build, features_app, materialize, profile
from c360.cli.identity import eval_app, resolve_app, run_resolve
from c360.cli.keys import keys_app
from c360.cli.mapping import mapping_app
from c360.cli.monitor import monitor
from c360.cli.personas import fit as personas_fit
from c360.cli.personas import personas_app
from c360.cli.privacy import privacy_app
from c360.cli.refresh import refresh
from c360.cli.review import mlflow_ui
from c360.cli.serve import score, serve
from c360.cli.train import champions, promote, train_all, train_app
from c360.cli.ui import Json, console, emit, fail, progress, record_run, stderr, table
from c360.core import engine, keys, warehouse
from c360.core.at_rest import EncryptionError, owner_only
from c360.core.contract import ARRIVALS
from c360.core.locks import WarehouseBusy
from c360.core.settings import Settings
from c360.training.specs import KINDS


class _Commands(TyperGroup):
    """Every command: creates owner-only files (see c360.core.at_rest); a warehouse another process holds, a key
    that does not open it, or a Spark JVM that ended (`engine.spark_ended`) is a one-line error, wherever it
    happens."""

    def invoke(self, ctx: ClickContext) -> Any:
        owner_only()
        try:
            return super().invoke(ctx)
        except (WarehouseBusy, EncryptionError) as e:
            raise fail(str(e)) from None
        except Exception as e:
            if reason := engine.spark_ended(e):
                raise fail(reason) from None
            raise


app = typer.Typer(help="Customer 360: unify customer silos, one profile per customer, churn / CLV / next best "
                       "action with reasons.", no_args_is_help=True, pretty_exceptions_enable=False, cls=_Commands)
app.add_typer(resolve_app, name="resolve")
app.add_typer(eval_app, name="eval")
app.add_typer(features_app, name="features")
app.command()(profile)
app.add_typer(train_app, name="train")
app.add_typer(privacy_app, name="privacy")
app.command()(promote)
app.command()(champions)
app.command("mlflow-ui")(mlflow_ui)
app.command()(score)
app.command()(refresh)
app.command()(monitor)
app.command()(serve)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(events_app, name="events")
app.add_typer(mapping_app, name="mapping")
app.add_typer(audience_app, name="audience")
app.add_typer(campaign_app, name="campaign")
app.add_typer(personas_app, name="personas")


def settings() -> Settings:
    return Settings()


@app.command()
def generate(
    customers: Annotated[int, typer.Option(min=1, help="number of customer accounts")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same files")] = 42,
    out: Annotated[Path | None, typer.Option(help="output folder [default: C360_HOME/data/generated]")] = None,
    corrupt_rate: Annotated[float, typer.Option(min=0, max=0.5, help="share of rows given one fault")] = 0.0,
    as_json: Json = False,
) -> dict:
    """Generate six silos of a synthetic SaaS company, with ground truth in OUT/ground_truth."""
    from c360.features.generate import generate as run

    s, started = settings(), time.time()
    out = out or s.generated
    with progress("generating customers", customers) as advance:
        report = run(out, customers, seed=seed, corrupt_rate=corrupt_rate, on_chunk=advance)
    record_run(s, "generate", started, out=out, customers=customers, seed=seed, faults=report.faults)
    result = {"out": out, "customers": customers, "seed": seed, "rows": report.rows, "faults": report.faults,
              "faults_file": out / "ground_truth" / "faults.csv"}
    files = pd.DataFrame(report.rows.items(), columns=["file", "rows"])
    return emit(result, as_json, table(f"{customers:,} customers → {out}", files),
                f"{report.faults:,} injected faults listed in {result['faults_file']}")


app.command()(advance)


@app.command()
def ingest(
    source: Annotated[Path | None, typer.Option(help="folder of silo exports (<silo>/<table>*.csv), or one file; "
                                                     "with --mapping, the folder its inputs are in; without it, "
                                                     "only the event log is folded")] = None,
    mapping: Annotated[str | None, typer.Option(help="a mapping file (YAML) of your own exports onto the contract, "
                                                     "or a shipped one's name (`c360 mapping list`)")] = None,
    mode: Annotated[str | None, typer.Option(help="how the files arrive: snapshot (each file is the whole table: "
                                                  "a key it lacks was deleted at the source) or increment (new "
                                                  "and changed rows); default each table's, see `c360 contract`")
                    ] = None,
    exported_at: Annotated[datetime | None, typer.Option(
        help="when the export was taken (UTC): changed rows are new versions from then; default each file's "
             "modification time")] = None,
    as_json: Json = False,
) -> dict:
    """Check source files against the data contract and load them into the warehouse, then fold in the live events
    logged since the last time (`POST /events`, `c360 events push`).

    Rows that break the contract go to the quarantine table with their reason, as do rejected events; files already
    loaded are skipped, events already folded too. A row whose key was loaded before is its new version (the old one
    kept in the table's history), and a snapshot records the keys it no longer holds as deleted at the source. With
    --mapping, the mapping's inputs are loaded through it (`c360 mapping check` first)."""
    from c360.features.event_log import fold
    from c360.features.ingest import IngestError, IngestWarning
    from c360.features.privacy import Suppressed

    if mode is not None and mode not in ARRIVALS:
        raise fail(f"--mode must be one of {', '.join(ARRIVALS)}, not {mode!r}")
    s, started = settings(), time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IngestWarning)
        try:
            files, run = _ingest_run(source, mapping, s, mode=mode, exported_at=exported_at)
            with warehouse.connect(s) as con, progress("ingesting files", files + 1) as advance:
                suppressed = Suppressed.load(s)
                reports = run(con, lambda _: advance(1), suppressed.mask if suppressed else None)
                folded = fold(s, con)
                advance(1)
        except IngestError as e:
            raise fail(str(e)) from None
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if s.encryption_key is None:
        notes.append(f"personal data is stored unencrypted in {s.warehouse}: set C360_ENCRYPTION_KEY, then run "
                     "`c360 encrypt`")
    for message in notes:
        stderr.print(f"[yellow]note:[/] {message}", soft_wrap=True)  # one line each, whatever the width
    loaded = Table("table", "file", "read", "accepted", "quarantined", "suppressed", "deleted",
                   title=f"ingest {mapping or source or 'the event log'}")
    for r in reports:
        note = " (already loaded)" if r.skipped else ""
        loaded.add_row(r.table_id, Path(r.file).name + note, f"{r.read:,}", f"{r.accepted:,}", f"{r.quarantined:,}",
                       f"{r.suppressed:,}", f"{r.closed:,}")
    for f in folded:
        loaded.add_row(f.table_id, "events (log)", f"{f.read:,}", f"{f.accepted:,}", f"{f.quarantined:,}", "0", "0")
    totals = {k: sum(getattr(r, k) for r in reports)
              for k in ("read", "accepted", "quarantined", "suppressed", "closed")}
    events = {k: sum(getattr(f, k) for f in folded)
              for k in ("read", "accepted", "replaced", "superseded", "quarantined")}
    record_run(s, "ingest", started, source=source, mapping=mapping, **totals, events=events)
    return emit({"source": source, "mapping": mapping, "files": reports, **totals, "events": events,
                 "folded": folded, "notes": notes},
                as_json, loaded, "total: " + ", ".join(f"{k} {v:,}" for k, v in totals.items())
                + "; events: " + ", ".join(f"{k} {v:,}" for k, v in events.items()))


def _ingest_run(source: Path | None, mapping: str | None, s: Settings, **arrival: Any
                ) -> tuple[int, Callable[..., list]]:
    """How many files `c360 ingest` loads, and the function loading them: (con, on_file, suppress) -> reports.
    `arrival`: the files' `mode` and `exported_at` (see `ingest.ingest_file`)."""
    from c360.cli.mapping import load
    from c360.features.ingest import discover, ingest
    from c360.features.mapping import ingest_mapping, rows_of

    if mapping is not None:
        mapped = load(mapping, source)
        return len(rows_of(mapped)), lambda con, on_file, suppress: ingest_mapping(
            con, mapped, on_file, suppress=suppress, **arrival)
    if source is None:
        return 0, lambda con, on_file, suppress: []
    return len(discover(source)), lambda con, on_file, suppress: ingest(
        con, source, on_file, max_line=s.csv_max_line, suppress=suppress, **arrival)


@app.command()
def status(as_json: Json = False) -> dict:
    """Show what C360_HOME holds: source tables, row counts, quarantine counts and the last runs."""
    from c360.features.ingest import quarantine_summary

    s = settings()
    shown: list[RenderableType] = []
    result: dict[str, Any] = {"home": s.home, "warehouse": None, "sources": [], "quarantine": [], "runs": []}
    if not s.warehouse.exists():
        shown.append(f"No warehouse yet in {s.home}. Run `c360 demo` or `c360 ingest --source DIR`.")
    else:
        with warehouse.connect(s, read_only=True) as con:
            result |= {"warehouse": s.warehouse, "sources": warehouse.table_counts(con),
                       "quarantine": quarantine_summary(con)}
        shown.append(table("sources", result["sources"]))
        if len(result["quarantine"]):
            by_rule = result["quarantine"].pivot_table(index="table_id", columns="rule", values="count", fill_value=0)
            shown.append(table("quarantined rows by rule (details: table `quarantine`)",
                               by_rule.astype(int).reset_index()))
    if s.runs.exists():
        result["runs"] = [json.loads(line) for line in s.runs.read_text().splitlines()[-10:]]
        last = Table("at", "command", "seconds", "summary", title="last runs")
        for r in result["runs"]:
            summary = {k: v for k, v in r.items() if k not in ("at", "command", "seconds")}
            last.add_row(r["at"], r["command"], str(r["seconds"]), json.dumps(summary))
        shown.append(last)
    return emit(result, as_json, *shown)


@app.command()
def encrypt(as_json: Json = False) -> dict:
    """Encrypt the warehouse with C360_ENCRYPTION_KEY (DuckDB's encryption), keeping every table and row.

    The warehouse is copied into a new encrypted file (COPY FROM DATABASE) under the writer lock, each table's rows
    are counted in both, and the new file replaces the old one. A warehouse already encrypted with the key is left
    as it is. From then on, every command and the service need the key to open it."""
    s, started = settings(), time.time()
    result = warehouse.encrypt(s)
    record_run(s, "encrypt", started, already_encrypted=result["already_encrypted"], tables=len(result["tables"]))
    rows = pd.DataFrame(result["tables"].items(), columns=["table", "rows"])
    done = "was already encrypted with C360_ENCRYPTION_KEY" if result["already_encrypted"] else "is now encrypted"
    return emit(result, as_json, table("tables", rows), f"the warehouse {s.warehouse} {done}")


@app.command()
def contract(
    out: Annotated[Path | None, typer.Option(help="write the page here instead of printing it")] = None,
    as_json: Json = False,
) -> None:
    """Print the data contract: every source table, its columns, keys and what makes a row invalid.

    With --json: the contract's tables as data (silo, name, key, columns with their rules, references) and the live
    event kinds (table, time column, fixed columns, update)."""
    from c360.core.contract import EVENT_KINDS, TABLES
    from c360.features.contract_doc import markdown

    text = markdown()
    if out:
        out.write_text(text)
        emit({"tables": TABLES, "event_kinds": EVENT_KINDS, "wrote": out}, as_json, f"wrote {out}")
    elif as_json:
        emit({"tables": TABLES, "event_kinds": EVENT_KINDS}, as_json)
    else:
        print(text)  # the page as it is: no markup, no wrapping


@app.command()
def demo(
    customers: Annotated[int | None, typer.Option(help="customers to generate [default: C360_CUSTOMERS]")] = None,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve",
                                              help="end with the service up (Ctrl-C stops it)")] = True,
    as_json: Json = False,
) -> None:
    """Run the whole pipeline on generated data and print where to look.

    With --json: one document of every step's result, the example customer and where to look; the steps' own
    output goes to stderr."""
    s = settings()
    n = customers or s.customers
    steps = {"generate": generate(customers=n, seed=s.seed, out=s.generated, corrupt_rate=s.corrupt_rate),
             "ingest": ingest(source=s.generated), "resolve": run_resolve(), "features_build": build(),
             "features_apply": apply(), "features_materialize": materialize(), "train": train_all(),
             "promote": {model: promote(model) for model in KINDS}, "status": status()}
    example = _example_customer(s)
    steps |= {"profile": profile(example), "champions": champions(), "personas": personas_fit(), "score": score()}
    where = {"warehouse": s.warehouse, "snapshots": s.snapshots, "feast_registry": s.feast, "ground_truth": s.truth,
             "run_log": s.runs}
    key = {"name": DEMO_KEY, "role": "admin", "key": keys.create(s, DEMO_KEY, "admin", replace_active=True)}
    emit({"home": s.home, "example_customer": example, "steps": steps, "where": where, "api_key": key}, as_json,
         f"\n[bold]Where to look[/]: warehouse {s.warehouse} (duckdb) — tables `quarantine`, "
         f"`identity_crosswalk`, `identity_customers`; feature snapshots {s.snapshots}; Feast registry "
         f"{s.feast}; ground truth {s.truth}; run log {s.runs}; MLflow runs, plots and model cards: "
         "`c360 mlflow-ui`.\n"
         f"Try: `c360 profile {example}`, `c360 eval identity`, `c360 resolve explain support/tickets T-000000005`.\n"
         f"[bold]The service's admin key[/] `{DEMO_KEY}` (a new one on every demo, shown once; `c360 keys create` "
         f"makes others):\n  {key['key']}")
    if serve_after:
        url, bearer = "http://127.0.0.1:3000", f"-H 'Authorization: Bearer {key['key']}'"
        console.print(f"\n[bold]The service[/] is starting on {url} (docs: {url}/; Ctrl-C stops it). Try:\n"
                      f"  curl -s {url}/customers/{example}/profile {bearer} | python -m json.tool\n"
                      f"  curl -s {url}/predict/nba {bearer} -H 'content-type: application/json' "
                      f"-d '{{\"customer_ids\": [\"{example}\"]}}'\n"
                      f"  the profile page: {url}/ui (it asks for the key)", soft_wrap=True)
        serve()


DEMO_KEY = "demo-admin"


def _example_customer(s: Settings) -> str:
    """A subscribed customer with several source records: a profile worth looking at."""
    with warehouse.connect(s, read_only=True) as con:
        row = con.execute("SELECT customer_id FROM identity_customers WHERE segment = 'smb' "
                          "ORDER BY records DESC, customer_id LIMIT 1").fetchone()
    return row[0] if row else "C00000001"


if __name__ == "__main__":
    app()
