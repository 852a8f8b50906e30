"""`c360 audience create | list | show | export | fields`: named, saved filters over the profile
(`c360.features.audiences`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import duckdb
import pandas as pd
import typer
from rich.console import RenderableType

from c360.cli.ui import Json, audit_command, audited, cli_key, emit, fail, record_run, table
from c360.core.settings import Settings
from c360.features import audience_profile, audiences
from c360.features.audience_filter import FilterError

audience_app = typer.Typer(help="Audiences: named filters over the profile (features, predictions, traits), their "
                                "members, overlap, history and exports.", no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="the audience's name (letters, digits, '_', '.', '-')")]
# duckdb.Error: a warehouse that cannot be read (the profile's opt-outs and the export's contacts come from it)
PROBLEMS = (FilterError, audiences.AudienceExists, audiences.UnknownAudience, FileNotFoundError, ValueError,
            duckdb.Error)


@audience_app.command("create")
def create(
    name: Name,
    where: Annotated[str, typer.Option(help="the filter, e.g. \"churn_band = 'high' and clv_12m > 1000 and region = "
                                            "'EMEA'\": = != < <= > >=, in (...), is [not] null, and, or, not, "
                                            "parentheses, on the fields `c360 audience fields` lists")],
    as_json: Json = False,
) -> dict:
    """Save an audience and compute its members; `c360 score` recomputes them after every scoring run."""
    s, started = Settings(), time.time()
    try:
        audiences.check(s, where)  # refused before anything is read or audited
    except PROBLEMS as e:
        raise fail(str(e)) from None
    status, ids = "failed", list[str]()
    try:
        change, ids = audiences.create(s, name, where, cli_key())
        status = "ok"
    except PROBLEMS as e:
        raise fail(str(e)) from None
    finally:
        audit_command(s, "c360 audience create", ids, status)  # the members it read
    record_run(s, "audience create", started, audience=name, size=change.size)
    return emit({"name": name, "filter": where, "size": change.size}, as_json,
                f"audience {name}: {change.size:,} customers")


@audience_app.command("list")
def list_audiences(as_json: Json = False) -> dict:
    """List the audiences: name, filter, size, who created them and when, when their members were computed."""
    found = audiences.listed(Settings())
    frame = pd.DataFrame(found, columns=["name", "size", "filter", "created_by", "created_at", "refreshed_at"])
    return emit({"audiences": found}, as_json,
                table("audiences", frame) if found else "no audiences yet: `c360 audience create NAME --where ...`")


@audience_app.command("show")
def show(name: Name, as_json: Json = False) -> dict:
    """An audience's size, its overlap with the other audiences, the distribution of its key fields (churn bands,
    plans, regions... counted; value, churn probability... in quartiles) and its history (entered, left)."""
    s = Settings()
    try:
        ids = audiences.members(s, name)
        with audited(s, "c360 audience show", ids):
            shown = audiences.show(s, name)
    except PROBLEMS as e:
        raise fail(str(e)) from None
    shown.pop("members")
    parts: list[RenderableType] = [f"audience {name}: {shown['size']:,} customers — {shown['filter']}"]
    if shown["overlap"]:
        parts.append(table("overlap", pd.DataFrame(shown["overlap"])))
    for field, counts in shown["distribution"]["counts"].items():
        parts.append(table(field, pd.DataFrame({field: list(counts), "customers": list(counts.values())})))
    quartiles = shown["distribution"]["quartiles"]
    if quartiles:
        parts.append(table("quartiles", pd.DataFrame(quartiles).T.rename_axis("field")))
    parts.append(table("history", pd.DataFrame(shown["history"])))
    return emit(shown, as_json, *parts)


@audience_app.command("export")
def export(
    name: Name,
    out: Annotated[Path | None, typer.Option(help="file to write: .csv or .parquet [default: C360_HOME/audiences/"
                                                  "exports/NAME-TIME.csv]")] = None,
    as_json: Json = False,
) -> dict:
    """Write the audience's members for a CRM or e-mail tool: customer_id, name, email, segment, region, plan,
    churn_band, clv_12m, next_best_action, expansion_probability, response_channel, response_topic,
    response_probability. Leaves out the customers who opted out of
    marketing e-mail and those erased (or asked to be), and says how many. The export is recorded (path, when,
    who, ids) for erasure."""
    s, started = Settings(), time.time()
    out = out or audiences.default_export(s, name)
    try:
        ids = audiences.members(s, name)
        with audited(s, "c360 audience export", ids):
            result = audiences.export(s, name, out, cli_key())
    except PROBLEMS as e:
        raise fail(str(e)) from None
    left_out = result.left_out
    record_run(s, "audience export", started, audience=name, rows=len(result.rows), left_out=left_out)
    why = "; ".join(f"{n:,} {reason}" for reason, n in left_out.items())
    return emit({"name": name, "out": out, "rows": len(result.rows), "left_out": left_out}, as_json,
                f"{len(result.rows):,} customers of {name} written to {out}; left out: {why}")


@audience_app.command("fields")
def fields(as_json: Json = False) -> dict:
    """The fields a filter can use (the profile table's columns) and their kinds: number, text, bool, time."""
    try:
        found = audience_profile.fields(Settings())
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    frame = pd.DataFrame({"field": list(found), "kind": list(found.values())})
    return emit({"fields": found}, as_json, table("fields", frame))
