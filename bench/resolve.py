"""Identity resolution at 100k and 1M source records: time and peak RSS of `c360 resolve`, against splink alone.

The baseline is the probabilistic core by itself on the same records: normalise, train (EM) and predict with
splink's DuckDB backend — no shared keys, grouping, stable ids or golden records. The ratio says what c360 adds
on top of the linking it cannot avoid. Run: `python -m bench.resolve [--records 100000 1000000]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import duckdb

from bench.common import record, run
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


def measure(records: int, work: Path) -> str:
    customers = round(records / RECORDS_PER_CUSTOMER)
    generate(work / "data", customers, seed=1)
    with duckdb.connect(str(work / "home" / "warehouse.duckdb")) as con:
        ingest(con, work / "data")
    ours = run([sys.executable, "-m", "c360.cli", "resolve"], env={"C360_HOME": str(work / "home")})
    base = run([sys.executable, "-c", SPLINK_ALONE, str(work / "home" / "warehouse.duckdb")])
    with duckdb.connect(str(work / "home" / "warehouse.duckdb"), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM identity_crosswalk").fetchone()[0]
    shutil.rmtree(work / "data")
    return (f"| {n:,} | {customers:,} | {ours.seconds:.0f} s | {ours.peak_rss_mb:,.0f} MB | {base.seconds:.0f} s | "
            f"{base.peak_rss_mb:,.0f} MB | {ours.seconds / base.seconds:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("bench/out/resolve"))
    args = parser.parse_args()
    rows = []
    for records in args.records:
        shutil.rmtree(args.work, ignore_errors=True)
        (args.work / "home").mkdir(parents=True)
        rows.append(measure(records, args.work))
        print(rows[-1], flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    body = ("Target at 1M records: ≤ 5 min, ≤ 6 GB.\n\n"
            "| source records | customers generated | `c360 resolve` | peak RSS | baseline: splink alone | "
            "peak RSS | ratio |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(body)
    record("identity resolution", body)


if __name__ == "__main__":
    main()
