"""`POST /events` against a real `bentoml serve` (two workers) over a fresh home with a key of each role: the roles,
the answers (200 with the rejected events' reasons, 422 for a body that is not a batch), the audit record, the
calls to the live updater (none lost under 8 clients; a stalled one is still a 200, in seconds), and durability —
the server's process group SIGKILLed mid-stream, every acknowledged event is in the log, and after the fold in the
warehouse exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from c360.core import audit, keys, warehouse
from c360.core.settings import Settings
from c360.features import event_log
from c360.serving.server import serve_command, start, stop, wait_ready
from tests.serving.conftest import bearer, free_port

LIVE_WAIT = 2  # seconds a worker waits for the live updater, each of two attempts


class Server:
    """A `bentoml serve` of `s.home` that can be killed and started again on the same port."""

    def __init__(self, s: Settings, log: Path) -> None:
        self.s, self.log, self.port = s, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Any = None

    def start(self) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("C360_RELOAD_SECONDS", "0")
            patch.setenv("C360_LIVE_WAIT_SECONDS", str(LIVE_WAIT))
            command, env = serve_command(self.port, "127.0.0.1", 2, self.s)
        with self.log.open("a") as out:
            self.process = start(command, env, out)
        try:
            wait_ready(f"{self.url}/livez", self.process)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.log.read_text()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL to the server and its workers: BentoML's workers run in process groups of their own, so a
        group kill would leave them serving (and holding the port) after the 'crash'."""
        tree = [self.process.pid, *(p.pid for p in psutil.Process(self.process.pid).children(recursive=True))]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    root = tmp_path_factory.mktemp("events")
    s = Settings(home=root / "home")
    api_keys = {role: keys.create(s, f"test-{role}", role) for role in keys.ROLES}
    server = Server(s, root / "serve.log")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENTOML_HOME", str(root / "bentoml"))
        server.start()
        try:
            yield server, api_keys
        finally:
            stop(server.process)


def login(event_id: str, customer_id: str | None = None) -> dict[str, Any]:
    event = {"event_id": event_id, "kind": "login", "at": "2025-03-01T10:00:00Z", "user_id": "U-1"}
    return event | ({"customer_id": customer_id} if customer_id else {})


def test_roles_answers_and_audit(served: tuple[Server, dict[str, str]]) -> None:
    server, api_keys = served
    batch = {"events": [login("r1", "C00000042"), {"event_id": "r2", "kind": "logout", "at": "2025-03-01"}]}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        status = {role: http.post("/events", json=batch, headers=bearer(key)).status_code
                  for role, key in api_keys.items()}
        no_key = http.post("/events", json=batch).status_code
        answer = http.post("/events", json=batch, headers=bearer(api_keys["service"])).json()
        service = bearer(api_keys["service"])
        malformed = [http.post("/events", headers=service, **body).status_code for body in (
            {"json": {"events": "r1"}}, {"json": [login("r3")]}, {"json": {"events": [], "more": 1}},
            {"json": {"events": [login(f"x{i}") for i in range(event_log.MAX_BATCH + 1)]}})]
        not_json = http.post("/events", content=b"{not json",
                             headers={**service, "content-type": "application/json"}).status_code
    assert status == {"admin": 200, "csm": 403, "analyst": 403, "service": 200}
    assert no_key == 401
    assert answer["accepted"] == 0 and answer["duplicates"] == 1  # the admin's request logged it
    assert [(r["index"], r["event_id"]) for r in answer["rejected"]] == [(1, "r2")]
    assert answer["rejected"][0]["reason"].startswith("kind: not one of login")
    assert malformed == [422] * 4 and not_json == 422
    records = [r for r in audit.records(server.s) if r["action"] == "POST /events"]
    assert {r["status"] for r in records} >= {200, 403, 401}
    assert all(r["customers"] == ["C00000042"] for r in records if r["status"] == 200)


def test_a_stalled_updater_is_the_answers_live_error_not_a_504(served: tuple[Server, dict[str, str]]) -> None:
    """The live updater's process stopped (SIGSTOP): its socket still accepts, nothing answers. The event is
    acknowledged all the same, the answer saying the live update did not run, after the worker's two bounded
    waits rather than BentoML's 60 s."""
    server, api_keys = served
    updater = next(p for p in psutil.Process(server.process.pid).children(recursive=True)
                   if "c360-live" in p.cmdline())
    updater.suspend()
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers=bearer(api_keys["service"])) as http:
            answer = http.post("/events", json={"events": [login("stalled", "C00000042")]})
    finally:
        updater.resume()
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    assert answer.json()["live"] == {"updated": 0, "error": "live updater unavailable: see the server log"}
    assert answer.elapsed.total_seconds() < 4 * LIVE_WAIT
    assert "live updater unreachable (attempt 2 of 2)" in server.log.read_text()


def test_eight_clients_posting_hundreds_of_batches_lose_no_call_to_the_updater(
        served: tuple[Server, dict[str, str]]) -> None:
    """BentoML's client of a dependency renews its connections every 100 calls by default, failing the calls
    under way on them; the updater's client keeps them: 8 clients' 400 batches, not one call to the updater
    tried twice."""
    server, api_keys = served
    logged = len(server.log.read_text())

    def client(n: int) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=30, headers=bearer(api_keys["service"])) as http:
            return [http.post("/events", json={"events": [login(f"c{n}-{i}", "C00000042")]}).status_code
                    for i in range(50)]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for answers in pool.map(client, range(8)) for s in answers]
    assert statuses == [200] * 400
    assert "live updater unreachable" not in server.log.read_text()[logged:]


def _post_until_refused(url: str, key: str, acknowledged: list[str], stop_posting: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30, headers=bearer(key)) as http:
        n = 0
        while not stop_posting.is_set():
            batch = [login(f"d{n}-{i}") for i in range(50)]
            try:
                answer = http.post("/events", json={"events": batch})
            except httpx.HTTPError:
                return
            if answer.status_code != 200 or answer.json()["accepted"] != len(batch):
                return
            acknowledged.extend(e["event_id"] for e in batch)
            n += 1


def test_an_acknowledged_event_survives_a_kill_and_is_folded_exactly_once(
        served: tuple[Server, dict[str, str]]) -> None:
    server, api_keys = served
    acknowledged: list[str] = []
    stop_posting = threading.Event()
    poster = threading.Thread(target=_post_until_refused,
                              args=(server.url, api_keys["service"], acknowledged, stop_posting))
    poster.start()
    while len(acknowledged) < 500 and poster.is_alive():
        threading.Event().wait(0.05)
    server.kill()  # mid-stream: the poster has a request in flight, or is about to send one
    stop_posting.set()
    poster.join(30)
    assert len(acknowledged) >= 500

    logged = [r["event"]["event_id"] for _, r in event_log.read_log(event_log.log_path(server.s))]
    logged = [i for i in logged if i.startswith("d")]
    assert set(acknowledged) <= set(logged)
    assert len(logged) == len(set(logged))

    server.start()
    with httpx.Client(base_url=server.url, timeout=30, headers=bearer(api_keys["service"])) as http:
        again = http.post("/events", json={"events": [login(i) for i in acknowledged[-50:]]}).json()
    assert (again["accepted"], again["duplicates"]) == (0, 50)

    with warehouse.connect(server.s) as con:
        event_log.fold(server.s, con)
        event_log.fold(server.s, con)
        rows = con.execute("SELECT count(*), count(DISTINCT event_id) FROM product_events "
                           "WHERE event_id LIKE 'd%'").fetchone()
    assert rows == (len(logged), len(logged))
