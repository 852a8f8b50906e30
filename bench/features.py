"""Feature build at scale: `features.compute.build` (DuckDB SQL) against a plain pandas groupby build.

Setup (not timed): generate N customers (default 1M, ~47M product events), ingest them, and write the identity
crosswalk from the generator's ground truth (this benchmark measures features, not identity resolution). Then,
each in its own process for an honest peak RSS, one as-of snapshot:
- ours: all features of FEATURES;
- baseline: pandas reads the same warehouse tables and computes, with groupby, the features of the big tables —
  product activity, billing and support counts (a subset of ours: the ratio flatters the baseline).
`--engine duckdb spark` builds the snapshot on each engine (`features.spark_build.builder`; Spark in local mode on
this machine's cores, its JVM start and the warehouse's export included) and gives Spark / DuckDB.
Run: `python -m bench.features [--customers N] [--engine duckdb spark]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import duckdb

from bench.common import Measured, record, run
from c360.core.definitions import FEATURES
from c360.features.generate import generate
from c360.features.ingest import ingest

AS_OF = "2026-10-01"
OURS = """
import sys, duckdb, pandas as pd
from c360.core.settings import Settings
from c360.features import spark_build
s = Settings(home=sys.argv[3], engine=sys.argv[4], spark_master=sys.argv[5])
with (duckdb.connect(sys.argv[1], read_only=True, config={"memory_limit": "4GB"}) as con,
      spark_build.builder(s, con) as build):
    print(len(build(pd.Timestamp(sys.argv[2]))))
"""
ENGINES = ("duckdb", "spark")
PANDAS = """
import sys, duckdb, pandas as pd
as_of = pd.Timestamp(sys.argv[2])
con = duckdb.connect(sys.argv[1], read_only=True)
def frame(sql):  # text columns as categoricals: 47M product events as Python strings ran out of 24 GB
    return con.execute(sql).to_arrow_table().to_pandas(strings_to_categorical=True)
x = con.execute("SELECT source_key, source, customer_id FROM identity_crosswalk").df()
users = x[x.source == "product/users"].set_index("source_key")["customer_id"]
billing = x[x.source == "billing/customers"].set_index("source_key")["customer_id"]
tickets = x[x.source == "support/tickets"].set_index("source_key")["customer_id"]
ev = frame("SELECT user_id, event_time, event_type, feature FROM product_events")
ev = ev[ev.event_time < as_of]
ev["customer_id"] = ev.user_id.map(users)
ev["day"] = ev.event_time.dt.floor("D")
age = (as_of - ev.event_time).dt.days
g = ev[age < 90].groupby("customer_id")
out = pd.DataFrame({
    "active_days_7d": ev[age < 7].groupby("customer_id").day.nunique(),
    "active_days_30d": ev[age < 30].groupby("customer_id").day.nunique(),
    "active_days_90d": g.day.nunique(),
    "sessions_30d": ev[(age < 30) & (ev.event_type == "login")].groupby("customer_id").size(),
    "features_used_90d": g.feature.nunique(),
    "active_users_30d": ev[age < 30].groupby("customer_id").user_id.nunique(),
    "days_since_last_activity": (as_of - ev.groupby("customer_id").event_time.max()).dt.days,
})
inv = frame("SELECT billing_account_id, issued_at, kind, amount, status FROM billing_invoices")
inv = inv[inv.issued_at < as_of]
inv["customer_id"] = inv.billing_account_id.map(billing)
paid = inv[inv.status == "paid"]
iage = (as_of - inv.issued_at).dt.days
pdays = (as_of - paid.issued_at).dt.days
out = out.join(pd.DataFrame({
    "revenue_total": paid.groupby("customer_id").amount.sum(),
    "revenue_12m": paid[pdays < 365].groupby("customer_id").amount.sum(),
    "revenue_90d": paid[pdays < 90].groupby("customer_id").amount.sum(),
    "orders_12m": inv[(inv.kind == "addon") & (iage < 365)].groupby("customer_id").size(),
    "mrr": inv[inv.kind == "subscription"].sort_values("issued_at").groupby("customer_id").amount.last(),
}), how="outer")
t = frame("SELECT ticket_id, opened_at, closed_at, severity FROM support_tickets")
t = t[t.opened_at < as_of]
t["customer_id"] = t.ticket_id.map(tickets)
is_open = t.closed_at.isna() | (t.closed_at >= as_of)
out = out.join(pd.DataFrame({
    "tickets_90d": t[(as_of - t.opened_at).dt.days < 90].groupby("customer_id").size(),
    "open_tickets": t[is_open].groupby("customer_id").size(),
}), how="outer")
print(len(out))
"""
CROSSWALK = """
CREATE OR REPLACE TABLE identity_crosswalk AS
SELECT table_id AS source, key AS source_key, table_id || ':' || key AS record_id,
       'C' || lpad(account::VARCHAR, 8, '0') AS customer_id, 'ground truth' AS method, 1.0 AS match_probability,
       now() AS resolved_at
FROM read_parquet($path)"""
CUSTOMERS = """
CREATE OR REPLACE TABLE identity_customers AS
SELECT 'C' || lpad(account::VARCHAR, 8, '0') AS customer_id, segment, region, TIMESTAMP '2020-01-01' AS first_seen
FROM read_parquet($path)"""


def setup(customers: int, work: Path) -> tuple[Path, int]:
    generate(work / "data", customers, seed=3)
    warehouse = work / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), config={"memory_limit": "2GB"}) as con:
        ingest(con, work / "data")
        truth = work / "data" / "ground_truth"
        con.execute(CROSSWALK, {"path": str(truth / "records.parquet")})
        con.execute(CUSTOMERS, {"path": str(truth / "customers.parquet")})
        events = con.execute("SELECT count(*) FROM product_events").fetchone()[0]
    shutil.rmtree(work / "data")
    return warehouse, events


def build(warehouse: Path, home: Path, engine: str) -> Measured:
    """One snapshot of `warehouse` on `engine`, in its own process (`home` holds Spark's export)."""
    home.mkdir()
    return run([sys.executable, "-c", OURS, str(warehouse), AS_OF, str(home), engine, f"local[{os.cpu_count()}]"])


def row(engine: str, ours: Measured, base: Measured, duck: Measured | None) -> str:
    ratio = f"{ours.seconds / duck.seconds:.2f}×" if duck else ""
    return (f"| ours: `compute.SQL` on {engine} | {len(FEATURES)} | {ours.seconds:.0f} s | "
            f"{ours.peak_rss_mb:,.0f} MB | {ours.seconds / base.seconds:.2f}× the baseline's time | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=["duckdb"])
    parser.add_argument("--work", type=Path, default=Path("bench/out/features"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    warehouse, events = setup(args.customers, args.work)
    ours = {}
    for engine in args.engine:
        ours[engine] = build(warehouse, args.work / engine, engine)
        # Said as soon as measured: the baseline that follows can fail (pandas ran out of 24 GB at 1M, 2026-12-06).
        print(f"{engine}: {ours[engine].seconds:.0f} s, peak RSS {ours[engine].peak_rss_mb:,.0f} MB", flush=True)
    base = run([sys.executable, "-c", PANDAS, str(warehouse), AS_OF])
    shutil.rmtree(args.work, ignore_errors=True)
    rows = "\n".join(row(engine, t, base, ours.get("duckdb")) for engine, t in ours.items())
    body = f"""
{args.customers:,} customers, {events:,} product events; one snapshot as of {AS_OF}. Target: ≤ 2 min, ≤ 4 GB.
Spark runs in local mode on the machine's cores, its JVM start and the export included; its peak RSS is the Python
driver's (GNU time does not see the JVM's).

| build | features | time | peak RSS | ratio | Spark / DuckDB |
|---|---|---|---|---|---|
{rows}
| baseline: pandas groupby of the same tables | 15 (activity, billing, support counts) | {base.seconds:.0f} s | \
{base.peak_rss_mb:,.0f} MB | 1× | |
"""
    print(body)
    record("feature build" + ("" if args.customers == 1_000_000 else f", {args.customers:,} customers"), body)


if __name__ == "__main__":
    main()
