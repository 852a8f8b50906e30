"""`c360 features build|apply|plan|materialize` and `c360 profile CUSTOMER_ID`."""

from __future__ import annotations

import re
import time
from datetime import date
from typing import Annotated

import pandas as pd
import typer
from rich.columns import Columns
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from c360.cli.ui import Json, audited, emit, fail, progress, record_run, require_engine, stderr, table
from c360.core import consent, warehouse
from c360.core.settings import Settings
from c360.features.profile import label

features_app = typer.Typer(help="Point-in-time customer features in the Feast feature store.", no_args_is_help=True)


@features_app.command()
def build(
    as_of: Annotated[str | None, typer.Option(help="one snapshot as of this date (YYYY-MM-DD)")] = None,
    history_days: Annotated[int, typer.Option(help="without --as-of: snapshots back over this many days")] = 644,
    every_days: Annotated[int, typer.Option(help="without --as-of: days between snapshots")] = 28,
    as_json: Json = False,
) -> dict:
    """Compute feature snapshots from the warehouse (data strictly before each as-of date) as Parquet files, on the
    engine C360_ENGINE names: duckdb (this process) or spark (C360_SPARK_MASTER; the same features, the warehouse's
    tables exported to Parquet for the build's length)."""
    from c360.features import campaigns, compute, spark_build, store

    s, started = Settings(), time.time()
    require_engine(s)
    with warehouse.connect(s, read_only=True) as con:
        if not warehouse.has_table(con, "identity_crosswalk"):
            raise fail("no resolved customers yet: run `c360 resolve` first")
        end = warehouse.data_end(con)
        dates = compute.as_of_dates(con, end, date.fromisoformat(as_of) if as_of else None, history_days,
                                     every_days, campaigns.launch_dates(s))
        with progress(f"building feature snapshots on {s.engine}", len(dates)) as advance, \
                spark_build.builder(s, con) as build_one:
            for day in dates:
                store.write_snapshot(s, build_one(day))
                advance(1)
    record_run(s, "features build", started, snapshots=len(dates), last=dates[-1], engine=s.engine)
    return emit({"snapshots": len(dates), "as_of_dates": [d.date() for d in dates], "folder": s.snapshots,
                 "engine": s.engine}, as_json,
                f"{len(dates)} snapshot(s) from {dates[0]:%Y-%m-%d} to {dates[-1]:%Y-%m-%d} in {s.snapshots} "
                f"(engine: {s.engine})")


@features_app.command()
def apply(as_json: Json = False) -> dict:
    """Register the entity, feature views and feature services (feature_repo/) in the Feast registry."""
    from c360.features import store

    s = Settings()
    try:
        fs = store.apply(s)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    views, services = [v.name for v in fs.list_feature_views()], [sv.name for sv in fs.list_feature_services()]
    registry = s.feast / "registry.db"
    return emit({"feature_views": views, "feature_services": services, "registry": registry,
                 "feature_store_yaml": s.feast / "feature_store.yaml"}, as_json,
                f"applied {len(views)} feature views and services {', '.join(services)} (registry {registry}; "
                f"Feast's CLI: feast -c {s.feast} feature-views list)")


@features_app.command()
def plan(as_json: Json = False) -> dict:
    """Show what `features apply` would change in the registry (Feast's plan)."""
    from c360.features import store

    diff = store.plan(Settings())
    return emit({"plan": Text.from_ansi(diff).plain}, as_json, diff or "nothing to change")  # Feast colours it


@features_app.command()
def materialize(
    as_of: Annotated[str | None, typer.Option(help="snapshot to load [default: the latest]")] = None,
    as_json: Json = False,
) -> dict:
    """Load a snapshot into the online store (C360_ONLINE_STORE: c360, sqlite or redis)."""
    from c360.features import store

    s, started = Settings(), time.time()
    with stderr.status(f"materializing into the {s.online_store} online store"):
        try:
            rows = store.materialize(s, pd.Timestamp(as_of) if as_of else None)
        except FileNotFoundError as e:
            raise fail(str(e)) from None
    seconds = time.time() - started
    record_run(s, "features materialize", started, rows=rows, store=s.online_store)
    return emit({"rows": rows, "online_store": s.online_store, "seconds": round(seconds, 2)}, as_json,
                f"{rows:,} customers into the online store in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")


def profile(customer_id: Annotated[str, typer.Argument(help="customer id, e.g. C00000001")],
            as_json: Json = False) -> dict:
    """Print a customer's call brief, then the profile — identity, past and present — from the warehouse and the
    online store."""
    from c360.features import store
    from c360.features.details import details, flags_since
    from c360.features.profile import assemble, red_flags

    if not re.fullmatch(warehouse.CUSTOMER_ID, customer_id):  # checked first: the audit trail records ids, nothing else
        raise fail(f"{customer_id!r} is not a customer id (e.g. C00000001)")
    s = Settings()
    with audited(s, "c360 profile", [customer_id]):
        with warehouse.connect(s, read_only=True) as con:
            identity = warehouse.customer(con, customer_id)
            if identity is None:
                raise fail(f"unknown customer {customer_id!r}")
            online = store.online_features(store.feature_store(s), [customer_id]).iloc[0]
            opted_out = consent.overrides(con, [customer_id]).get(customer_id)
            online = pd.Series(consent.with_overrides(online.to_dict(), opted_out))
            as_of = store.snapshot_dates(s)[-1]
            lists = details(con, customer_id, as_of)
        brief = _brief(s, customer_id)
    lists["red_flags_since"] = flags_since(store.history(s, customer_id))
    panels = [Panel(Columns([_block(name, values) for name, values in section.items()]),
                    title=f"[bold]{title}", expand=True) for title, section in assemble(identity, online).items()]
    result = {"customer_id": customer_id, "brief": brief, "identity": identity, "features": online,
              "red_flags": red_flags(online),
              "as_of": as_of.date(), "online_store": s.online_store, **lists}
    said = Panel(brief["text"] or f"no call brief: {brief['unavailable']}", title="[bold]call brief")
    lists_shown = [table(label(name), frame) for name, frame in lists.items() if len(frame)]
    return emit(result, as_json, said, *panels, *lists_shown,
                f"features as of {as_of:%Y-%m-%d} (online store: {s.online_store})")


def _brief(s: Settings, customer_id: str) -> dict:
    """The call brief of the profile the service would serve (`serving.brief`), or why there is none (no champion
    or no online store yet)."""
    from c360.serving import brief, online
    from c360.serving.champions import Champions
    from c360.serving.errors import NotFound, Unavailable
    from c360.serving.profile import profile

    try:
        ctx = online.Context(s, online.feature_store(s), Champions.load(s.home, online.latest_snapshot(s)))
        return brief.of(profile(ctx, customer_id, details=True), "full", s)  # the CLI's role sees all
    except (Unavailable, NotFound) as e:
        return {"text": None, "unavailable": str(e)}


def _block(name: str, values: dict | list) -> Table:
    """A group's features by label, or the red flags raised."""
    block = Table(title=label(name), show_header=False, box=None)
    if isinstance(values, dict):
        rows = [(label(key), _text(value)) for key, value in values.items()]
    else:
        rows = [(label(flag["code"]), flag["description"]) for flag in values] or [("none", "—")]
    for row in rows:
        block.add_row(*row)
    return block


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
