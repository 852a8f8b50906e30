"""Batch scoring at scale: `c360 score` on N customers (default 1M) × 3 champions with top-3 reasons, against the
raw LightGBM calls the same scores and reasons need, on the same matrix, in the same run.

The customers are synthetic: the latest snapshot of a scored home (`--home`, e.g. the 20,000-customer demo with its
three champions) replicated row by row to N customers with new ids — the models see realistic rows, the warehouse
knows none of the new ids (their next feature falls back to popularity, their content topics are empty).

* ours: `c360 score` in a child process on a work home holding that N-row snapshot: read it, load the champions
  from MLflow, score in chunks of 100,000 (churn, CLV, next best action, each with `pred_contrib` and the top 3
  reasons), write the long and wide Parquet, push the wide rows into the online store; wall time and peak RSS;
* baseline: in another child process, the same champions and the same N-row matrix, prepared beforehand (not
  timed): only the LightGBM calls the scores and reasons need — `pred_contrib` of churn and CLV on every row (a
  prediction is the sum of its contributions), `predict` of the next-best-action control arm and of every arm
  whose calibration kept a slope on every row, `pred_contrib` of such an arm and of the control on the rows the
  arm is explained for, chosen among the actions each row's consent allows as ours are (a flat arm, slope 0, runs
  no tree: its uplift is its average effect). Every core the process may use, in both (LightGBM's `num_threads`).

Run from the repo root: `python -m bench.score --home DIR [--customers N] [--engine spark]` (`--engine spark`: ours
is `C360_ENGINE=spark c360 score`, Spark in local mode on the same cores; the baseline is unchanged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import record, run

OURS = {"duckdb": "from 200,000 customers on a worker process per core, one LightGBM thread each "
                  "(`serving.batch.PROCESS_ROWS`)",
        "spark": "in Spark tasks (local mode, a task per core, one LightGBM thread each), the online push on the "
                 "driver"}


def make_home(source: Path, work: Path, customers: int) -> None:
    """A home with `source`'s registry, feature store and warehouse and an N-row copy of its latest snapshot."""
    from c360.core.settings import Settings
    from c360.features import store

    src, dst = Settings(home=source), Settings(home=work)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.home / "mlflow.db", dst.home / "mlflow.db")
    shutil.copytree(src.feast, dst.feast, ignore=shutil.ignore_patterns("online.db*"))
    dst.warehouse.symlink_to(src.warehouse.resolve())
    only_required_champions(dst.home)
    latest = store.snapshot_dates(src)[-1]
    snapshot = store.read_snapshot(src, latest)
    rows = np.random.default_rng(0).integers(0, len(snapshot), customers)
    big = snapshot.iloc[rows].reset_index(drop=True)
    big["customer_id"] = [f"S{i:08d}" for i in range(customers)]
    store.write_snapshot(dst, big)


def only_required_champions(home: Path) -> None:
    """The home's optional models (expansion, response) lose `@champion`: the figures are of the three required
    models, as the baseline's calls, and comparable from run to run whatever else the source home trained."""
    from mlflow.exceptions import MlflowException

    from c360.training import tracking
    from c360.training.specs import MODELS

    client = tracking.configure(home)
    for spec in MODELS.values():
        if not spec.required:
            with contextlib.suppress(MlflowException):  # never trained, or no champion
                client.delete_registered_model_alias(spec.name, tracking.CHAMPION)


def baseline(home: Path, out: Path) -> None:
    """The bare LightGBM calls (see the module docstring), on every core; writes their seconds to `out`."""
    from c360.core import consent
    from c360.core.settings import Settings
    from c360.features import store
    from c360.serving.champions import Champions
    from c360.training.uplift import lgb_matrix, transform_features

    s = Settings(home=home)
    snapshot = store.read_snapshot(s, store.snapshot_dates(s)[-1])
    champions = Champions.load(home)
    churn, clv, nba = champions["churn"].model, champions["clv"].model, champions["nba"].model
    churn_matrix = lgb_matrix(churn.prepare(snapshot))
    clv_matrix = lgb_matrix(transform_features(snapshot, clv.spec))
    uplift = nba.uplift
    nba_matrix = lgb_matrix(transform_features(snapshot[nba.features], nba.spec))
    # The action each row's reasons explain is chosen among the actions its consent allows, as `c360 score` does.
    control, explained = nba.control, nba.choose(snapshot, consent.allowed(snapshot, consent.ACTION_PURPOSE)).explained
    boosters = {arm: getattr(m, "booster_", None) for arm, m in uplift.models_.items()}
    flat = {arm for arm, (_, slope, _) in uplift.calibration_.items() if slope == 0.0}
    cores = len(os.sched_getaffinity(0))
    started = time.perf_counter()
    churn.booster.predict(churn_matrix, pred_contrib=True, num_threads=cores)
    clv.booster.predict(clv_matrix, pred_contrib=True, num_threads=cores)
    if boosters[control] is not None:
        boosters[control].predict(nba_matrix, num_threads=cores)
    for arm, booster in boosters.items():
        rows = explained == arm
        if arm == control or arm in flat or booster is None:
            continue
        booster.predict(nba_matrix, num_threads=cores)
        if rows.any():
            booster.predict(nba_matrix[rows], pred_contrib=True, num_threads=cores)
            if boosters[control] is not None:
                boosters[control].predict(nba_matrix[rows], pred_contrib=True, num_threads=cores)
    trees = {"churn": churn.n_trees, "clv": clv.booster.num_trees(),
             **{f"nba.{a}" + (" (flat: not run)" if a in flat else ""): b.num_trees()
                for a, b in boosters.items() if b}}
    out.write_text(json.dumps({"seconds": time.perf_counter() - started, "rows": len(snapshot), "cores": cores,
                               "trees": trees}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("C360_HOME", ".c360")))
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb",
                        help="the engine `c360 score` runs on")
    parser.add_argument("--baseline-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_only:
        baseline(args.home, args.baseline_only)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp) / "home"
        make_home(args.home.resolve(), work, args.customers)
        env = {"C360_HOME": str(work), "MLFLOW_TRACKING_URI": "", "C360_ENGINE": args.engine}
        # Baseline first: it reads the snapshot before `c360 score` has written anything, same files, same cache.
        out = Path(tmp) / "baseline.json"
        raw = run([sys.executable, "-m", "bench.score", "--home", str(work), "--baseline-only", str(out)], env=env)
        base = json.loads(out.read_text())
        print(f"baseline LightGBM calls: {base['seconds']:.1f} s (process {raw.seconds:.1f} s, "
              f"peak RSS {raw.peak_rss_mb:,.0f} MB)", flush=True)
        ours = run([sys.executable, "-m", "c360.cli", "score", "--chunk-size", "100000"], env=env)
        print(f"c360 score: {ours.seconds:.1f} s, peak RSS {ours.peak_rss_mb:,.0f} MB", flush=True)
        folder = next(work.glob("scores/as_of=*/run=*"))
        ran = json.loads((folder / "_SUCCESS.json").read_text())
        if ran["engine"] != args.engine:
            raise SystemExit(f"c360 score ran on {ran['engine']}, not {args.engine}")
        long = pd.concat(pd.read_parquet(p, columns=["model"]) for p in folder.glob("part-*.parquet"))
    n = args.customers
    ratio = ours.seconds / base["seconds"]
    load = os.getloadavg()[0]
    trees = ", ".join(f"{k} {v}" for k, v in base["trees"].items())
    ours_row = (f"| ours: `c360 score` on {args.engine} (read, 3 models, `pred_contrib`, top-3 reasons, long + wide "
                f"Parquet, online store push) | {ours.seconds:,.0f} s | {n / ours.seconds:,.0f} | "
                f"{ours.peak_rss_mb:,.0f} MB | {ratio:.2f}× |")
    base_row = (f"| baseline: the LightGBM calls alone (`pred_contrib` of what is explained, `predict` of the rest), "
                f"matrix prepared beforehand | "
                f"{base['seconds']:,.0f} s | {n / base['seconds']:,.0f} | {raw.peak_rss_mb:,.0f} MB (whole process) "
                "| 1× |")
    record(f"batch scoring, {n:,} customers" + (", Spark (local)" if args.engine == "spark" else ""), f"""
{n:,} customers × 3 models (churn, CLV, next best action), top-3 reasons each: the latest snapshot of the
20,000-customer demo home replicated to {n:,} rows with new ids (synthetic: realistic rows, unknown to the
warehouse). Trees: {trees}. Every core in both runs: the baseline on {base['cores']} LightGBM threads; ours
{OURS[args.engine]}. Both hand LightGBM row-major matrices (`lgb_matrix`). 1-minute load average {load:.1f} at the
end (the runs' own).

| run | time | customers/s | peak RSS | ratio |
|---|---|---|---|---|
{ours_row}
{base_row}

{len(long):,} score rows written. Target ratio ≤ 1.3: {'met' if ratio <= 1.3 else 'missed'} ({ratio:.2f}); target
time at 1,000,000 customers ≤ 300 s{f": {'met' if ours.seconds <= 300 else 'missed'}" if n >= 1_000_000 else ""}.
""")


if __name__ == "__main__":
    main()
