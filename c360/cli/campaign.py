"""`c360 campaign plan | list | show | export | simulate | readout`: campaigns with holdouts over an audience
(`c360.features.campaigns`), and their readout (`c360.training.readout`).

Like every command, these run with the role of a shell on C360_HOME (`CLI_ROLE`, admin): of the service's roles,
admin and csm may plan and export campaigns; there are no HTTP routes for them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import duckdb
import pandas as pd
import typer
from rich.console import RenderableType

from c360.cli.ui import CLI_ROLE, Json, audited, cli_key, emit, fail, record_run, table
from c360.core.contract import ACTIONS, SEND_CHANNELS
from c360.core.settings import Settings
from c360.features import audiences, campaigns
from c360.features.campaigns import CampaignError

campaign_app = typer.Typer(help="Campaigns: an audience and a policy (the next best action or one action) turned "
                                "into actions, with a random holdout and exploration, a global holdout and "
                                "frequency caps; export per action, simulate on a generated company, read out. "
                                "For admins and CSMs (commands run as admin).", no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="the campaign's name (letters, digits, '_', '.', '-')")]
PROBLEMS = (CampaignError, audiences.UnknownAudience, FileNotFoundError, ValueError, duckdb.Error)


def _ids(s: Settings, name: str) -> list[str]:
    try:
        return campaigns.assignments(s, name)["customer_id"].tolist()
    except CampaignError as e:
        raise fail(str(e)) from None


@campaign_app.command("plan")
def plan(
    name: Name,
    audience: Annotated[str, typer.Option(help="the audience whose current members the campaign plans")],
    policy: Annotated[str, typer.Option(help=f"nba (each member's next best action from the latest `c360 score`) "
                                             f"or one action: {', '.join(ACTIONS)}")] = "nba",
    holdout: Annotated[float, typer.Option(help="share of members held out (no action), exactly rounded")] = 0.1,
    explore: Annotated[float, typer.Option(help="share of members given a random action (uniform over every "
                                                "action their consent allows, no_action included)")] = 0.05,
    budget: Annotated[int | None, typer.Option(help="at most this many contacted: the members with the highest "
                                                    "expected uplift are kept")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the randomization [default: a random one, logged]")]
    = None,
    channel: Annotated[str | None, typer.Option(
        help="each contacted member's channel, logged and exported: best (the channel the c360-response model "
             f"finds most likely to get a response, from the latest `c360 score`) or one of {', '.join(SEND_CHANNELS)}"
             " [default: none chosen]")] = None,
    as_json: Json = False,
) -> dict:
    """Plan a campaign: remove the global holdout (C360_GLOBAL_HOLDOUT), members opted out of their action's
    purpose and those at the contact cap (C360_CONTACT_CAP per C360_CONTACT_PERIOD_DAYS), keep the budget, then
    assign holdout, exploration and policy by complete randomization. Every assignment is logged with its
    propensity and the model version, and, with --channel, its channel (never one the member opted out of)."""
    s, started = Settings(), time.time()
    try:
        ids = audiences.members(s, audience)
        with audited(s, "c360 campaign plan", ids):
            result = campaigns.plan(s, name, audience, policy=policy, holdout=holdout, explore=explore,
                                    budget=budget, seed=seed, channel=channel, who=cli_key(), role=CLI_ROLE)
    except PROBLEMS as e:
        raise fail(str(e)) from None
    record_run(s, "campaign plan", started, campaign=name, assigned=result["assigned"], arms=result["arms"],
               removed=result["removed"])
    return emit(result, as_json, *_plan_tables(result))


def _plan_tables(result: dict) -> list[RenderableType]:
    shares = result["realized_shares"]
    return [f"campaign {result['name']}: {result['assigned']:,} of {result['members']:,} members of "
            f"{result['audience']} assigned, {result['contacted']:,} to contact; holdout {shares['holdout']:.1%}, "
            f"exploration {shares['exploration']:.1%}",
            table("arms", pd.DataFrame(result["arms"].items(), columns=["arm", "members"])),
            table("actions", pd.DataFrame(result["actions"].items(), columns=["action", "members"])),
            table("removed", pd.DataFrame(result["removed"].items(), columns=["why", "members"]))]


@campaign_app.command("list")
def list_campaigns(as_json: Json = False) -> dict:
    """List the campaigns: name, audience, policy, when planned and by whom, when launched, assignments."""
    found = campaigns.listed(Settings())
    return emit({"campaigns": found}, as_json,
                table("campaigns", pd.DataFrame(found)) if found else "no campaigns yet: `c360 campaign plan`")


@campaign_app.command("show")
def show(name: Name, as_json: Json = False) -> dict:
    """A campaign's plan: policy, shares, seed, sizes per arm and action, members removed and why."""
    s = Settings()
    try:
        found = campaigns.campaign(s, name)
    except CampaignError as e:
        raise fail(str(e)) from None
    return emit(found, as_json, *_plan_tables({"name": name, **found["summary"]}),
                f"planned {found['planned_at']} by {found['planned_by']}; launched {found['launched_at'] or 'not yet'}")


@campaign_app.command("export")
def export(
    name: Name,
    out: Annotated[Path, typer.Option(help="folder for one CSV per action, NAME_ACTION.csv")],
    as_json: Json = False,
) -> dict:
    """Hand the plan to the channel tools: per contact action, a CSV of its members with the fields an audience
    export has (customer_id, name, email, segment, region, plan, ...) and the action. The holdout is not exported;
    opted-out and erased customers are left out and counted. The files are recorded for erasure."""
    s, started = Settings(), time.time()
    ids = _ids(s, name)
    try:
        with audited(s, "c360 campaign export", ids):
            result = campaigns.export(s, name, out, cli_key())
    except PROBLEMS as e:
        raise fail(str(e)) from None
    record_run(s, "campaign export", started, campaign=name, left_out=result["left_out"],
               rows={a: f["rows"] for a, f in result["files"].items()})
    files = pd.DataFrame([(a, str(f["file"]), f["rows"]) for a, f in result["files"].items()],
                         columns=["action", "file", "rows"])
    return emit(result, as_json, table(f"campaign {name}", files), f"left out: {result['left_out']}")


@campaign_app.command("simulate")
def simulate(
    name: Name,
    out: Annotated[Path, typer.Option(help="folder for the batch of source files and its truth")],
    weeks: Annotated[int, typer.Option(min=1, help="weeks to play forward (13: the NBA's 91-day window)")] = 13,
    as_json: Json = False,
) -> dict:
    """Generated company only: play the campaign forward with `c360 advance` (same world, same seed): its
    assignments become the actions of the next weeks, whose source files land in OUT (ground truth in
    OUT/ground_truth). Then `c360 ingest --source OUT` and `c360 campaign readout NAME`."""
    from c360.features.advance import AdvanceError

    s, started = Settings(), time.time()
    ids = _ids(s, name)
    try:
        with audited(s, "c360 campaign simulate", ids):
            result = campaigns.simulate(s, name, out, weeks)
    except (*PROBLEMS, AdvanceError) as e:
        raise fail(str(e)) from None
    record_run(s, "campaign simulate", started, campaign=name, start=result["start"], weeks=weeks,
               treated=result["treated"])
    files = pd.DataFrame(result["rows"].items(), columns=["file", "rows"])
    return emit(result, as_json, table(f"campaign {name}: {result['start']} → {result['end']} in {out}", files))


@campaign_app.command("readout")
def readout(name: Name, as_json: Json = False) -> dict:
    """What the campaign brought, from the warehouse: the policy's value against its holdout and each single
    action (inverse propensity, paired-bootstrap 95 % CIs), predicted against realized uplift per action and
    decile, churn of the targeted against the holdout, net value after costs, and a sample-ratio check. Logged to
    MLflow (experiment c360-campaigns) with its plots."""
    from c360.training import readout as compute

    s, started = Settings(), time.time()
    ids = _ids(s, name)
    try:
        with audited(s, "c360 campaign readout", ids):
            result = compute.compute(s, name)
    except (*PROBLEMS, compute.ReadoutError) as e:
        raise fail(str(e)) from None
    result["mlflow_run"] = compute.log(s, result)
    gain, srm = result["gain_over_holdout"], result["sample_ratio"]
    record_run(s, "campaign readout", started, campaign=name, gain=gain["value"], srm_p_value=srm["p_value"])
    truth = f" (truth {gain['truth']:.2f})" if gain["truth"] is not None else ""
    return emit(result, as_json,
                f"campaign {name}: gain over the holdout {gain['value']:.2f} per member, 95 % CI "
                f"[{gain['low']:.2f}, {gain['high']:.2f}]{truth}",
                table("policy values (IPW)", result["policy_values"]),
                table("uplift by action", result["uplift_by_action"]),
                table("uplift by decile", result["uplift_by_decile"]),
                table("churn", pd.DataFrame([result["churn"]])),
                table("net value", pd.DataFrame([result["net_value"]])),
                f"sample-ratio check: p = {srm['p_value']:.3g}" + (" — MISMATCH: the arms' sizes differ from the "
                                                                    "plan beyond chance" if srm["mismatch"] else ""))
