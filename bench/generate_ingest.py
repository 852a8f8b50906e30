"""Generate and ingest N customers (default 1M); time and peak RSS of each, against DuckDB's bare CSV load.

The baseline loads the same files with DuckDB `read_csv` straight into tables: no contract, no quarantine, no
lineage — the floor any ingest of these files pays. Run: `python -m bench.generate_ingest [--customers N]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.common import Measured, record, run

BARE_LOAD = """
import duckdb, sys
from pathlib import Path
con = duckdb.connect(sys.argv[2])
for f in sorted(Path(sys.argv[1]).glob("*/*.csv")):
    if f.parent.name != "ground_truth":
        con.execute(f"CREATE TABLE {f.parent.name}_{f.stem} AS SELECT * FROM read_csv('{f}', all_varchar=true)")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("bench/out/generate_ingest"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    data, home = args.work / "data", args.work / "home"
    c360 = [sys.executable, "-m", "c360.cli"]
    gen = run([*c360, "generate", "--customers", str(args.customers), "--out", str(data), "--corrupt-rate", "0.001"])
    rows = sum(sum(1 for _ in f.open()) - 1 for f in data.glob("*/*.csv") if f.parent.name != "ground_truth")
    ingest = run([*c360, "ingest", "--source", str(data)], env={"C360_HOME": str(home)})
    bare = run([sys.executable, "-c", BARE_LOAD, str(data), str(args.work / "bare.duckdb")])
    report(args.customers, rows, gen, ingest, bare)
    shutil.rmtree(args.work, ignore_errors=True)


def report(customers: int, rows: int, gen: Measured, ingest: Measured, bare: Measured) -> None:
    body = f"""
{customers:,} customers, {rows:,} source rows in 16 CSV files, 0.1 % of rows faulty.

| step | time | rows/s | peak RSS | vs baseline |
|---|---|---|---|---|
| `c360 generate` | {gen.seconds:.0f} s | {rows / gen.seconds:,.0f} | {gen.peak_rss_mb:,.0f} MB | |
| `c360 ingest` (contract, quarantine, lineage) | {ingest.seconds:.0f} s | {rows / ingest.seconds:,.0f} | \
{ingest.peak_rss_mb:,.0f} MB | {ingest.seconds / bare.seconds:.1f}× the bare load |
| baseline: DuckDB `read_csv` → table, no checks | {bare.seconds:.0f} s | {rows / bare.seconds:,.0f} | \
{bare.peak_rss_mb:,.0f} MB | 1× |
"""
    print(body)
    record("generate + ingest", body)


if __name__ == "__main__":
    main()
