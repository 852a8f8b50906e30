"""Model quality and training time at demo size, and the models' cores on public data.

Builds one generated company (default 20,000 customers, seed 42, as `make demo` does) in a temporary C360_HOME,
then trains churn, CLV and next best action there exactly as `c360 train all` does, each against its baseline
and the generator's truth measured in the same run; then `c360 eval cdnow` and `c360 eval hillstrom`.
The bars the tests hold (tests/test_demo_size.py) are printed beside each figure.
Run: `python -m bench.models [--customers N]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import record
from c360.core.settings import Settings
from c360.features.pipeline import build_company


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def company_rows(s: Settings) -> list[str]:
    from c360.training.clv_pipeline import train_clv
    from c360.training.nba_pipeline import ACTIONS, train_nba
    from c360.training.pipeline import train_churn

    churn, churn_s = timed(train_churn, s)
    ours, oracle = churn.baselines["lightgbm_on_oracle_rows"], churn.baselines["oracle"]
    clv, clv_s = timed(train_clv, s)
    lgb, bg = clv.metrics, clv.baselines["bgnbd_gamma_gamma"]
    nba, nba_s = timed(train_nba, s)
    v = nba.evaluation.exact["value"]
    best = max(v[f"all {a}"] for a in ACTIONS)
    share = nba.evaluation.shares["oracle_share_vs_no_action"]
    return [
        f"| churn | ROC-AUC {ours['roc_auc']:.4f}, ECE {churn.metrics['ece']:.4f} | oracle {oracle['roc_auc']:.4f}; "
        f"logistic {churn.baselines['logistic']['roc_auc']:.4f} | within 0.02 of the oracle, ECE ≤ 0.03: "
        f"{'met' if ours['roc_auc'] >= oracle['roc_auc'] - 0.02 and churn.metrics['ece'] <= 0.03 else 'NOT met'} "
        f"| {churn_s:.0f} s |",
        f"| CLV, 12 months | total {lgb['total_error_pct']:+.1f} %, RMSE {lgb['rmse']:,.0f} | BG/NBD × Gamma-Gamma: "
        f"total {bg['total_error_pct']:+.1f} %, RMSE {bg['rmse']:,.0f} | beat it on both: "
        f"{'met' if lgb['abs_total_error_pct'] < bg['abs_total_error_pct'] and lgb['rmse'] < bg['rmse'] else 'NOT met'}"
        f" | {clv_s:.0f} s |",
        f"| next best action, per customer | policy {v['policy']:,.2f} ({share:.0%} of the oracle's uplift) | "
        f"best single {best:,.2f}, no action {v['all no_action']:,.2f}, oracle {v['oracle']:,.2f} | above the best "
        f"single: {'met' if v['policy'] > best else 'NOT met'}; ≥ 80 % of the oracle's uplift: "
        f"{'met' if share >= 0.8 else 'NOT met'} | {nba_s:.0f} s |",
    ]


def _fmt(metrics: dict) -> str:
    names = {"total": "total", "bin_mae": "bin MAE", "poisson_deviance": "Poisson dev."}
    known = {k: v for k, v in metrics.items() if k in names and pd.notna(v)}
    return ", ".join(f"{names[k]} {v:,.3f}" for k, v in known.items())


def public_rows(data: Path) -> list[str]:
    from c360.training.cdnow import evaluate_cdnow
    from c360.training.hillstrom import evaluate_hillstrom

    rows = []
    cdnow = evaluate_cdnow(data / "cdnow")
    for split in ("published", "forward"):
        m = cdnow[split]["metrics"]
        others = "; ".join(f"{name}: {_fmt(row.to_dict())}" for name, row in m.iloc[:-1].iterrows())
        rows.append(f"| CDNOW repeat purchases, {split} split | {m.index[-1]}: {_fmt(m.iloc[-1].to_dict())} | "
                    f"{others} | lower bin MAE and deviance than BG/NBD | {cdnow['seconds']:.0f} s (both) |")
    policies = evaluate_hillstrom(data / "hillstrom" / "hillstrom.csv")["policies"]
    others = "; ".join(f"{name} ${p['value']:.3f} (gain {p['diff']:+.3f}, CI [{p['diff_ci'][0]:+.3f}, "
                       f"{p['diff_ci'][1]:+.3f}])" for name, p in policies.items() if name != "policy")
    rows.append(f"| Hillstrom, spend per customer | learned policy ${policies['policy']['value']:.3f} | {others} | "
                "beat random, all Womens, no e-mail significantly | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(prefix="c360-bench-models-") as home:
        s = Settings(home=Path(home), customers=args.customers, seed=42)
        _, build_s = timed(build_company, s, s.customers, s.seed, s.corrupt_rate)
        rows = company_rows(s)
    rows += public_rows(Settings().public_data)
    body = (f"{args.customers:,} generated customers (seed 42, as `make demo`), company built in {build_s:.0f} s; "
            "the oracle is the generator's truth in the same run.\n\n"
            "| model | ours | baselines | bar | training time |\n|---|---|---|---|---|\n" + "\n".join(rows))
    print(body)
    record("models", body)


if __name__ == "__main__":
    main()
