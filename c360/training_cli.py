"""`c360 eval cdnow` and `c360 eval hillstrom`: the models' cores against published figures on public data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from c360.identity_cli import eval_app
from c360.settings import Settings
from c360.ui import console, fail, table


def _with_index(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame.reset_index(names=name)


@eval_app.command("cdnow")
def eval_cdnow(
    data: Annotated[Path | None, typer.Option(help="folder holding cdnow/CDNOW_master.txt and _sample.txt")] = None,
    chart: Annotated[Path | None, typer.Option(help="also draw the published split's holdout chart (PNG)")] = None,
) -> None:
    """CLV: BG/NBD (lifetimes) and our LightGBM on CDNOW — the published 39-week table and a forward-honest split."""
    from training.cdnow import available, evaluate_cdnow, holdout_chart

    folder = (data or Settings().public_data) / "cdnow"
    if not available(folder):
        raise fail(f"CDNOW files not found in {folder}")
    result = evaluate_cdnow(folder)
    for split, title in (("published", "published split: 39-week calibration, 39-week holdout, 2,357 customers"),
                         ("forward", "forward-honest split: Oct-Dec 1997, no label overlaps the forecast window")):
        r = result[split]
        console.print(table(f"{title} — mean repeat purchases by calibration repeats",
                            _with_index(r["table"].round(3), "row")))
        console.print(table("summary", _with_index(r["metrics"].round(3), "model")))
        console.print(f"ours trained on: {r['trained_on']}")
    params = result["published"]["bgnbd_params"]
    console.print("our BG/NBD fit: " + ", ".join(f"{k} = {v:.3f}" for k, v in params.items()))
    if chart:
        holdout_chart(result["published"]["table"]).savefig(chart, dpi=120)
        console.print(f"wrote {chart}")
