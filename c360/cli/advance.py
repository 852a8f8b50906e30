"""`c360 advance`: move the generated world forward by N weeks, with actions taken at its start (see
c360.features.advance): a new batch of source files for `c360 ingest`, a stream of events for `c360 events push`,
or both, and the step's ground truth beside the world's."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import duckdb
import pandas as pd
import typer

from c360.cli.ui import Json, audited, emit, fail, progress, record_run, table
from c360.core import warehouse
from c360.core.contract import ACTIONS
from c360.core.settings import Settings
from c360.features.synth.advance import SHIFTS


def advance(
    weeks: Annotated[int, typer.Option(min=1, help="weeks to move the world forward (52 past its end in all)")],
    world: Annotated[Path | None, typer.Option("--from", help="the generated world "
                                               "[default: C360_HOME/data/generated]")] = None,
    actions: Annotated[Path | None, typer.Option(
        help=f"CSV of actions taken at the start: `action` ({', '.join(ACTIONS)}) and `customer_id`, "
             "`account_id` (CRM key) or `account` (the generator's number)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the batch of source files, <silo>/<table>_<date>.csv "
                                                  "[default: the world's folder, unless --events]")] = None,
    events: Annotated[Path | None, typer.Option(help="write the step as a stream of events (JSON lines) here")] = None,
    shift: Annotated[str | None, typer.Option(help="a change of the world from this step on, KIND:REGION: "
                                              + "; ".join(f"{k}: {v}" for k, v in SHIFTS.items()))] = None,
    as_json: Json = False,
) -> dict:
    """Move the generated world forward: new product events, tickets, invoices, payments, plan changes, NPS
    answers, sends and consents of the next weeks, with their ground truth (who churned, the actions' outcomes)."""
    from c360.features.advance import AdvanceError
    from c360.features.advance import advance as run
    from c360.features.synth.advance import Shift

    s, started = Settings(), time.time()
    world = world or s.generated
    out = out or (None if events else world)
    try:
        customers = json.loads((world / "ground_truth" / "manifest.json").read_text())["customers"]
    except (OSError, ValueError, KeyError):
        raise fail(f"{world}: no generated world here (run `c360 generate` first)") from None
    try:
        shifted = Shift.parse(shift) if shift else None
    except ValueError as e:
        raise fail(str(e)) from None
    try:
        chosen, named = _actions(s, actions)
        with audited(s, "c360 advance", named) if named else nullcontext(), \
                progress("advancing customers", customers) as moved:
            report = run(world, weeks, chosen, out=out, events=events, on_chunk=moved, shift=shifted)
    except AdvanceError as e:
        raise fail(str(e)) from None
    record_run(s, "advance", started, world=world, weeks=weeks, start=report.start, treated=report.treated,
               events=report.events, shift=shift)
    result = {"world": world, "out": out, "events_file": events, **vars(report)}
    files = pd.DataFrame(report.rows.items(), columns=["file", "rows"])
    return emit(result, as_json, table(f"{report.start} → {report.end}: batch in {out}", files),
                f"{report.subscribed:,} subscribed at the start, {report.churned:,} churned, {report.treated:,} "
                f"treated; {report.events:,} events" + (f" in {events}" if events else ""))


def _actions(s: Settings, path: Path | None) -> tuple[pd.DataFrame | None, list[str]]:
    """The actions file's rows, and the c360 customer ids it names (mapped to their CRM accounts)."""
    from c360.features.advance import AdvanceError, with_account_ids

    if path is None:
        return None, []
    try:
        actions = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as e:
        raise AdvanceError(f"{path}: cannot read the actions ({e})") from None
    if "customer_id" not in actions.columns:
        return actions, []
    if not s.warehouse.exists():
        raise AdvanceError("actions name customer ids, but there is no warehouse to map them: run `c360 ingest` "
                           "and `c360 resolve` first, or name accounts (account_id)")
    try:
        with warehouse.connect(s, read_only=True) as con:
            return with_account_ids(con, actions), actions["customer_id"].tolist()
    except duckdb.Error as e:
        raise AdvanceError(f"cannot map customer ids to accounts ({e.__class__.__name__}): run `c360 resolve` "
                           "first?") from None
