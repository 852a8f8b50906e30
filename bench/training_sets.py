"""Training-set retrieval through Feast's offline store on each engine: the churn service's examples of every
labelled snapshot of a home (`training.pipeline.churn_examples`, what `c360 train churn` reads).

Setup (not timed): a scratch home, which leaves the given one's registry as it was: a copy of its warehouse and a
link to its feature snapshots. Then each engine in its own process (the registry applied on it): the start (on
Spark the JVM and c360's session) and the retrieval, timed apart.

At scale (`--customers N`): every snapshot of the home copied k times (k = N / its latest snapshot's customers,
rounded up), each copy of a customer with a new id (`<id>~<j>`) and the same history: an offline store of about N
customers at the latest date, synthetic (realistic rows, unknown to the warehouse). The examples are the churn
labels of the latest `--dates` labelled dates, each copied k times, retrieved in `training.datasets.retrieve`'s
calls of up to `RETRIEVAL_ROWS` (per engine); the labels (a query of the warehouse) are not timed.

Run: `python -m bench.training_sets [--home DIR] [--customers N --dates D]` (default: C360_HOME, e.g. after
`make demo`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench.common import record
from c360.core.settings import Settings
from c360.features import store

ENGINES = ("duckdb", "spark")
RETRIEVE = """
import sys, time
from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.training.pipeline import churn_examples

s = Settings(engine=sys.argv[1])
store.apply(s)
started = time.perf_counter()
fs = store.offline(s)
ready = time.perf_counter()
with warehouse.connect(s, read_only=True) as con:
    rows = len(churn_examples(s, con, fs))
dates = store.snapshot_dates(s)
print(rows, round(ready - started, 1), round(time.perf_counter() - ready, 1), len(dates),
      len(store.read_snapshot(s, dates[-1])))
"""
RETRIEVE_COPIES = """
import sys, time
import pandas as pd
from c360.core import warehouse
from c360.core.settings import Settings
from c360.features import store
from c360.training import datasets
from c360.training.pipeline import CHURN_TASK, labelled_dates

s, copies, last = Settings(engine=sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store.apply(s)
started = time.perf_counter()
fs = store.offline(s)
ready = time.perf_counter()
with warehouse.connect(s, read_only=True) as con:
    days = labelled_dates(s, con, CHURN_TASK.spec.horizon_days)[-last:]
    keys = pd.concat([CHURN_TASK.label(con, day).assign(as_of=day) for day in days])[["customer_id", "as_of"]]
keys = pd.concat([keys.assign(customer_id=keys["customer_id"] + f"~{j}") for j in range(copies)], ignore_index=True)
timed = time.perf_counter()
rows = len(datasets.retrieve(fs, CHURN_TASK.spec.service, keys))
dates = store.snapshot_dates(s)
print(rows, round(ready - started, 1), round(time.perf_counter() - timed, 1), len(dates),
      len(store.read_snapshot(s, dates[-1])))
"""


def _with_warehouse(home: Path, into: Path) -> tuple[Settings, Settings]:
    """The settings of `home` and of a new scratch home `into` holding a copy of its warehouse."""
    s, scratch_home = Settings(home=home), Settings(home=into)
    into.mkdir()
    shutil.copyfile(s.warehouse, scratch_home.warehouse)
    return s, scratch_home


def scratch(home: Path, into: Path) -> Path:
    s, scratch_home = _with_warehouse(home, into)
    scratch_home.snapshots.parent.mkdir(parents=True)
    scratch_home.snapshots.symlink_to(s.snapshots.resolve())
    return into


def copied(home: Path, into: Path, customers: int) -> int:
    """A scratch home (a copy of `home`'s warehouse) whose snapshots are `home`'s with each customer copied k
    times (see the module docstring); returns k."""
    s, scratch_home = _with_warehouse(home, into)
    dates = store.snapshot_dates(s)
    copies = -(-customers // store.snapshot_rows(s, dates[-1]))
    for n, day in enumerate(dates, 1):
        print(f"copying snapshot {n} of {len(dates)} ({day:%Y-%m-%d}) {copies} times", flush=True)
        one = store.read_snapshot(s, day)
        store.write_snapshot(scratch_home, pd.concat(
            [one.assign(customer_id=one["customer_id"] + f"~{j}") for j in range(copies)], ignore_index=True))
    return copies


def measure(home: Path, engine: str, *args: str) -> list[str]:
    """examples, start seconds, retrieval seconds, snapshots, customers of the latest: the script's last line (a
    library may print before it); with `args` (copies, dates) the copies' script."""
    script = RETRIEVE_COPIES if args else RETRIEVE
    return subprocess.run([sys.executable, "-c", script, engine, *args],
                          env={**os.environ, "C360_HOME": str(home)},
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1].split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Settings().home)
    parser.add_argument("--customers", type=int, default=0, help="copy the home's customers to about this many")
    parser.add_argument("--dates", type=int, default=1, help="with --customers: the latest labelled dates taken")
    args = parser.parse_args()
    copies, rows = 1, {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.customers:
            copies = copied(args.home, Path(tmp) / "copies", args.customers)
        for engine in ENGINES:  # each printed as measured: a later engine's failure keeps the earlier figures
            rows[engine] = (measure(Path(tmp) / "copies", engine, str(copies), str(args.dates)) if args.customers
                            else measure(scratch(args.home, Path(tmp) / engine), engine))
            print(engine, *rows[engine], flush=True)
    examples, _, _, snapshots, customers = rows["duckdb"]
    what = (f"churn examples of the latest {args.dates} labelled date(s), each customer copied {copies} times"
            if args.customers else "churn examples")
    lines = [f"{what}: {int(examples):,} from {snapshots} snapshots (the latest of {int(customers):,} "
             f"customers)", "",
             "| engine | start (s) | retrieval (s) | ratio |", "|---|---|---|---|"]
    base = float(rows["duckdb"][2])
    lines += [f"| {engine} | {start} | {seconds} | {float(seconds) / base:.1f}× |"
              for engine, (_, start, seconds, *_) in rows.items()]
    record(f"training sets, {int(customers):,} customers" if args.customers else "training sets", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
