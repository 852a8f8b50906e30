"""`c360 eval cdnow` and `c360 eval hillstrom`: the models' cores against published figures on public data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import typer
from rich.console import RenderableType

from c360.cli.identity import eval_app
from c360.cli.ui import Json, emit, fail, table


def _with_index(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame.reset_index(names=name)


@eval_app.command("cdnow")
def eval_cdnow(
    data: Annotated[Path | None, typer.Option(help="folder holding cdnow/CDNOW_master.txt and _sample.txt")] = None,
    chart: Annotated[Path | None, typer.Option(help="also draw the published split's holdout chart (PNG)")] = None,
    as_json: Json = False,
) -> None:
    """CLV: BG/NBD (lifetimes) and our LightGBM on CDNOW — the published 39-week table and a forward-honest split."""
    from c360.training.cdnow import available, default_dir, evaluate_cdnow
    from c360.training.clv_holdout import holdout_chart

    folder = data / "cdnow" if data else default_dir()
    if not available(folder):
        raise fail(f"CDNOW files not found in {folder}")
    result = evaluate_cdnow(folder)
    shown: list[RenderableType] = []
    for split, title in (("published", "published split: 39-week calibration, 39-week holdout, 2,357 customers"),
                         ("forward", "forward-honest split: Oct-Dec 1997, no label overlaps the forecast window")):
        r = result[split]
        shown += [table(f"{title} — mean repeat purchases by calibration repeats",
                        _with_index(r["table"].round(3), "row")),
                  table("summary", _with_index(r["metrics"].round(3), "model")),
                  f"ours trained on: {r['trained_on']}"]
    params = result["published"]["bgnbd_params"]
    shown.append("our BG/NBD fit: " + ", ".join(f"{k} = {v:.3f}" for k, v in params.items()))
    if chart:
        holdout_chart(result["published"]["table"]).savefig(chart, dpi=120)
        shown.append(f"wrote {chart}")
    splits = {split: _labelled(result[split]) for split in ("published", "forward")}
    emit({**result, **splits, "chart": chart}, as_json, *shown)


def _labelled(split: dict) -> dict:
    """A split's frames with their row labels named, as the tables show them."""
    return {**split, "table": _with_index(split["table"], "row"), "metrics": _with_index(split["metrics"], "model"),
            "value": _with_index(split["value"], "model")}


@eval_app.command("hillstrom")
def eval_hillstrom(
    outcome: Annotated[str, typer.Option(help="spend, conversion or visit")] = "spend",
    learner: Annotated[Literal["t", "x"], typer.Option(help="t (T-learner) or x (X-learner)")] = "t",
    resamples: Annotated[int, typer.Option(help="paired bootstrap resamples")] = 1000,
    data: Annotated[Path | None, typer.Option(help="hillstrom.csv [default: the public data folder's]")] = None,
    as_json: Json = False,
) -> None:
    """Next best action on Hillstrom's randomized e-mail test: the cross-fitted learned policy against all-Mens,
    all-Womens, no e-mail and random (paired bootstrap CIs), Qini AUC per arm, uplift@30% vs the tutorial."""
    from c360.training.hillstrom import default_path, evaluate_hillstrom

    path = data or default_path()
    if not path.exists():
        raise fail(f"Hillstrom file not found: {path}")
    r = evaluate_hillstrom(path, outcome=outcome, learner=learner, n_boot=resamples)
    rows = [{"policy": name, "value": p["value"], "95% CI": _ci(p["ci"]), "learned − this": p.get("diff"),
             "CI of difference": _ci(p["diff_ci"]) if "diff_ci" in p else "",
             "significant": p.get("significant", "")} for name, p in r["policies"].items()]
    shares = ", ".join(f"{arm} {share:.1%}" for arm, share in r["policy_share"].items())
    qini = pd.DataFrame(r["qini_auc"]).reset_index(names="arm vs control")
    u = r["uplift_at_30"]
    emit(r, as_json,
         table(f"policy value, {outcome} per customer (inverse propensity, {r['folds']}-fold cross-fit)",
               pd.DataFrame(rows)),
         f"learned policy sends: {shares}", table("Qini AUC per arm (normalised as scikit-uplift)", qini),
         f"uplift@30% Womens vs No E-Mail on visit: {u['value']:.4f} (scikit-uplift tutorial: {u['tutorial']})")


def _ci(bounds: list[float]) -> str:
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"
