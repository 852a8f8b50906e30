"""`c360 personas fit | show`: data-driven behaviour groups of customers (`c360.features.personas`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import RenderableType

from c360.cli.ui import Json, audited, emit, fail, record_run, table
from c360.core import audit
from c360.core.settings import Settings
from c360.features import personas

personas_app = typer.Typer(help="Personas: behaviour groups of customers, each with a plain name, a size and a "
                                "profile; `c360 score` assigns each customer's.", no_args_is_help=True)


def _shown(s: Settings, model: personas.Model) -> dict[str, Any]:
    return {"as_of": model.as_of, "k": len(model.names), "criterion": model.criterion, "features": model.features,
            "path": personas.path(s), "personas": model.personas()}


def _human(shown: dict[str, Any]) -> list[RenderableType]:
    sizes = pd.DataFrame([{"persona": p["persona"], "customers": p["size"], "share": p["share"]}
                          for p in shown["personas"]])
    means = pd.DataFrame({p["persona"]: {f: v["persona"] for f, v in p["profile"].items()}
                          for p in shown["personas"]})
    first = shown["personas"][0]["profile"]
    means.insert(0, "population", [first[f]["population"] for f in means.index])
    how = shown["criterion"]
    ks = list(how["scores"])
    why = f"the best silhouette of k = {ks[0]}..{ks[-1]}" if how["by"] == "silhouette" else "k given"
    return [f"{shown['k']} personas of the snapshot of {shown['as_of']} ({why}), model {shown['path']}",
            table("personas", sizes), table("means (persona against population)", means.rename_axis("feature")
                                           .reset_index())]


@personas_app.command("fit")
def fit(
    k: Annotated[int | None, typer.Option(min=1, help="number of personas [default: the k of 3..8 with the best "
                                                      "silhouette]")] = None,
    as_json: Json = False,
) -> dict:
    """Group the latest snapshot's customers by behaviour (k-means on standardized usage, engagement, support,
    billing and tenure features) and save the personas; the next `c360 score` assigns every customer's."""
    s, started = Settings(), time.time()
    try:
        with audited(s, "c360 personas fit", [audit.ALL]):
            model = personas.fit_latest(s, k)
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    shown = _shown(s, model)
    record_run(s, "personas fit", started, k=shown["k"], as_of=model.as_of)
    return emit(shown, as_json, *_human(shown))


@personas_app.command("show")
def show(as_json: Json = False) -> dict:
    """The fitted personas: name, size, share, and each one's mean of every feature against the population's."""
    s = Settings()
    model = personas.load(s)
    if model is None:
        raise fail("no personas yet: run `c360 personas fit`")
    shown = _shown(s, model)
    return emit(shown, as_json, *_human(shown))
