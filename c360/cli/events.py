"""`c360 events push FILE.jsonl` and `c360 events consume`: live events from a file or a Kafka topic, through the
same handler as `POST /events`.

`handle` is the one call site of both: a batch is checked, appended to the event log and fsynced like a request,
its customers are updated live as by the service (`c360.serving.live`: features, history, predictions, with the
champions loaded once by the command), and one audit record names the batch's customers (what the service's
middleware writes for a request). The file holds one event per line (the format of `POST /events`,
docs/CONTRACT.md "Live events"), sent in batches of `c360.features.event_log.MAX_BATCH`; a line that is not JSON is
rejected with that reason. The topic is read by `c360.features.event_stream` (batches, commit after the batch is
durable, clean stop on Ctrl+C or SIGTERM).
`c360 ingest` then folds the log into the warehouse.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer
from rich.markup import escape

from c360.cli.ui import Json, audited, emit, fail, progress, record_run, stderr, table
from c360.core.settings import Settings
from c360.features import event_log, event_stream

if TYPE_CHECKING:  # the serving stack (Feast, the models) loads when a command needs it, not for every command
    from c360.serving.online import Context

events_app = typer.Typer(help="Live events: push a file of events, or consume a Kafka topic, into the event log "
                              "(`c360 ingest` folds it into the warehouse).", no_args_is_help=True)
SHOWN = 20  # rejected lines listed for people (all of them with --json)


def handle(s: Settings, action: str, events: Sequence[Any], context: Callable[[], Context] | None = None
           ) -> dict[str, Any]:
    """The handler of `POST /events` for a command's batch, audited as `action`: `event_log.accept`'s answer and
    the live update of its customers (`live`); the audit record names the customers the events name and those
    updated live. A command handing over many batches passes one `context` (the champions loaded once)."""
    from c360.serving.live import live_update

    customers = event_log.customers_named(events)
    with audited(s, action, customers):  # reads `customers` when the batch is done
        answer, new = event_log.receive(s, events)
        live = live_update(s, context or _context(s), new)
        customers += [c for c in live.pop("customers", []) if c not in customers]
    return {**answer, "live": live}


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
    updated, context = {"updated": 0}, _context(s)
    with progress("pushing events", len(events)) as advance:
        for first in range(0, len(events), batch):
            answer = handle(s, "c360 events push", events[first:first + batch], context)
            done = answer.pop("live")
            updated = {**done, "updated": updated["updated"] + done["updated"]}
            totals = {k: totals[k] + answer[k] for k in totals}
            rejected += [{"line": r.pop("index") + first + 1, **r} for r in answer["rejected"]]
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
    from c360.serving import online
    from c360.serving.champions import Champions
    from c360.serving.online import Context

    return cache(lambda: Context(s, online.feature_store(s), Champions.load(s.home, online.latest_snapshot(s))))


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl+C or SIGTERM (instead of an exception mid-batch); the old handlers back afterwards."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _counted(messages: Iterator[event_stream.Message | None], advance: Callable[[int], None]
             ) -> Iterator[event_stream.Message | None]:
    for message in messages:
        advance(message is not None)
        yield message


def _warn(line: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)


def _options(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise fail(f"--option {bad[0]}: expected KEY=VALUE (a librdkafka setting)")
    return dict(p.split("=", 1) for p in pairs)


@events_app.command()
def consume(
    bootstrap: Annotated[str, typer.Option(help="the Kafka brokers, HOST:PORT[,HOST:PORT...]")],
    topic: Annotated[str, typer.Option(help="the topic to read")],
    group: Annotated[str, typer.Option(help="consumer group: where it stopped is where it resumes")] = "c360",
    batch: Annotated[int, typer.Option(min=1, max=event_log.MAX_BATCH, help="events per batch at most")] = 500,
    max_messages: Annotated[int | None, typer.Option(
        min=1, help="stop after this many messages (default: run until Ctrl+C or SIGTERM)")] = None,
    option: Annotated[list[str] | None, typer.Option(
        help="a librdkafka setting KEY=VALUE, e.g. security.protocol=SASL_SSL; repeatable")] = None,
    as_json: Json = False,
) -> dict:
    """Consume a Kafka topic into the event log, through the handler of `POST /events`: each message is one JSON
    event, a JSON list of events or a {"events": [...]} batch; messages are collected into batches (handed over
    when full or when the topic is idle), and a batch's offsets are committed only after its events are on disk
    (at-least-once: a redelivered event_id is acknowledged and ignored); a message that is not JSON is rejected
    into the quarantine with its reason, like a bad event; Ctrl+C or SIGTERM stops after the current batch is
    logged and committed. Needs the Kafka client: pip install "c360\\[kafka]" (uv sync --extra kafka)."""
    s, started = Settings(), time.time()
    try:
        consumer = event_stream.kafka_consumer(bootstrap, topic, group, _options(option or []))
    except (ImportError, ValueError) as e:
        raise fail(str(e)) from None
    try:
        with _stop_on_signals() as stop, progress(f"consuming {topic}", max_messages) as advance:
            messages = _counted(event_stream.kafka_messages(consumer, stop.is_set, _warn), advance)
            context = _context(s)
            totals = event_stream.consume(messages,
                                          lambda events: handle(s, "c360 events consume", events, context),
                                          event_stream.kafka_commit(consumer), batch=batch,
                                          max_messages=max_messages, stopping=stop.is_set)
    except (RuntimeError, OSError) as e:
        raise fail(str(e)) from None
    finally:
        consumer.close()
    summary = {k: v for k, v in vars(totals).items() if k not in ("first_rejected", "committed")}
    record_run(s, "events consume", started, topic=topic, group=group, **summary)
    result = {"topic": topic, "group": group, **vars(totals), "log": event_log.log_path(s)}
    shown = pd.DataFrame(totals.first_rejected, columns=["partition", "offset", "event_id", "reason"])
    return emit(result, as_json, table(f"rejected events (the first {event_stream.SHOWN})", shown),
                f"{totals.messages:,} messages, {totals.events:,} events: {totals.accepted:,} accepted, "
                f"{totals.duplicates:,} duplicates, {totals.suppressed:,} of erased people dropped, "
                f"{totals.rejected:,} rejected (kept in the quarantine); offsets committed: "
                f"{totals.committed or 'none'} → {event_log.log_path(s)}")
