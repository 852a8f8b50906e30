"""`c360 events push FILE.jsonl`: live events from a file, through the same handler as `POST /events`.

The file holds one event per line (the format of `POST /events`, docs/CONTRACT.md "Live events"); it is sent in
batches of `c360.features.event_log.MAX_BATCH`, each checked, appended to the event log and fsynced like a request.
A line that is not JSON is rejected with that reason. After each batch its customers are updated live as by the
service (`c360.serving.live`: features, history, predictions), with the champions loaded once by the command.
`c360 ingest` then folds the log into the warehouse.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from c360.cli.ui import Json, audited, emit, fail, progress, record_run, table
from c360.core.settings import Settings
from c360.features import event_log
from c360.serving import online
from c360.serving.champions import Champions
from c360.serving.live import live_update
from c360.serving.online import Context

events_app = typer.Typer(help="Live events: push a file of events into the event log (`c360 ingest` folds it into "
                              "the warehouse).", no_args_is_help=True)
SHOWN = 20  # rejected lines listed for people (all of them with --json)


def _read(path: Path) -> list[Any]:
    """The file's events, one per line; a line that is not JSON (a blank one too) as `event_log.Unreadable`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise fail(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise fail(f"{path}: not UTF-8 encoded (byte {e.start})") from None
    except OSError as e:
        raise fail(f"{path}: cannot read ({e.strerror})") from None
    events: list[Any] = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append(event_log.Unreadable(line))
    return events


@events_app.command()
def push(
    file: Annotated[Path, typer.Argument(help="JSON-lines file, one event per line")],
    as_json: Json = False,
) -> dict:
    """Check the events of FILE, append the new valid ones to the event log (on disk when this ends) and keep the
    rejected ones with their reason; an event_id the log already holds is counted as a duplicate and ignored."""
    s, started = Settings(), time.time()
    events = _read(file)
    totals = {"accepted": 0, "duplicates": 0, "suppressed": 0}
    rejected: list[dict[str, Any]] = []
    batch = event_log.MAX_BATCH
    customers = event_log.customers_named(events)  # the audit record, written at the end, adds those updated live
    updated, context = {"updated": 0}, _context(s)
    with audited(s, "c360 events push", customers), progress("pushing events", len(events)) as advance:
        for first in range(0, len(events), batch):
            answer, new = event_log.receive(s, events[first:first + batch])
            totals = {k: totals[k] + answer[k] for k in totals}
            rejected += [{"line": r.pop("index") + first + 1, **r} for r in answer["rejected"]]
            done = live_update(s, context, new)
            customers += [c for c in done.pop("customers", []) if c not in customers]
            updated = {**done, "updated": updated["updated"] + done["updated"]}
            advance(len(events[first:first + batch]))
    record_run(s, "events push", started, events=len(events), rejected=len(rejected), **totals)
    result = {"file": file, "events": len(events), **totals, "rejected": rejected, "live": updated,
              "log": event_log.log_path(s)}
    shown = pd.DataFrame(rejected[:SHOWN], columns=["line", "event_id", "reason"])
    more = f" (the first {SHOWN}; all of them with --json)" if len(rejected) > SHOWN else ""
    return emit(result, as_json, table(f"rejected events{more}", shown),
                f"{len(events):,} events: {totals['accepted']:,} accepted, {totals['duplicates']:,} duplicates, "
                f"{totals['suppressed']:,} of erased people dropped, {len(rejected):,} rejected → "
                f"{event_log.log_path(s)} (`c360 ingest` folds it into the warehouse); "
                + (f"live update failed: {updated['error']}" if "error" in updated
                   else f"{updated['updated']:,} customers updated live"))


def _context(s: Settings) -> Callable[[], Context]:
    """The feature store and champions the live update scores with, loaded once per command when first needed."""
    return cache(lambda: Context(s, online.feature_store(s), Champions.load(s.home, online.latest_snapshot(s))))
