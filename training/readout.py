"""A campaign's readout: what its policy brought against its holdout, from the warehouse's outcomes.

Definitions, once:

* **window** — `[launched, launched + days)`: `launched` is the campaign's start (the simulated step's first day,
  or the day of its export), `days` the simulated weeks × 7 or the NBA's horizon (91 days). The readout refuses a
  window the warehouse's data does not cover yet.
* **outcome** — per assigned member: net revenue in the window (invoices issued in it and paid, less refunds paid
  out in it, over the customer's billing accounts: the NBA's outcome, `training.nba_pipeline`); **value** = outcome
  − the assigned action's cost (`c360.core.contract.ACTION_COSTS`, the one place costs are defined; the discount's cost
  is in its smaller invoices); **churned** = a subscription of the customer ended in the window.
* **policy value** `V(π)` — the mean value per assigned member had every one of them got the policy's action,
  estimated by inverse propensity weighting with the logged propensities (`c360.features.campaigns`), next to
  `V(a)` for each single action (`no_action` is the holdout's) and their paired-bootstrap 95 % CIs
  (`training.uplift.paired_bootstrap`: the same resampled members for every policy). The weighted outcome is the
  value less the member's **baseline** (its outcome in the window as long just before the campaign), a control
  variate that keeps the estimates unbiased and narrows their CIs (`policy_values`).
* **the policy's gain over the holdout** — `V(π) − V(no_action)`, per member. On a generated company its truth is
  the mean over the assigned members of `net_i(π_i) − net_i(no_action)`, `net` = the ground truth's expected
  `revenue_90d − cost` (`_effects.parquet` of the simulated step); `truth_gain` computes it.
* **uplift per action** — for the members whose policy action is `a`: the NBA's predicted uplift (its expected
  net uplift, the scores' `nba_uplift`, mean) against the realized one (IPW of `a` minus IPW of `no_action` in the
  group); **per decile** the same over deciles of the predicted uplift.
* **sample-ratio check** — the arm sizes of the members the warehouse still knows (an outcome row) against the
  plan's shares: chi-square, flagged at p < 0.001 (a loss that depends on the arm biases every comparison).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from c360.core import warehouse
from c360.core.contract import ACTION_COSTS, ACTIONS
from c360.core.settings import Settings
from c360.features import advance, campaigns
from c360.features.generate import TRUTH
from c360.training import tracking
from c360.training.specs import NBA
from c360.training.uplift import paired_bootstrap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXPERIMENT = "c360-campaigns"
NONE = campaigns.NONE
SRM_ALPHA = 0.001
DECILES = 10
HORIZON_DAYS = NBA.horizon_days
OUTCOMES_SQL = """
WITH members AS (SELECT unnest($ids) AS customer_id),
accounts AS (SELECT source_key AS billing_account_id, customer_id FROM identity_crosswalk
             WHERE source = 'billing/customers' AND customer_id IN (SELECT customer_id FROM members)),
paid AS (
    SELECT a.customer_id, sum(i.amount) AS paid FROM accounts a JOIN billing_invoices i USING (billing_account_id)
    WHERE i.issued_at >= $start AND i.issued_at < $end AND i.status IN ('paid', 'refunded') GROUP BY ALL),
refunded AS (
    SELECT a.customer_id, sum(p.amount) AS refunded FROM accounts a
    JOIN billing_invoices i USING (billing_account_id) JOIN billing_payments p USING (invoice_id)
    WHERE p.status = 'refunded' AND p.attempted_at >= $start AND p.attempted_at < $end GROUP BY ALL),
cancelled AS (
    SELECT DISTINCT a.customer_id FROM accounts a JOIN billing_subscriptions s USING (billing_account_id)
    WHERE s.ended_at >= $start AND s.ended_at < $end)
SELECT m.customer_id, coalesce(p.paid, 0) - coalesce(r.refunded, 0) AS outcome, c.customer_id IS NOT NULL AS churned
FROM members m JOIN identity_customers g USING (customer_id)
LEFT JOIN paid p USING (customer_id) LEFT JOIN refunded r USING (customer_id)
LEFT JOIN cancelled c USING (customer_id)
"""


class ReadoutError(ValueError):
    """A readout that cannot be made yet (not launched, window not covered by the data)."""


def window(s: Settings, plan: dict[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The campaign's outcome window; ReadoutError when it has not started or the data does not cover it."""
    if plan["launched_at"] is None:
        raise ReadoutError(f"campaign {plan['name']} has not started: `c360 campaign export` or `simulate` it first")
    start = pd.Timestamp(plan["launched_at"]).normalize()
    end = start + pd.Timedelta(days=7 * plan["weeks"] if plan["weeks"] else HORIZON_DAYS)
    with warehouse.connect(s, read_only=True) as con:
        data_end = warehouse.data_end(con)
    if data_end < end:
        raise ReadoutError(f"the outcome window runs to {end.date()}, the data to {data_end.date()}: ingest the "
                           "weeks after the campaign first (`c360 ingest --source DIR`)")
    return start, end


def outcomes(s: Settings, frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The assignments of the members the warehouse knows, with outcome, churned, value (outcome − cost) and
    baseline (the outcome of the window as long just before the campaign)."""
    ids = frame["customer_id"].tolist()
    with warehouse.connect(s, read_only=True) as con:
        after = con.execute(OUTCOMES_SQL, {"ids": ids, "start": start.to_pydatetime(), "end": end.to_pydatetime()}
                            ).df()
        before = con.execute(OUTCOMES_SQL, {"ids": ids, "start": (start - (end - start)).to_pydatetime(),
                                            "end": start.to_pydatetime()}).df()
    merged = frame.merge(after, on="customer_id", how="inner").merge(
        before[["customer_id", "outcome"]].rename(columns={"outcome": "baseline"}), on="customer_id", how="left")
    return merged.assign(value=merged["outcome"] - merged["action"].map(ACTION_COSTS).astype(float))


def _ipw(frame: pd.DataFrame, action: pd.Series | str) -> np.ndarray:
    """Per row, (value − baseline) × [got `action`] / propensity: the difference of two of them estimates the
    uplift of one action over another (the baseline, a control variate, see `policy_values`)."""
    got = (frame["action"] == action).to_numpy()
    return (frame["value"] - frame["baseline"].fillna(0.0)).to_numpy() * got / frame["propensity"].to_numpy()


def policy_values(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """V(policy), V(each action) and V(random) with CIs, and the policy's gain over each (`diff`).

    The weighted outcome is value − baseline, the baseline added back to the values: a control variate. Each member
    gets some action, so E[[A_i = a] / p_i(a)] = 1 for every action, and a quantity fixed before the campaign adds
    its mean to every V(a) in expectation and nothing to their differences; but most of the spread of revenue
    between members is their size, which the baseline carries, so the CIs narrow several times."""
    baseline = frame["baseline"].fillna(0.0)
    values = paired_bootstrap(frame["value"] - baseline, frame["action"], frame["policy_action"],
                              frame["propensity"].to_numpy(), arms=list(ACTIONS), n_boot=n_boot, seed=seed)
    shift = float(baseline.mean())
    values[["value", "value_low", "value_high"]] += shift
    return values


def _uplift(frame: pd.DataFrame) -> dict[str, Any]:
    realized = _ipw(frame, frame["policy_action"]) - _ipw(frame, NONE)
    return {"members": len(frame), "predicted": float(frame["score"].mean()) if frame["score"].notna().any()
            else None, "realized": float(realized.mean()) if len(frame) else None}


def uplift_by_action(frame: pd.DataFrame) -> pd.DataFrame:
    """Per policy action (but no_action): predicted against realized uplift of its members."""
    rows = {a: _uplift(frame[frame["policy_action"] == a]) for a in ACTIONS if a != NONE}
    return pd.DataFrame(rows).T.rename_axis("action")


def uplift_by_decile(frame: pd.DataFrame) -> pd.DataFrame:
    """Predicted against realized uplift per decile of the predicted one (1 = lowest), members with a score and a
    contact action; empty without scores (a fixed-action policy)."""
    scored = frame[frame["score"].notna() & (frame["policy_action"] != NONE)]
    if len(scored) < DECILES:
        return pd.DataFrame(columns=["decile", "members", "predicted", "realized"])
    decile = pd.qcut(scored["score"].rank(method="first"), DECILES, labels=False) + 1
    rows = [{"decile": int(d), **_uplift(group)} for d, group in scored.groupby(decile)]
    return pd.DataFrame(rows)


def churn(frame: pd.DataFrame) -> dict[str, Any]:
    """Churn of the targeted members (policy arm, a contact action) against the holdout's."""
    targeted = frame[(frame["arm"] == "policy") & (frame["policy_action"] != NONE)]
    holdout = frame[frame["arm"] == "holdout"]
    rates = {"targeted": _rate(targeted), "holdout": _rate(holdout)}
    both = None not in rates.values()
    return {**rates, "targeted_members": len(targeted), "holdout_members": len(holdout),
            "difference": rates["targeted"] - rates["holdout"] if both else None}  # type: ignore[operator]


def _rate(group: pd.DataFrame) -> float | None:
    return float(group["churned"].mean()) if len(group) else None


def net_value(frame: pd.DataFrame, values: pd.DataFrame) -> dict[str, float]:
    """What the campaign cost and brought in all: the contact costs, and the policy's gain over the holdout per
    member and over all assigned members (with its CI), after those costs."""
    gain = values.loc[f"all {NONE}"]
    n = len(frame)
    return {"members": n, "costs": float(frame["action"].map(ACTION_COSTS).sum()),
            "gain_per_member": float(gain["diff"]), "gain_total": float(gain["diff"]) * n,
            "gain_total_low": float(gain["diff_low"]) * n, "gain_total_high": float(gain["diff_high"]) * n}


def sample_ratio(frame: pd.DataFrame, planned: dict[str, int]) -> dict[str, Any]:
    """Chi-square of the arms' sizes among the members with an outcome against the plan's."""
    arms = [a for a in campaigns.ARMS if planned.get(a)]
    seen = np.asarray([(frame["arm"] == a).sum() for a in arms], dtype=float)
    plan = np.asarray([planned[a] for a in arms], dtype=float)
    if len(arms) < 2:
        return {"observed": dict(zip(arms, seen.tolist(), strict=True)), "p_value": 1.0, "mismatch": False}
    p = float(stats.chisquare(seen, plan / plan.sum() * seen.sum()).pvalue)
    return {"observed": {a: int(v) for a, v in zip(arms, seen, strict=True)}, "planned": planned, "p_value": p,
            "mismatch": p < SRM_ALPHA}


def truth_gain(s: Settings, frame: pd.DataFrame, effects: pd.DataFrame) -> float:
    """Generated data: the truth of the gain the readout estimates — mean over the assigned members `frame` of the
    expected net(policy action) − net(no_action), `net` = revenue_90d − cost of the simulated step's `effects`,
    each member by its CRM account (as `campaign simulate` named it to the generator)."""
    with warehouse.connect(s, read_only=True) as con:
        named = advance.with_account_ids(con, frame[["customer_id"]].assign(action=NONE))
    numbers = pd.read_parquet(s.generated / TRUTH / "customers.parquet", columns=["account", "account_id"])
    accounts = named["account_id"].map(numbers.set_index("account_id")["account"]).to_numpy()
    net = effects.assign(net=effects["revenue_90d"] - effects["cost"]).pivot_table(
        index="account", columns="action", values="net").reindex(accounts)
    chosen = net.to_numpy()[np.arange(len(frame)), net.columns.get_indexer(frame["policy_action"])]
    return float(np.mean(chosen - net[NONE].to_numpy()))


def effects_of(s: Settings, plan: dict[str, Any]) -> pd.DataFrame | None:
    """The generated world's expected effects of the campaign's simulated step, if it was simulated here."""
    file = s.generated / TRUTH / f"advance_{plan['launched_at']}_effects.parquet"
    return pd.read_parquet(file) if plan["weeks"] and file.is_file() else None


def compute(s: Settings, name: str, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The readout of campaign `name` (definitions above) as one document."""
    plan = campaigns.campaign(s, name)
    start, end = window(s, plan)
    frame = outcomes(s, campaigns.assignments(s, name), start, end)
    if frame.empty:
        raise ReadoutError(f"none of campaign {name}'s members is in the warehouse any more")
    values = policy_values(frame, n_boot, seed)
    gain = values.loc[f"all {NONE}"]
    effects = effects_of(s, plan)
    truth = None if effects is None else truth_gain(s, frame, effects)
    return {"name": name, "window": {"start": start, "end": end}, "members": len(frame),
            "gain_over_holdout": {"value": gain["diff"], "low": gain["diff_low"], "high": gain["diff_high"],
                                  "truth": truth},
            "policy_values": values.rename_axis("policy").reset_index(), "uplift_by_action":
            uplift_by_action(frame).reset_index(), "uplift_by_decile": uplift_by_decile(frame),
            "churn": churn(frame), "net_value": net_value(frame, values),
            "sample_ratio": sample_ratio(frame, plan["summary"]["arms"])}


# ---------------------------------------------------------------- MLflow


def figures(result: dict[str, Any]) -> dict[str, Figure]:
    """The policy values with their CIs, and predicted against realized uplift per decile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = result["policy_values"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    err = [values["value"] - values["value_low"], values["value_high"] - values["value"]]
    ax.barh(values["policy"], values["value"], xerr=err, color="#4C72B0")
    ax.set_xlabel("value per member (revenue in the window − cost), IPW, 95 % CI")
    ax.set_title(f"campaign {result['name']}: policy against each single action")
    fig.tight_layout()
    out = {"policy_values.png": fig}
    deciles = result["uplift_by_decile"]
    if len(deciles):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(deciles["decile"], deciles["predicted"], "o-", label="predicted")
        ax.plot(deciles["decile"], deciles["realized"], "s-", label="realized (IPW)")
        ax.set_xlabel("decile of predicted uplift")
        ax.set_ylabel("uplift per member")
        ax.legend()
        fig.tight_layout()
        out["uplift_by_decile.png"] = fig
    return out


def card(result: dict[str, Any]) -> str:
    gain, srm, ch = result["gain_over_holdout"], result["sample_ratio"], result["churn"]
    return "\n".join([
        f"# Campaign readout: {result['name']}", "",
        f"Window {result['window']['start']:%Y-%m-%d} to {result['window']['end']:%Y-%m-%d}, "
        f"{result['members']:,} members with an outcome.", "",
        f"- policy's gain over the holdout per member: {gain['value']:.2f} (95 % CI {gain['low']:.2f} to "
        f"{gain['high']:.2f})",
        f"- churn: targeted {ch['targeted']}, holdout {ch['holdout']}",
        f"- sample-ratio check: p = {srm['p_value']:.4g}" + (" — MISMATCH" if srm["mismatch"] else ""), ""])


def log(s: Settings, result: dict[str, Any]) -> str:
    """Log the readout as a run of the `c360-campaigns` experiment (metrics, tables, plots, card); its run id."""
    import matplotlib.pyplot as plt

    gain, net = result["gain_over_holdout"], result["net_value"]
    plots = figures(result)
    try:
        return tracking.log_evaluation_run(
            experiment=EXPERIMENT, run_name=result["name"], params={"campaign": result["name"]},
            metrics={"gain_over_holdout": gain["value"], "gain_low": gain["low"], "gain_high": gain["high"],
                     "costs": net["costs"], "gain_total": net["gain_total"], "srm_p_value":
                     result["sample_ratio"]["p_value"], "members": result["members"]},
            figures=plots, tables={"policy_values": result["policy_values"],
                                   "uplift_by_action": result["uplift_by_action"],
                                   "uplift_by_decile": result["uplift_by_decile"]},
            model_card=card(result), tags={"campaign": result["name"]}, home=Path(s.home))
    finally:
        for fig in plots.values():
            plt.close(fig)
