"""Identity resolution at 100k and 1M source records: time and peak RSS of `c360 resolve`, against splink alone.

The baseline is the probabilistic core by itself on the same records: normalise, train (EM) and predict with
splink's DuckDB backend — no shared keys, grouping, stable ids or golden records. The ratio says what c360 adds
on top of the linking it cannot avoid.

`--engine duckdb spark` also compares the engines on the same records: after the first `c360 resolve` (DuckDB,
estimating the model's parameters), each engine resolves a copy of the ingested warehouse with the saved
parameters, as every later run does; Spark in local mode on this machine's cores, its JVM start included.
Run: `python -m bench.resolve [--records 100000 1000000] [--engine duckdb spark]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import duckdb

from bench.common import Measured, record, run
from c360.core.settings import Settings
from c360.features.generate import generate
from c360.features.ingest import ingest

RECORDS_PER_CUSTOMER = 9.4  # person records (all silos) per generated customer, measured at 20k customers
SPLINK_ALONE = """
import sys, duckdb
from c360.features import identity, linkage
with duckdb.connect(sys.argv[1], read_only=True) as con:
    people, _ = identity.read_records(con)
linker = linkage.train_linker(linkage.prepare_records(people), link_type="link_and_dedupe")
print(len(linkage.predict_pairs(linker, min_probability=0.1)))
"""
ENGINES = ("duckdb", "spark")


def resolve(home: Path, engine: str) -> Measured:
    """`c360 resolve` of the warehouse in `home` on `engine` (Spark: local, on every core)."""
    env = {"C360_HOME": str(home), "C360_ENGINE": engine, "C360_SPARK_MASTER": f"local[{os.cpu_count()}]"}
    return run([sys.executable, "-m", "c360.cli", "resolve"], env=env)


def on_engines(work: Path, engines: list[str], base: Measured) -> list[str]:
    """Rows of `engines` resolving copies of the ingested warehouse (`work/ingested`) with the saved model."""
    times = {}
    for engine in engines:
        home = work / engine
        shutil.copytree(work / "ingested", home)
        model = Settings(home=home).identity_model
        model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Settings(home=work / "home").identity_model, model)
        times[engine] = resolve(home, engine)
        shutil.rmtree(home)
    duck = times.get("duckdb")
    return [f"| {engine}, saved parameters | {t.seconds:.0f} s | {t.peak_rss_mb:,.0f} MB | "
            f"{t.seconds / base.seconds:.2f}× | {f'{t.seconds / duck.seconds:.2f}×' if duck else ''} |"
            for engine, t in times.items()]


def measure(records: int, work: Path, engines: list[str]) -> list[str]:
    customers = round(records / RECORDS_PER_CUSTOMER)
    generate(work / "data", customers, seed=1)
    with duckdb.connect(str(work / "home" / "warehouse.duckdb")) as con:
        ingest(con, work / "data")
    shutil.rmtree(work / "data")
    shutil.copytree(work / "home", work / "ingested")
    ours = resolve(work / "home", "duckdb")
    base = run([sys.executable, "-c", SPLINK_ALONE, str(work / "home" / "warehouse.duckdb")])
    with duckdb.connect(str(work / "home" / "warehouse.duckdb"), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM identity_crosswalk").fetchone()[0]
    rows = [f"| {n:,} records, {customers:,} customers generated | | | | |",
            f"| duckdb, estimating | {ours.seconds:.0f} s | {ours.peak_rss_mb:,.0f} MB | "
            f"{ours.seconds / base.seconds:.2f}× | |"]
    rows += on_engines(work, engines, base) if engines != ["duckdb"] else []
    rows.append(f"| baseline: splink alone (DuckDB) | {base.seconds:.0f} s | {base.peak_rss_mb:,.0f} MB | 1× | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=["duckdb"])
    parser.add_argument("--work", type=Path, default=Path("bench/out/resolve"))
    args = parser.parse_args()
    rows = []
    for records in args.records:
        shutil.rmtree(args.work, ignore_errors=True)
        (args.work / "home").mkdir(parents=True)
        rows += measure(records, args.work, args.engine)
        print("\n".join(rows), flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    body = ("Target at 1M records: ≤ 5 min, ≤ 6 GB. Spark runs in local mode on the machine's cores, its JVM start "
            "included; its peak RSS is the Python driver's (GNU time does not see the JVM's).\n\n"
            "| `c360 resolve` | time | peak RSS | vs baseline | Spark / DuckDB |\n|---|---|---|---|---|\n"
            + "\n".join(rows))
    print(body)
    record("identity resolution", body)


if __name__ == "__main__":
    main()
