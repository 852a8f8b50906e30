"""A stream of live events into the event log: what `c360 events consume` does with a Kafka topic.

The logic is `consume(messages, handle, commit)`, apart from any client: `messages` is an iterable of `Message`
(None when the stream is idle), `handle` is the handler of `POST /events` (`event_log.accept`, through the CLI's
one call site), `commit` records how far the stream is read. A message holds one JSON event, a JSON list of events
or a `{"events": [...]}` batch (the body of `POST /events`); a message that is not JSON becomes one
`event_log.Unreadable` event, so the handler rejects it into the quarantine with that reason: kept, not lost, not
fatal.

Messages are collected into batches of at most `batch` events, handed over when a batch is full, when the stream
is idle (nothing waits for a full batch) and when the consumer stops. The offsets of a batch are committed only
after the handler returned, that is after its events are fsynced in the log: at-least-once. A consumer killed
between the two reads the batch again, and the log acknowledges the repeated event ids and ignores them. A handler
that raises stops the consumer with nothing committed for its batch.

`kafka_messages` and `kafka_commit` adapt a confluent-kafka `Consumer` (the optional extra `c360[kafka]`) to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from c360.features import event_log

SHOWN = 20  # rejected events kept in the totals (all of them are in the quarantine)
INSTALL = "pip install 'c360[kafka]'  (from a checkout: uv sync --extra kafka)"


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    value: bytes | None


Handler = Callable[[list[Any]], dict[str, Any]]  # a batch of events → event_log.accept's answer
Offsets = dict[tuple[str, int], int]  # (topic, partition) → the next offset to read
Commit = Callable[[Offsets], None]


@dataclass
class Totals:
    messages: int = 0
    events: int = 0
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    suppressed: int = 0
    rejected: int = 0
    first_rejected: list[dict[str, Any]] = field(default_factory=list)
    committed: dict[str, int] = field(default_factory=dict)  # "topic/partition" → next offset


def events_of(value: bytes | None) -> list[Any]:
    """A message's events (see the module's docstring)."""
    try:
        document = json.loads(value or b"")
    except ValueError:  # not JSON, or not UTF-8
        return [event_log.Unreadable((value or b"").decode("utf-8", "replace"))]
    if isinstance(document, dict) and "kind" not in document and isinstance(document.get("events"), list):
        return list(document["events"])
    return document if isinstance(document, list) else [document]


def consume(messages: Iterable[Message | None], handle: Handler, commit: Commit, *, batch: int = event_log.MAX_BATCH,
            max_messages: int | None = None, stopping: Callable[[], bool] = lambda: False) -> Totals:
    """Read `messages` until they end, `max_messages` are read or `stopping()` says so; each batch handled, then
    committed. Returns what was read and what the handler answered."""
    totals = Totals()
    pending: list[tuple[Message, Any]] = []
    for message in messages:
        if message is None:
            _flush(pending, handle, commit, totals)
        else:
            totals.messages += 1
            pending += [(message, e) for e in events_of(message.value)]
            if len(pending) >= batch:
                _flush(pending, handle, commit, totals)
        if stopping() or (max_messages is not None and totals.messages >= max_messages):
            break
    _flush(pending, handle, commit, totals)
    return totals


def _flush(pending: list[tuple[Message, Any]], handle: Handler, commit: Commit, totals: Totals) -> None:
    """Hand the pending events over (in slices the handler takes), then commit their messages; empties `pending`."""
    if not pending:
        return
    for first in range(0, len(pending), event_log.MAX_BATCH):
        part = pending[first:first + event_log.MAX_BATCH]
        answer = handle([event for _, event in part])
        for key in ("accepted", "duplicates", "suppressed"):
            setattr(totals, key, getattr(totals, key) + answer[key])
        totals.rejected += len(answer["rejected"])
        for r in answer["rejected"][:max(0, SHOWN - len(totals.first_rejected))]:
            m = part[r["index"]][0]
            totals.first_rejected.append({"topic": m.topic, "partition": m.partition, "offset": m.offset,
                                          "event_id": r["event_id"], "reason": r["reason"]})
    offsets = next_offsets(m for m, _ in pending)
    commit(offsets)
    totals.events += len(pending)
    totals.batches += 1
    totals.committed.update({f"{t}/{p}": o for (t, p), o in offsets.items()})
    pending.clear()


def next_offsets(messages: Iterable[Message]) -> Offsets:
    """Per partition, the offset after the last message read: what a Kafka commit records."""
    out: Offsets = {}
    for m in messages:
        out[(m.topic, m.partition)] = max(out.get((m.topic, m.partition), 0), m.offset + 1)
    return out


# ---------------------------------------------------------------- Kafka (confluent-kafka)


def kafka_consumer(bootstrap: str, topic: str, group: str, options: dict[str, str]) -> Any:
    """A confluent-kafka consumer subscribed to `topic`, committing only when told (`kafka_commit`); ImportError
    naming the extra when the client is not installed."""
    try:
        from confluent_kafka import Consumer, KafkaException
    except ImportError:
        raise ImportError(f"the Kafka client is not installed: {INSTALL}") from None
    try:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", **options})
    except KafkaException as e:  # a setting librdkafka does not know or accept
        raise ValueError(f"Kafka consumer: {e.args[0].str()}") from None
    consumer.subscribe([topic])
    return consumer


def kafka_messages(consumer: Any, stopping: Callable[[], bool], warn: Callable[[str], None],
                   poll_seconds: float = 1.0) -> Iterator[Message | None]:
    """The consumer's messages, None after each `poll_seconds` without one (so `stopping` is looked at); a
    transient error (broker away, unknown topic) is passed to `warn` once in a row, librdkafka retries it, a fatal
    one raises."""
    last = None
    while not stopping():
        message = consumer.poll(poll_seconds)
        if message is None:
            yield None
        elif message.error():
            error = message.error()
            if error.fatal():
                raise RuntimeError(f"Kafka: {error.str()}")
            if error.str() != last:
                warn(f"Kafka: {error.str()} (retrying)")
            last = error.str()
        else:
            last = None
            yield Message(message.topic(), message.partition(), message.offset(), message.value())


def kafka_commit(consumer: Any) -> Commit:
    from confluent_kafka import KafkaException, TopicPartition

    def commit(offsets: Offsets) -> None:
        try:
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as e:  # the batch is logged: its redelivery is acknowledged and ignored
            raise RuntimeError(f"Kafka: commit failed ({e.args[0].str()}); the batch is logged") from None

    return commit
