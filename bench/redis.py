"""Fill Redis with N customers × F features (default 1M × 50): c360's bulk write against Feast's `materialize` into
Feast's own Redis store, in the same run, on one redis-server from Debian started here.

- ours: `C360RedisOnlineStore.write_arrow` of all N rows read from Parquet, in a child process (time, peak RSS);
- baseline: Feast's `FeatureStore.materialize` into its `redis` store (type `redis`, its default write path with
  the timestamp check) of a sample of the same rows (default 50,000: the full 1M would take about an hour), its
  time scaled linearly to N;
- the two layouts are compared on the sample's customers: the same keys and bytes, as the tests check.

The data and the Feast repos are bench/online_store.py's. Run from the repo root:
`python -m bench.redis [--customers N --features F --sample S]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.common import Measured, record
from bench.online_store import VIEW, child, make_repo, step_materialize, synthetic


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(folder)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"127.0.0.1:{port}"
        time.sleep(0.1)
    server.terminate()
    raise SystemExit("redis-server did not start")


def stored(url: str, db: int) -> dict[str, Any]:
    """Keys of one database, and the server's memory in use and CPU time so far."""
    from redis import Redis

    host, port = url.split(":")
    client = Redis(host=host, port=int(port), db=db)
    cpu = client.info("cpu")
    return {"keys": client.dbsize(), "used_mb": client.info("memory")["used_memory"] / 2**20,
            "cpu_s": cpu["used_cpu_user"] + cpu["used_cpu_sys"]}


def same_layout(url: str, ids: list[str]) -> bool:
    """The sample's customers hold the same hashes (fields and bytes) in database 0 (ours) and 1 (Feast's)."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from redis import Redis

    host, port = url.split(":")
    ours, feast = (Redis(host=host, port=int(port), db=db) for db in (0, 1))
    for customer in ids:
        key = _redis_key("c360_bench", EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=customer)]))
        if not ours.hgetall(key) or ours.hgetall(key) != feast.hgetall(key):
            return False
    return True


# ---------------------------------------------------------------------- child-process steps


def step_write_arrow(repo: Path, parquet: Path, out: Path) -> None:
    from feast import FeatureStore

    from c360.features.redis_store import C360RedisOnlineStore

    store = FeatureStore(repo_path=str(repo))
    view = store.get_feature_view(VIEW)
    started, cpu = time.perf_counter(), time.process_time()
    table = pq.read_table(parquet)
    read = time.perf_counter() - started
    rows = C360RedisOnlineStore().write_arrow(store.config, view, table)
    out.write_text(json.dumps({"rows": rows, "read_s": read, "seconds": time.perf_counter() - started,
                               "cpu_s": time.process_time() - cpu}))


# ---------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--sample", type=int, default=50_000, help="customers for Feast's materialize baseline")
    parser.add_argument("--work", type=Path, default=Path("bench/out/redis"))
    parser.add_argument("--no-record", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument("--step", choices=["write-arrow", "materialize"], help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.step == "write-arrow":
        return step_write_arrow(Path(a.args[0]), Path(a.args[1]), Path(a.args[2]))
    if a.step == "materialize":
        return step_materialize(Path(a.args[0]), Path(a.args[1]))

    load_before = os.getloadavg()[0]
    work = a.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sample = min(a.sample, a.customers)
    table = synthetic(a.customers, a.features)
    pq.write_table(table, work / "features.parquet")
    pq.write_table(table.slice(0, sample), work / "sample.parquet")
    ids = table.column("customer_id").slice(0, sample).to_pylist()[:: max(1, sample // 500)]
    del table
    server, url = start_redis(work)
    try:
        make_repo(work / "ours", work / "features.parquet",
                  {"type": "c360.features.redis_store.C360RedisOnlineStore", "connection_string": f"{url},db=0"})
        make_repo(work / "feast", work / "sample.parquet", {"type": "redis", "connection_string": f"{url},db=1"})
        empty = stored(url, 0)
        ours = child("write-arrow", work / "ours", work / "features.parquet", work / "ours.json", module="bench.redis")
        print(f"ours write_arrow: {ours}", flush=True)
        after_ours = stored(url, 0)
        feast = child("materialize", work / "feast", work / "feast.json", module="bench.redis")
        print(f"feast redis materialize ({sample:,}): {feast}", flush=True)
        after_feast = stored(url, 1)
        redis_side = {name: {"keys": after["keys"], "used_mb": after["used_mb"] - before["used_mb"],
                         "cpu_s": after["cpu_s"] - before["cpu_s"]}
                  for name, before, after in (("ours", empty, after_ours), ("feast", after_ours, after_feast))}
        same = same_layout(url, ids)
    finally:
        server.terminate()
        server.wait(timeout=30)
    body = report(a, sample, ours, feast, redis_side, same, (load_before, os.getloadavg()[0]))
    print(body)
    if not a.no_record:
        record("Redis online store", body)
    shutil.rmtree(work, ignore_errors=True)


def report(a: argparse.Namespace, sample: int, ours: tuple[Measured, dict[str, Any]],
           feast: tuple[Measured, dict[str, Any]], redis_side: dict[str, dict[str, Any]], same: bool,
           load: tuple[float, float]) -> str:
    n, f = a.customers, a.features
    scale = n / sample
    ours_s, feast_s = ours[1]["seconds"], feast[1]["seconds"]
    feast_full = feast_s * scale
    ours_cpu = ours[1]["cpu_s"] + redis_side["ours"]["cpu_s"]
    feast_cpu = (feast[1]["cpu_s"] + redis_side["feast"]["cpu_s"]) * scale
    scaled = sample < n
    scaled_row = (f"| Feast, scaled to {n:,} | {n:,} (scaled) | ≈ {feast_full:,.0f} s | | ≈ {feast_cpu:,.0f} s | | |\n"
                  if scaled else "")
    about = "≈ " if scaled else ""  # a scaled figure is an estimate
    sampled = (f"**Feast's baseline ran on {sample:,} customers in this run and is scaled linearly to {n:,}** "
               f"(×{scale:g})" if scaled else f"Feast's baseline ran on all {n:,} customers in this run")
    per_row = {"ours": (ours[1]["cpu_s"] / n * 1e6, redis_side["ours"]["cpu_s"] / n * 1e6),
               "feast": (feast[1]["cpu_s"] / sample * 1e6, redis_side["feast"]["cpu_s"] / sample * 1e6)}  # µs
    return f"""
{n:,} customers × {f} features (bench/online_store.py's data: float64, float32, int64, int32, string, bool; a third
of the columns 5 % null; rows in random key order), one Feast feature view, into one redis-server 7 from Debian on
the same machine (no persistence). Times are the write call inside a child process; for ours it includes reading
the Parquet file ({ours[1]['read_s']:.1f} s of it), for Feast's `materialize` its own pull from the DuckDB offline
store. Peak RSS is the child's (GNU time). {sampled}. Both write Feast's layout: on {min(sample, 500)} sampled
customers the two databases hold {"the same fields and bytes" if same else "DIFFERENT hashes (a bug)"}. The machine
is shared: 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end — absolute times are
inflated, the ratio compares two runs of the same moment.

| write path | customers | write time | rows/s | CPU: writer + Redis | peak RSS | Redis memory added |
|---|---|---|---|---|---|---|
| c360 `write_arrow` (bulk, from Arrow) | {n:,} | {ours_s:.1f} s | {n / ours_s:,.0f} \
| {ours[1]['cpu_s']:.1f} + {redis_side['ours']['cpu_s']:.1f} s | {ours[0].peak_rss_mb:,.0f} MB \
| {redis_side['ours']['used_mb']:,.0f} MB ({redis_side['ours']['keys']:,} keys) |
| Feast `materialize` into its Redis store | {sample:,} | {feast_s:.1f} s | {sample / feast_s:,.0f} \
| {feast[1]['cpu_s']:.1f} + {redis_side['feast']['cpu_s']:.1f} s | {feast[0].peak_rss_mb:,.0f} MB \
| {redis_side['feast']['used_mb']:,.0f} MB ({redis_side['feast']['keys']:,} keys) |
{scaled_row}
**{n:,} × {f} into Redis: c360's bulk write {ours_s:.1f} s vs Feast's `materialize` {about}{feast_full:,.0f} s
({"scaled" if scaled else "measured"}): {feast_full / ours_s:.1f}× faster in wall-clock time,
{feast_cpu / ours_cpu:.1f}× less CPU
(writer and Redis server together: {ours_cpu:,.0f} s vs {about}{feast_cpu:,.0f} s).**
CPU time is the steadier figure on a loaded machine.
Per row: c360's writer {per_row['ours'][0]:,.0f} µs and Redis {per_row['ours'][1]:,.0f} µs (the
script checks each row's time in Redis, atomically); Feast's writer {per_row['feast'][0]:,.0f} µs (a
`ValueProto` per value) and Redis {per_row['feast'][1]:,.0f} µs. Redis's own work, the hash
writes, now bounds the load: on a quiet machine the wall time comes near Redis's CPU time.
"""


if __name__ == "__main__":
    main()
