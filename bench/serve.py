"""Profile latency and throughput of the c360 service against `feast serve` reading one entity, in the same run.

Both servers run on the same C360_HOME (default: $C360_HOME) with the same number of worker processes, access
logs off, on loopback:

* ours: `c360 serve` (BentoML), `GET /customers/{id}/profile` — the whole profile: every feature of `profile_v1`
  plus the `predictions` view in one online read, every champion's scores and reasons from the batch run (fresh;
  churn, CLV, next best action, and expansion and response when they have one), the derived signals, the call
  brief, JSON — as a `csm` key (`bench`, made here) asks for it: the key checked and an audit record appended for
  every request, as in production;
* baseline: `feast serve --max-requests 0` (workers are otherwise recycled every 1,000 requests), `POST
  /get-online-features` of the features of service `profile_v1`, listed by name, for one customer — Feast's own
  feature read. Listed rather than named by service: `feast serve` resolves a named service from its registry on
  every request (≈ 13 ms of CPU in process on the demo home), which would make the baseline slower than it need be.

Load: a small asyncio HTTP/1.1 keep-alive client in a separate process (request bytes written by hand, so the
client costs little CPU on the shared 2 cores), random customers of the latest snapshot; one client for the
latency floor, then 8 concurrent clients for `--seconds` each, connecting 30 ms apart. Every response must be 200.
The section states what one answer held (the models scored, the brief) and, beside this run's ratios to Feast, the
previous run's from RESULTS.md: the lead over Feast must not shrink as the profile grows.

Then the profile page's calls under concurrent use (issue 18): 8 clients for `--page-seconds` on
`GET /customers/{id}/profile?details=true` and on the plain profile (the baseline), errors counted: any answer but
200, or a dropped connection.

Run from the repo root: `python -m bench.serve [--home DIR --workers 2 --seconds 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _client(port: int, requests: list[bytes], until: float, latencies: list[float], errors: list[str],
                  delay: float = 0.0) -> None:
    """Requests on one keep-alive connection until `until`; a non-200 answer or a dropped connection is an error
    (and the client reconnects)."""
    await asyncio.sleep(delay)
    i = 0
    while time.perf_counter() < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < until:
                started = time.perf_counter()
                status = await _exchange(reader, writer, requests[i % len(requests)])
                latencies.append(time.perf_counter() - started)
                if status != b"200":
                    errors.append(status.decode())
                i += 1
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            errors.append(type(e).__name__)
            i += 1
        finally:
            writer.close()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """Send one request, read its whole answer; its status code."""
    return (await exchange(reader, writer, request))[0]


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[bytes, bytes]:
    """Send one request, read its whole answer; its status code and body."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    body = await reader.readexactly(length)
    return head.split(b" ", 2)[1], body


CONNECT_GAP = 0.03  # seconds between two clients' connects


def _load(port: int, requests: list[bytes], clients: int, seconds: float, out: multiprocessing.Queue) -> None:
    async def main() -> tuple[list[float], list[str]]:
        latencies: list[float] = []
        errors: list[str] = []
        shuffled = [random.Random(c).sample(requests, len(requests)) for c in range(clients)]
        until = time.perf_counter() + seconds
        # Connections open CONNECT_GAP apart, as clients arrive: opened in one burst, they all landed on one of
        # c360's two workers (each worker's loop accepts every pending connection at once), leaving a core idle.
        await asyncio.gather(*(_client(port, shuffled[c], until, latencies, errors, c * CONNECT_GAP)
                               for c in range(clients)))
        return latencies, errors

    started = time.perf_counter()
    latencies, errors = asyncio.run(main())
    out.put((latencies, errors, time.perf_counter() - started))


def load(port: int, requests: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """Run the load generator in its own process; p50 / p99 (ms), requests/s, and the errors (non-200 statuses,
    dropped connections)."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=_load, args=(port, requests, clients, seconds, queue))
    process.start()
    latencies, errors, elapsed = queue.get()
    process.join()
    ms = np.asarray(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "rps": len(ms) / elapsed, "requests": float(len(ms)), "errors": errors}


def checked(port: int, requests: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """`load`, stopping the benchmark at any error: figures of failed requests mean nothing."""
    result = load(port, requests, clients, seconds)
    if result["errors"]:
        raise SystemExit(f"{len(result['errors'])} errors on port {port}, e.g. {result['errors'][:3]}")
    return result


def get(path: str, host: str, key: str) -> bytes:
    """A GET request's bytes, with the API key `key` as Bearer."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()


def post(path: str, host: str, body: dict, key: str | None = None) -> bytes:
    """A POST request's bytes with a JSON body, and the API key `key` as Bearer if given."""
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants (the server's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        procs[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree, grown = {pid}, True
    while grown:
        children = {p for p, (parent, _) in procs.items() if parent in tree} - tree
        tree, grown = tree | children, bool(children)
    return sum(procs[p][1] for p in tree if p in procs) / tick


def measure(name: str, server: subprocess.Popen, port: int, requests: list[bytes],
            seconds: float) -> dict[str, dict[str, float]]:
    checked(port, requests, 8, min(5.0, seconds))  # warm-up: imports, caches, page cache
    one = checked(port, requests, 1, seconds)
    cpu = process_tree_cpu(server.pid)
    eight = checked(port, requests, 8, seconds)
    eight["cpu_ms"] = (process_tree_cpu(server.pid) - cpu) / eight["requests"] * 1000
    print(f"{name}: 1 client p50 {one['p50']:.2f} p99 {one['p99']:.2f} ms; 8 clients p50 {eight['p50']:.2f} "
          f"p99 {eight['p99']:.2f} ms, {eight['rps']:.0f} req/s, server CPU {eight['cpu_ms']:.2f} ms per request",
          flush=True)
    return {"one": one, "eight": eight}


def speed() -> float:
    """Seconds of one CPU-bound pure-Python loop: how fast this (shared, virtual) machine is right now."""
    started = time.process_time()
    sum(range(20_000_000))
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("C360_HOME", ".c360")))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--page-seconds", type=float, default=30.0, help="per path of the profile page's load")
    args = parser.parse_args()

    from c360.core import audit, keys
    from c360.features import store
    from c360.serving.server import serve_command, start, stop, wait_ready

    home = args.home.resolve()
    os.environ["C360_HOME"] = str(home)
    from c360.core.settings import Settings

    s = Settings(home=home)
    key = keys.create(s, "bench", "csm", replace_active=True)  # the profile page's calls, with auth and audit on
    customers = store.read_snapshot(s, store.snapshot_dates(s)[-1])["customer_id"].sample(
        2000, random_state=0, replace=True).tolist()
    results = {}
    load_before, speed_before = os.getloadavg()[0], speed()
    with tempfile.TemporaryDirectory() as tmp:
        ours_port, feast_port = free_port(), free_port()
        command, env = serve_command(ours_port, "127.0.0.1", args.workers)
        env |= {"BENTOML_HOME": str(Path(tmp) / "bentoml"), "C360_RELOAD_SECONDS": "0"}
        ours = start(command, env)
        try:
            wait_ready(f"http://127.0.0.1:{ours_port}/readyz", ours)
            host = f"127.0.0.1:{ours_port}"
            held = contents(ours_port, customers[0], key)
            results["ours"] = measure("c360 profile", ours, ours_port,
                                      [get(f"/customers/{c}/profile", host, key) for c in customers], args.seconds)
            concurrent = page_load(ours_port, host, key, customers, args.page_seconds)
        finally:
            stop(ours)
        repo = store.write_yaml(s)  # what `c360 features apply` writes
        refs = [f"{p.name_to_use()}:{f.name}" for p in
                store.feature_store(s).get_feature_service("profile_v1").feature_view_projections for f in p.features]
        feast = start([str(Path(sys.executable).with_name("feast")), "-c", str(repo), "serve", "--port",
                       str(feast_port), "--workers", str(args.workers), "--max-requests", "0", "--no-access-log"],
                      dict(os.environ))
        try:
            wait_ready(f"http://127.0.0.1:{feast_port}/health", feast)
            host = f"127.0.0.1:{feast_port}"
            body = [post("/get-online-features", host, {"features": refs, "entities": {"customer_id": [c]}})
                    for c in customers]
            results["feast"] = measure("feast serve, one entity", feast, feast_port, body, args.seconds)
        finally:
            stop(feast)
    load_after, speed_after = os.getloadavg()[0], speed()
    customers_stored = len(store.read_snapshot(s, store.snapshot_dates(s)[-1]))
    mine, theirs = results["ours"], results["feast"]
    p99_ratio = mine["eight"]["p99"] / theirs["eight"]["p99"]
    rps_ratio = mine["eight"]["rps"] / theirs["eight"]["rps"]
    verdict_p99 = "meets" if p99_ratio <= 0.6 else "misses"
    verdict_rps = "meets" if rps_ratio >= 1.5 else "misses"
    trail = audit.verify(s)
    before = previous_ratios()
    rows = "\n".join(
        f"| {label} | {r['one']['p50']:.2f} / {r['one']['p99']:.2f} ms | {r['eight']['p50']:.2f} / "
        f"{r['eight']['p99']:.2f} ms | {r['eight']['rps']:,.0f} | {r['eight']['cpu_ms']:.2f} ms |"
        for label, r in ((f"ours: `GET /customers/{{id}}/profile` (features + {held}), a `csm` key checked and an "
                          "audit record appended per request", mine),
                         ("baseline: `feast serve --max-requests 0`, the features of `profile_v1` for one entity",
                          theirs)))
    record("serving", f"""
{customers_stored:,} customers (the demo home), {args.workers} worker processes each, access logs off, loopback;
load from an asyncio keep-alive HTTP/1.1 client in its own process on the same 2 cores, random customers, the 8
clients connecting 30 ms apart (in one burst all 8 landed on one of c360's workers), {args.seconds:.0f} s per
measurement after a warm-up; every response 200. 1-minute load average {load_before:.1f} at
the start, {load_after:.1f} at the end; a pure-Python loop of 20M additions took {speed_before:.2f} s before and
{speed_after:.2f} s after (this virtual machine's speed varies with its host: compare the two rows, not the absolute
figures). Server CPU per request is the user + system time of the server's processes during the 8-client
measurement over its requests: the cost of one answer, whatever the machine's load. Scores were fresh (`c360
score` on the same snapshot and champions), so the profile reads them from the `predictions` view instead of
computing them.

| path | 1 client p50 / p99 | 8 clients p50 / p99 | req/s, 8 clients | server CPU per request |
|---|---|---|---|---|
{rows}

Targets, with API keys and the audit trail on (issue 20): p99 at 8 clients ≤ 0.6× Feast's — {verdict_p99}
({mine['eight']['p99']:.2f} vs {theirs['eight']['p99']:.2f} ms, {p99_ratio:.2f}×); throughput ≥ 1.5× Feast's —
{verdict_rps} ({mine['eight']['rps']:,.0f} vs {theirs['eight']['rps']:,.0f} req/s, {rps_ratio:.2f}×). The audit
trail held {trail.records:,} chained records after the run (`c360 audit verify`: {"intact" if trail.ok else
trail.problem}).
{compared(before, p99_ratio, rps_ratio)}
""")

    record_page_load(concurrent, customers_stored, args.workers, args.page_seconds)


def contents(port: int, customer: str, key: str) -> str:
    """What one profile answer holds beyond the features: the models that scored it, and the brief."""
    import httpx

    out = httpx.get(f"http://127.0.0.1:{port}/customers/{customer}/profile",
                    headers={"Authorization": f"Bearer {key}"}, timeout=60).raise_for_status().json()
    scored = [name for name, part in out["future"].items() if isinstance(part, dict) and part.get("model")]
    brief = " + the call brief" if out.get("brief", {}).get("text") else ""
    return f"{len(scored)} models' batch scores ({', '.join(n.replace('_', ' ') for n in scored)}) + reasons + " \
        f"signals{brief}"


RATIOS = re.compile(r"^(\d{4}-\d{2}-\d{2}),.*?p99 at 8 clients.*?, ([\d.]+)×\);.*?req/s, ([\d.]+)×\)", re.S | re.M)


def previous_ratios() -> tuple[str, float, float] | None:
    """The serving section's date, p99 ratio and throughput ratio to Feast in RESULTS.md as it is, if any."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    section = re.search(r"^## serving\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    found = RATIOS.search(section.group(1)) if section else None
    return (found.group(1), float(found.group(2)), float(found.group(3))) if found else None


def compared(before: tuple[str, float, float] | None, p99_ratio: float, rps_ratio: float) -> str:
    """This run's ratios to Feast beside the previous run's: the lead kept, or shrunk."""
    if before is None:
        return "No previous run in RESULTS.md to compare the lead over Feast with."
    date, p99_then, rps_then = before
    kept = p99_ratio <= p99_then and rps_ratio >= rps_then
    return (f"The previous run ({date}): p99 {p99_then:.2f}× Feast's, throughput {rps_then:.2f}×; this run "
            f"{p99_ratio:.2f}× and {rps_ratio:.2f}×: the lead over Feast "
            f"{'held' if kept else 'shrank'} (each ratio compares two servers of one run; runs differ in load).")


PAGE_PATHS = {"`GET /customers/{id}/profile?details=true` (what the profile page calls)": "?details=true",
              "baseline: `GET /customers/{id}/profile`": ""}


def page_load(port: int, host: str, key: str, customers: list[str], seconds: float) -> dict[str, dict[str, Any]]:
    """8 clients for `seconds` on each path the profile page calls, errors counted rather than fatal."""
    out = {}
    for label, query in PAGE_PATHS.items():
        out[label] = load(port, [get(f"/customers/{c}/profile{query}", host, key) for c in customers], 8, seconds)
        print(f"{label}: {len(out[label]['errors'])} errors, p50 {out[label]['p50']:.1f} ms, p99 "
              f"{out[label]['p99']:.1f} ms", flush=True)
    return out


def record_page_load(results: dict[str, dict[str, Any]], customers: int, workers: int, seconds: float) -> None:
    details, plain = results.values()
    rows = "\n".join(f"| {label} | {len(r['errors'])} of {r['requests']:,.0f} | {r['p50']:.1f} / {r['p99']:.1f} ms "
                     f"| {r['rps']:,.0f} |" for label, r in results.items())
    record("serving under concurrent use", f"""
The profile page's calls on the same server as above ({customers:,} customers, {workers} worker processes): 8
clients for {seconds:.0f} s on each path, the same load generator; an error is any answer but 200 or a dropped
connection. (Before issue 18, `?details=true` failed about half its requests at 8 clients: DuckDB's module-wide
connection was shared by the worker's threads.)

| path | errors | p50 / p99 | req/s |
|---|---|---|---|
{rows}

The details cost {details['p50'] / plain['p50']:.0f}× the plain profile at p50 (the warehouse's detail lists and
the snapshot history, read per request).
""")


if __name__ == "__main__":
    main()
