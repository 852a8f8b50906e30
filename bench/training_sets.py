"""Training-set retrieval through Feast's offline store on each engine: the churn service's examples of every
labelled snapshot of a home (`training.pipeline.churn_examples`, what `c360 train churn` reads).

Setup (not timed): a scratch home, which leaves the given one's registry as it was: a copy of its warehouse and a
link to its feature snapshots. Then each engine in its own process (the registry applied on it): the start (on
Spark the JVM and c360's session) and the retrieval, timed apart.
Run: `python -m bench.training_sets [--home DIR]` (default: C360_HOME, e.g. after `make demo`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import record
from c360.core.settings import Settings

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


def scratch(home: Path, into: Path) -> Path:
    s, scratch_home = Settings(home=home), Settings(home=into)
    into.mkdir()
    shutil.copyfile(s.warehouse, scratch_home.warehouse)
    scratch_home.snapshots.parent.mkdir(parents=True)
    scratch_home.snapshots.symlink_to(s.snapshots.resolve())
    return into


def measure(home: Path, engine: str) -> list[str]:
    """examples, start seconds, retrieval seconds, snapshots, customers of the latest: the script's last line (a
    library may print before it)."""
    return subprocess.run([sys.executable, "-c", RETRIEVE, engine], env={**os.environ, "C360_HOME": str(home)},
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1].split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Settings().home)
    home = parser.parse_args().home
    with tempfile.TemporaryDirectory() as tmp:
        rows = {engine: measure(scratch(home, Path(tmp) / engine), engine) for engine in ENGINES}
    examples, _, _, snapshots, customers = rows["duckdb"]
    lines = [f"churn examples: {int(examples):,} from {snapshots} snapshots (the latest of {int(customers):,} "
             f"customers)", "",
             "| engine | start (s) | retrieval (s) | ratio |", "|---|---|---|---|"]
    base = float(rows["duckdb"][2])
    lines += [f"| {engine} | {start} | {seconds} | {float(seconds) / base:.1f}× |"
              for engine, (_, start, seconds, *_) in rows.items()]
    record("training sets", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
