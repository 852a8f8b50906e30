"""`c360 resolve` (and `resolve explain`, the stewards' `resolve link`, `unlink` and `review`), `c360 eval identity`,
`c360 eval febrl`."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from rich.console import RenderableType

from c360.cli.ui import Json, audit_command, audited, cli_key, emit, fail, record_run, require_engine, stderr, table
from c360.core import warehouse
from c360.core.settings import Settings

if TYPE_CHECKING:
    from c360.features.identity import Explanation
    from c360.features.stewardship import Decision

Threshold = Annotated[float | None, typer.Option(help="match probability that links two people "
                                                    "[default: C360_MATCH_THRESHOLD, 0.95]")]
resolve_app = typer.Typer(help="Link every source record to one customer (splink + shared keys).")
eval_app = typer.Typer(help="Measure a stage against ground truth or a published data set.", no_args_is_help=True)


@resolve_app.callback(invoke_without_command=True)
def resolve(
    ctx: typer.Context,
    threshold: Threshold = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="estimate the model's parameters again instead of "
                                                            "reusing the saved ones")] = False,
    as_json: Json = False,
) -> None:
    """Resolve identities: writes identity_crosswalk, identity_customers and identity_events to the warehouse.

    The splink model's parameters are estimated on the first run and saved (identity/splink_model.json); later
    runs reuse them, so they score pairs alike. --retrain estimates them again, and so does a change of the
    stewards' links (they are the model's labels).

    splink runs on C360_ENGINE: duckdb (this process) or spark (C360_SPARK_MASTER, the `spark` extra and Java).
    Both give the same pairs and the same customers from the same saved parameters; Spark's intermediate tables
    (spark/identity/) are removed when the run ends.

    Customer ids are stable: rerunning, or resolving after a new batch, keeps every existing customer's id
    unless two are merged (the survivor keeps its id) or one is split; both are recorded in identity_events, and
    a merged id in identity_merges (its profile answers with the survivor's). Provisional customers that live
    events created (events/identity.db) keep their ids, or are merged; identity.db then drops what the warehouse
    holds. The stewards' decisions (`c360 resolve link`, `unlink`) override the model, and their links train it.
    """
    if not ctx.invoked_subcommand:
        run_resolve(threshold, as_json, retrain)


def run_resolve(threshold: float | None = None, as_json: bool = False, retrain: bool = False) -> dict:
    from c360.features.identity import resolve as run
    from c360.features.live_identity import Ledger

    s, started = Settings(), time.time()
    if not s.warehouse.exists():
        raise fail(f"no warehouse in {s.home}: run `c360 ingest --source DIR` first")
    require_engine(s)
    threshold = threshold or s.match_threshold
    ran_on = "DuckDB" if s.engine == "duckdb" else f"Spark ({s.spark_master})"
    with warehouse.connect(s) as con, stderr.status(f"linking records (splink on {ran_on}) and grouping customers"):
        report = run(con, s.identity_model, threshold=threshold, ledger=Ledger(s), retrain=retrain)
    record_run(s, "resolve", started, records=report.records, customers=report.customers, merges=report.merges,
               splits=report.splits, decisions=report.decisions, unheld=report.unheld, estimated=report.estimated,
               engine=report.engine)
    methods = pd.DataFrame(report.methods.items(), columns=["method", "records"])
    return emit({"threshold": threshold, **asdict(report)}, as_json, table("how records were linked", methods),
                f"{report.records:,} records → {report.customers:,} customers "
                f"({report.multi_record_customers:,} from several records, {report.unlinked:,} unlinked); "
                f"{report.merges} merges, {report.splits} splits recorded; {report.decisions} steward decisions "
                f"followed, {report.unheld} not; model parameters "
                + ("estimated and saved" if report.estimated else f"reused from {s.identity_model}")
                + f"; splink ran on {ran_on}")


@resolve_app.command()
def explain(
    source: Annotated[str, typer.Argument(help="source table, e.g. support/tickets")],
    key: Annotated[str, typer.Argument(help="the record's key in that table")],
    other_source: Annotated[str | None, typer.Argument(help="a second record's table, to compare the two")] = None,
    other_key: Annotated[str | None, typer.Argument(help="the second record's key")] = None,
    png: Annotated[Path | None, typer.Option(help="also draw the match weights to this PNG file")] = None,
    as_json: Json = False,
) -> None:
    """Why a record belongs to its customer: how it was attached, and the per-field match weights (the splink
    waterfall) of its strongest link — or of the two records given."""
    from c360.features.identity import explain as run

    s = Settings()
    ids = [f"{source}:{key}"] + ([f"{other_source}:{other_key}"] if other_source and other_key else [])
    with warehouse.connect(s, read_only=True) as con:
        try:
            result = run(con, s.identity_model, ids)
        except KeyError as e:
            raise fail(str(e.args[0])) from None
    with audited(s, "c360 resolve explain", sorted(set(result.records["customer_id"].dropna()))):
        _show(result, as_json, png)


def _show(result: Explanation, as_json: bool, png: Path | None) -> None:
    records = table("records", result.records)
    history = {"decisions": result.decisions, "events": result.events}
    shown_history = [table(f"stewards' decisions ({len(result.decisions)})", result.decisions),
                     table(f"merges and splits of the customer ({len(result.events)})", result.events)]
    if result.pair is None:
        emit({"records": result.records, "pair": None, **history}, as_json, records,
             "No person link: the record is tied to its customer by a shared key or a steward's link only "
             "(see method).", *shown_history)
        return
    weights = result.weights[["column_name", "value_l", "value_r", "level", "match_weight"]]
    final = result.weights["match_weight"].iloc[-1]
    probability = 2**final / (1 + 2**final)
    shown: list[RenderableType] = [records, table(f"match weights: {result.pair[0]} ~ {result.pair[1]}", weights),
             f"final match weight {final:.2f} → probability {probability:.4f}"]
    if png:
        _waterfall_png(weights, png)
        shown.append(f"wrote {png}")
    emit({"records": result.records, "pair": result.pair, "match_weights": weights, "final_match_weight": final,
          "probability": probability, "png": png, **history}, as_json, *shown, *shown_history)


Why = Annotated[str, typer.Option("--why", help="the reason, for whoever reads the decision later (kept in the "
                                                 "warehouse, erased with the records)")]
SourceArg = Annotated[str, typer.Argument(help="the first record's source table, e.g. crm/contacts")]
KeyArg = Annotated[str, typer.Argument(help="the first record's key in that table")]
OtherSourceArg = Annotated[str, typer.Argument(help="the second record's source table")]
OtherKeyArg = Annotated[str, typer.Argument(help="the second record's key")]


@resolve_app.command()
def link(source: SourceArg, key: KeyArg, other_source: OtherSourceArg, other_key: OtherKeyArg, why: Why,
         threshold: Threshold = None, as_json: Json = False) -> None:
    """A steward's decision: these two records are one customer. Their customers merge now (the larger keeps its
    id) and stay merged at every later `c360 resolve`, which also learns from the pair."""
    _decide("link", f"{source}:{key}", f"{other_source}:{other_key}", why, threshold, as_json)


@resolve_app.command()
def unlink(source: SourceArg, key: KeyArg, other_source: OtherSourceArg, other_key: OtherKeyArg, why: Why,
           threshold: Threshold = None, as_json: Json = False) -> None:
    """A steward's decision: these two records are not one customer. The smaller part splits off now with a new
    id, and no later `c360 resolve` puts them together again, through any chain of links."""
    _decide("unlink", f"{source}:{key}", f"{other_source}:{other_key}", why, threshold, as_json)


def _decide(decision: Decision, a: str, b: str, why: str, threshold: float | None, as_json: bool) -> None:
    from c360.features.live_identity import Ledger
    from c360.features.stewardship import decide

    s, started = Settings(), time.time()
    if not s.warehouse.exists():
        raise fail(f"no warehouse in {s.home}: run `c360 ingest --source DIR` and `c360 resolve` first")
    if not why.strip():
        raise fail("--why needs a reason")
    with warehouse.connect(s) as con:
        try:
            done = decide(con, decision, a, b, cli_key(), why, threshold or s.match_threshold, Ledger(s))
        except (KeyError, ValueError) as e:
            audit_command(s, f"c360 resolve {decision}", [], "failed")
            raise fail(str(e.args[0])) from None
    audit_command(s, f"c360 resolve {decision}", sorted(set(done.customers_before + done.customers_after)), "ok")
    record_run(s, f"resolve {decision}", started, recorded=done.recorded, merges=done.merges, splits=done.splits)
    pair = " and ".join(done.records)
    if not done.recorded:
        line = f"{pair}: already {decision}ed, nothing changed"
    else:
        line = (f"{decision}ed {pair} ({done.merges} merges, {done.splits} splits): customers "
                f"{' + '.join(done.customers_before)} → {' + '.join(done.customers_after)}")
    emit(done, as_json, line)


@resolve_app.command()
def review(
    limit: Annotated[int, typer.Option(min=1, help="how many pairs to list")] = 20,
    threshold: Threshold = None,
    as_json: Json = False,
) -> None:
    """The model's links closest to the threshold, for a steward to confirm (`c360 resolve link`) or reject
    (`c360 resolve unlink`): both record ids, their customers, the probability and the comparison levels that
    scored it. `c360 resolve explain A B` shows the values compared."""
    from c360.features.stewardship import review as run

    s = Settings()
    threshold = threshold or s.match_threshold
    with warehouse.connect(s, read_only=True) as con:
        if not all(warehouse.has_table(con, t) for t in ("identity_links", "identity_decisions")):
            raise fail("no links to review: run `c360 resolve` first")
        pairs = run(con, s.identity_model, threshold, limit)
    customers = sorted(set(pairs["customer_id_l"]) | set(pairs["customer_id_r"]))
    with audited(s, "c360 resolve review", customers):
        # for people, the levels that weighed (a missing field weighs nothing)
        shown = pairs.assign(levels=[", ".join(f"{lv['column_name']}: {lv['level']} ({lv['match_weight']:+.1f})"
                                               for lv in levels if round(lv["match_weight"], 1))
                                     for levels in pairs["levels"]])
        emit({"threshold": threshold, "pairs": pairs}, as_json,
             table(f"{len(pairs)} links closest to {threshold}", shown),
             "Answer with `c360 resolve link SOURCE KEY SOURCE KEY --why TEXT` (same customer) or "
             "`c360 resolve unlink ...` (not).")


def _waterfall_png(weights: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = weights.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1))
    colors = ["#2a9d8f" if w >= 0 else "#e76f51" for w in rows["match_weight"]]
    ax.barh(rows["column_name"], rows["match_weight"], color=colors)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("match weight (log2 Bayes factor)")
    ax.set_title("Why these two records match")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@eval_app.command("identity")
def eval_identity(
    truth: Annotated[Path | None, typer.Option(help="ground_truth folder [default: the demo data's]")] = None,
    as_json: Json = False,
) -> None:
    """Pairwise precision, recall and F1 of the resolved customers against the generator's ground truth."""
    from c360.features.identity import evaluate

    s = Settings()
    truth = truth or s.truth
    if not (truth / "records.parquet").exists():
        raise fail(f"no ground truth at {truth}: generate data with `c360 generate` first")
    with warehouse.connect(s, read_only=True) as con:
        overall, per_source = evaluate(con, pd.read_parquet(truth / "records.parquet"))
    emit({"overall": overall, "per_source": per_source}, as_json,
         table("customers vs ground truth (pairs of records of one customer)", overall),
         table("per source: share of records in the wrong customer / missing from their own", per_source))


@eval_app.command("febrl")
def eval_febrl(
    drop_columns: Annotated[list[str] | None,
                            typer.Option(help="identity fields to leave out, e.g. soc_sec_id")] = None,
    threshold: Annotated[float, typer.Option(help="match probability that links two records")] = 0.95,
    data: Annotated[Path | None, typer.Option(help="folder holding febrl/dataset4a.csv and dataset4b.csv")] = None,
    as_json: Json = False,
) -> None:
    """Link FEBRL 4a to 4b (5,000 true links) without labels; precision, recall, F1 and the threshold curve."""
    from c360.features.febrl import evaluate_febrl

    folder = data or Settings().public_data
    if not (folder / "febrl" / "dataset4a.csv").exists():
        raise fail(f"FEBRL files not found under {folder}/febrl")
    result = evaluate_febrl(folder, drop_columns=drop_columns or [], threshold=threshold)
    summary = {k: result[k] for k in ("threshold", "precision", "recall", "f1", "true_positive_pairs",
                                      "predicted_pairs", "true_pairs", "candidate_pairs", "seconds")}
    dropped = ", ".join(result["drop_columns"]) or "none"
    curve = result["curve"][["threshold", "precision", "recall", "f1"]]
    emit({**summary, "drop_columns": result["drop_columns"], "curve": curve}, as_json,
         table(f"FEBRL 4a ↔ 4b, dropped: {dropped}", pd.DataFrame([summary])), table("threshold curve", curve))
