"""Next best action trained on the company's own experiments: waves of randomized actions, what followed, MLflow.

Definitions, once, for everything below:

* **assignment** — a customer put in one arm of an experiment wave: a row of ``marketing/sends`` whose campaign
  (``marketing/campaigns``) carries an ``action`` and a ``wave``, reached through the identity crosswalk of the
  marketing contact it went to. Holdout rows (action ``no_action``) and bounced sends count: the analysis is by
  intent to treat, which is what the randomization protects. ``as_of`` is the campaign's ``launched_at``, the
  wave date. A customer with sends of *different* arms in one wave (two accounts merged by identity resolution)
  got no single arm and is left out; duplicate sends of one arm are one assignment.
* **outcome** — net revenue in ``[as_of, as_of + 91 days)``: subscription and add-on invoices issued in the
  window and paid (including those paid and later refunded), less the refunds paid out in the window, over the
  customer's billing accounts. The discount's cost is already in it: the discounted invoices are smaller.
* **retained** — no subscription of the customer ended in the window.
* **features** — the ``nba_v1`` feature service as of the wave date, through Feast's point-in-time join
  (``event_timestamp`` = the wave date: the latest snapshot at or before it, within the views' TTL). The regular
  snapshots lie on a 28-day grid ending at the data's end, so a wave date is usually not a snapshot date (on the
  generated data waves 0 and 2 fall two weeks after a grid date, wave 1 on one), and a shorter grid may not reach
  the first wave at all. The features stage therefore builds the snapshot of every wave date too
  (``compute.as_of_dates``; ``compute.build`` uses only data strictly before its date, so not the wave's own
  sends): the join finds the exact date, and every wave is described as it stood when the action was taken,
  whatever the grid. Training only reads them: the churn and CLV examples see the same snapshots whichever model
  is trained first.
* **campaign rows** — the assignments of the campaigns c360 planned itself (``c360.features.campaigns``, its
  decision log), once their outcome window ``[launch, launch + 91 days)`` is in the data: the action each member
  got (holdout members ``no_action``), its logged propensity, the outcome above over that window
  (``readout.outcomes``) and the features as of the launch day (the features stage builds that snapshot too).
  Campaigns launched before the end of the test wave's window are left out: the model never sees the test period.
  The card and the run's params count the rows of each wave and each campaign (``rows_by_source``).
* **weights** — each row's inverse propensity (``inverse_propensity``): the arm's share of its wave, or the
  campaign's logged propensity, which the policy made unequal: an arm's outcome model would otherwise learn from
  the customers the previous model chose for it. Truncated and stabilized (mean 1 per source and arm: the waves'
  rows all weigh 1), times the MRR.
* **costs** — per action, in revenue units: ``ACTION_COSTS`` (training_invite 5, csm_call 40). The discount
  costs nothing here because its cost is already in the outcome (lower invoices).
* **model** — ``MultiArmUplift`` (T-learner, its defaults but the leaf size, scaled down to small arms as in
  ``training.table_nba``) on the outcome per dollar of MRR (``SCALE``, target winsorized at ``RATIO_QUANTILE``),
  each assignment weighted by its MRR (its stake, see ``fit_nba``); expected outcome = prediction × MRR.
  ``train_nba(s, scale=None)`` fits the outcome in dollars instead, unweighted.
* **recommendation** — the action with the highest expected outcome net of its cost; ``no_action`` when nothing
  pays.

Training uses the earlier waves and the campaign rows, the last wave is the test (a time split: the model never
sees the wave it is judged on). On the test wave: inverse-propensity (IPS) policy values with paired-bootstrap CIs
against all-``no_action``, each single action and random, and the Qini AUC of each action against ``no_action``. On
generated data (``s.truth`` exists) the ground truth holds every action's true outcome for every assigned
account, so the learned policy is also valued *exactly* (mean over the test customers of the true revenue less
cost of the action it picks) next to the **oracle** (each customer's best action) — the honest yardstick, since
the IPS values carry outcome noise far larger than the differences between policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from c360.core import warehouse
from c360.core.contract import ACTION_COSTS
from c360.core.definitions import BY_NAME
from c360.core.settings import Settings
from c360.features import campaigns, store
from c360.training import cards, datasets, fairness, labels, readout, tracking
from c360.training.cards import Block
from c360.training.specs import NBA
from c360.training.tracking import TrainReport
from c360.training.uplift import (
    Choice,
    FeatureSpec,
    MultiArmUplift,
    assignment_propensity,
    choose,
    paired_bootstrap,
    qini_auc,
    qini_chart,
    qini_curve,
    recommend_from_outcomes,
    transform_features,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NBA_MODEL = NBA.name
SERVICE = NBA.service
HORIZON_DAYS = NBA.horizon_days
CONTROL = "no_action"
ACTIONS = ("no_action", "discount", "training_invite", "csm_call")
N_BOOT = 1000
# The uplift model learns the outcome per dollar of monthly recurring revenue: an action changes how much of its
# revenue an account keeps, so effects scale with the account's size, and in dollars they drown in the spread
# between small and large accounts. The target is winsorized at its 95th percentile in the training data (about
# 8 × MRR: 91 days hold three or four monthly invoices; beyond that are rare, large add-on orders on small
# accounts, noise to the question which action keeps an account).
SCALE = "mrr"
RATIO_QUANTILE = 0.95
# An inverse propensity weight is truncated here: a campaign's exploration row (a 5 % share spread over four
# actions, p = 0.0125) would otherwise weigh 80 rows, and its arm's trees would follow a handful of outcomes.
MAX_INVERSE_PROPENSITY = 20.0

OUTCOMES_SQL = """
WITH sends AS (
    SELECT x.customer_id, c.launched_at AS as_of, c.wave, c.action
    FROM marketing_sends s
    JOIN marketing_campaigns c USING (campaign_id)
    JOIN identity_crosswalk x ON x.record_id = 'marketing/contacts:' || s.mkt_contact_id
    WHERE c.action IS NOT NULL AND c.wave IS NOT NULL AND c.launched_at IS NOT NULL),
assignments AS (
    SELECT customer_id, as_of, wave, any_value(action) AS action
    FROM sends GROUP BY customer_id, as_of, wave
    HAVING count(DISTINCT action) = 1),
accounts AS (SELECT source_key AS billing_account_id, customer_id FROM identity_crosswalk
             WHERE source = 'billing/customers'),
paid AS (
    SELECT a.customer_id, a.as_of, sum(i.amount) AS paid
    FROM assignments a JOIN accounts b USING (customer_id) JOIN billing_invoices i USING (billing_account_id)
    WHERE i.issued_at >= a.as_of AND i.issued_at < a.as_of + to_days($horizon)
      AND i.status IN ('paid', 'refunded')
    GROUP BY ALL),
refunded AS (
    SELECT a.customer_id, a.as_of, sum(p.amount) AS refunded
    FROM assignments a JOIN accounts b USING (customer_id) JOIN billing_invoices i USING (billing_account_id)
    JOIN billing_payments p USING (invoice_id)
    WHERE p.status = 'refunded' AND p.attempted_at >= a.as_of AND p.attempted_at < a.as_of + to_days($horizon)
    GROUP BY ALL),
cancelled AS (
    SELECT DISTINCT a.customer_id, a.as_of
    FROM assignments a JOIN accounts b USING (customer_id) JOIN billing_subscriptions s USING (billing_account_id)
    WHERE s.ended_at >= a.as_of AND s.ended_at < a.as_of + to_days($horizon))
SELECT a.customer_id, a.as_of, a.wave::INTEGER AS wave, a.action,
    coalesce(p.paid, 0) - coalesce(r.refunded, 0) AS outcome,
    c.customer_id IS NULL AS retained
FROM assignments a
LEFT JOIN paid p USING (customer_id, as_of) LEFT JOIN refunded r USING (customer_id, as_of)
LEFT JOIN cancelled c USING (customer_id, as_of)
ORDER BY a.wave, a.customer_id
"""


# ---------------------------------------------------------------- examples


def experiment_outcomes(con, horizon_days: int = HORIZON_DAYS) -> pd.DataFrame:
    """One row per assignment: customer_id, as_of (the wave date), wave, action, outcome, retained.

    Definitions in the module docstring. Waves whose window runs past the data's end are left out: their outcome
    is not known yet.
    """
    frame = con.execute(OUTCOMES_SQL, {"horizon": int(horizon_days)}).df()
    frame["as_of"] = pd.to_datetime(frame["as_of"])
    end = warehouse.data_end(con)
    complete = frame["as_of"].map(lambda day: labels.labelable(pd.Timestamp(day), end, horizon_days))
    return frame[complete.astype(bool)].reset_index(drop=True)


def service_features(fs: FeatureStore, service: str = SERVICE) -> list[str]:
    """The feature names a service serves, in the project's canonical order."""
    served = {f.name for view in fs.get_feature_service(service).feature_view_projections for f in view.features}
    return [name for name in BY_NAME if name in served]


def wave_features(fs: FeatureStore, assignments: pd.DataFrame, service: str = SERVICE) -> pd.DataFrame:
    """The assignments with the service's features as of each wave date (Feast's point-in-time join).

    ``event_timestamp`` is the wave date: Feast takes each customer's latest snapshot at or before it, within the
    views' TTL — the exact date, which the features stage builds. Customers missing from that snapshot keep
    missing features (LightGBM handles them).
    """
    features = datasets.retrieve(fs, service, assignments)
    names = [n for n in service_features(fs, service) if n in features.columns]
    keyed = features[["customer_id", "as_of", *names]]
    return assignments.merge(keyed, on=["customer_id", "as_of"], how="left", validate="one_to_one")


def nba_examples(s: Settings, con, horizon_days: int = HORIZON_DAYS) -> tuple[pd.DataFrame, list[str]]:
    """Every assignment of every complete wave with its outcome and its features as of the wave date, and the
    feature names. Reads the wave dates' snapshots, which the features stage builds; writes nothing.

    A wave launched on the day a logged campaign of c360 started is that campaign's sends come back through the
    marketing silo (`campaign simulate` records them as a wave, as a channel tool may): not a uniform randomization,
    and not a wave here. Its rows come from the decision log, with their propensities (``campaign_examples``)."""
    assignments = experiment_outcomes(con, horizon_days)
    assignments = assignments[~assignments["as_of"].isin(campaigns.launch_dates(s))].reset_index(drop=True)
    if assignments.empty:
        raise datasets.NoExamples("no experiment assignments with a complete outcome window in the warehouse")
    missing = sorted(set(pd.to_datetime(assignments["as_of"].unique())) - set(store.snapshot_dates(s)))
    if missing:
        raise FileNotFoundError(f"no feature snapshot as of the experiment wave(s) "
                                f"{', '.join(f'{d:%Y-%m-%d}' for d in missing)}: run `c360 features build`")
    fs = store.offline(s)
    return wave_features(fs, assignments), service_features(fs)


def wave_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on every wave before the last, test on the last: never across time."""
    waves = sorted(frame["wave"].unique())
    if len(waves) < 2:
        raise datasets.NoExamples(f"need at least 2 experiment waves (train and test), have {len(waves)}")
    return frame[frame["wave"] < waves[-1]], frame[frame["wave"] == waves[-1]]


def with_propensity(waves: pd.DataFrame) -> pd.DataFrame:
    """The wave assignments with their propensity (their arm's share of their wave: the randomization is uniform
    within a wave) and their source (``wave N``)."""
    share = waves.groupby("wave")["action"].transform(lambda arm: arm.map(arm.value_counts(normalize=True)))
    return waves.assign(propensity=share.astype(float), source="wave " + waves["wave"].astype(str))


CAMPAIGN_COLUMNS = ["customer_id", "as_of", "wave", "action", "outcome", "retained", "propensity", "source"]


@dataclass(frozen=True)
class CampaignRows:
    frame: pd.DataFrame  # the assignments of the campaigns used, like the waves' (wave missing) with features
    left_out: dict[str, str]  # campaign → why it is not used


def campaign_examples(s: Settings, data_end: pd.Timestamp, after: pd.Timestamp,
                      horizon_days: int = HORIZON_DAYS) -> CampaignRows:
    """The assignments of every logged campaign (``c360.features.campaigns``) usable as training rows, with the
    NBA's outcome over ``[launch, launch + horizon_days)`` (``readout.outcomes``), the logged propensity, their
    features as of the launch day and their source (``campaign NAME``). A campaign is left out, with the reason,
    when its window is not in the data yet, when it starts before ``after`` (the end of the test wave's window:
    training never sees the test period) or when the features stage has not built the snapshot of its launch."""
    built, frames, left_out = set(store.snapshot_dates(s)), [], {}
    for listed in campaigns.listed(s):
        name, launched = listed["name"], listed["launched_at"]
        start = pd.Timestamp(launched).normalize() if launched else None
        end = start + pd.Timedelta(days=horizon_days) if start is not None else None
        if start is None or end is None:
            left_out[name] = "not launched"
        elif end > data_end:
            left_out[name] = f"its outcome window runs to {end:%Y-%m-%d}, the data to {data_end:%Y-%m-%d}"
        elif start < after:
            left_out[name] = f"it starts before {after:%Y-%m-%d}, in the test wave's window"
        elif start not in built:
            left_out[name] = f"no feature snapshot as of its launch {start:%Y-%m-%d}: run `c360 features build`"
        else:
            got = readout.outcomes(s, campaigns.assignments(s, name), start, end)
            rows = got.assign(as_of=start, wave=np.nan, retained=~got["churned"].astype(bool),
                              source=f"campaign {name}")[CAMPAIGN_COLUMNS]
            frames.append(wave_features(store.offline(s), rows))  # one by one: campaigns may share members
    return CampaignRows(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), left_out)


def inverse_propensity(train: pd.DataFrame) -> pd.Series:
    """Each row's stabilized inverse propensity weight: 1 / propensity, truncated at ``MAX_INVERSE_PROPENSITY``,
    divided by its mean over the rows of the same arm and source.

    The T-learner fits one outcome model per arm. Within a wave the arms are drawn uniformly, so every arm's rows
    are a random sample of the wave: the weights are all 1. In a campaign an arm's rows are mostly the members the
    policy sent it (a skewed sample: the NBA chose them) and a few explored or held-out others; weighting each by
    1 / its propensity makes the arm's rows stand for all the campaign's members. Dividing by the mean keeps what
    an arm of a source weighs at its number of rows: the 20 rows a campaign explored an action on count as 20 rows,
    not as the whole campaign (unstabilized weights would let them outweigh a wave's arm)."""
    inverse = (1.0 / train["propensity"].astype(float)).clip(upper=MAX_INVERSE_PROPENSITY)
    return inverse / inverse.groupby([train["source"], train["action"]]).transform("mean")


# ---------------------------------------------------------------- the model


class NbaModel:
    """The registered model: ``predict(features)`` gives the recommended action and each action's expected
    outcome net of its cost (per customer, revenue units over the horizon). Extra input columns are ignored.

    With ``scale`` (a feature column, e.g. ``mrr``) the uplift model predicts the outcome per unit of that column
    and the expected outcome is the prediction times the column (0 where the column is missing or not positive).
    """

    def __init__(self, uplift: MultiArmUplift, features: list[str], costs: Mapping[str, float],
                 scale: str | None = None) -> None:
        self.uplift = uplift
        self.features = list(features)
        self.costs = dict(costs)
        self.scale = scale

    def expected_outcomes(self, X: pd.DataFrame) -> pd.DataFrame:
        """Expected outcome of each action before its cost; columns are the actions, no_action first."""
        return self._scaled(self.uplift.predict_outcomes(X[self.features]), X)

    def _scaled(self, outcomes: pd.DataFrame, X: pd.DataFrame) -> pd.DataFrame:
        return outcomes if self.scale is None else outcomes.mul(_scale(X[self.scale]), axis=0)

    def expected_net(self, X: pd.DataFrame) -> pd.DataFrame:
        return self._net(self.expected_outcomes(X))

    def _net(self, outcomes: pd.DataFrame) -> pd.DataFrame:
        return outcomes - pd.Series({a: float(self.costs.get(a, 0.0)) for a in outcomes.columns})

    @property
    def control(self) -> str:
        """The action that means doing nothing (the uplift model's control arm)."""
        return str(self.uplift.control)

    @property
    def spec(self) -> FeatureSpec:
        """How ``features`` are prepared for LightGBM (names of the reasons' columns)."""
        return self.uplift.spec

    @property
    def inputs(self) -> list[str]:
        """The raw columns the model reads: its features and the scale."""
        return list(dict.fromkeys([*self.features, *([self.scale] if self.scale else [])]))

    def choose(self, X: pd.DataFrame, allowed: pd.DataFrame | None = None) -> Choice:
        """The recommended action of each row among the ``allowed`` ones (all when None), each action's net uplift
        over no action, the action the reasons explain, the better actions withheld (``training.uplift.choose``:
        the one place the choice is made)."""
        return choose(self.expected_net(X), self.control, allowed)

    def recommend(self, X: pd.DataFrame) -> pd.Series:
        return pd.Series(self.choose(X).best, index=X.index, dtype=object, name="arm")

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        net = self.expected_net(X)
        best = pd.Series(choose(net, self.control).best, index=X.index, dtype=object, name="recommended")
        return pd.concat([best, net.add_prefix("expected_net.")], axis=1)

    def choose_and_explain(self, X: pd.DataFrame, allowed: pd.DataFrame | None = None, threads: int = 1
                           ) -> tuple[Choice, pd.DataFrame]:
        """``choose``, and the ``uplift_contributions`` of each row's explained action, on ``threads`` LightGBM
        threads, from one model matrix."""
        matrix = transform_features(X[self.features], self.spec)
        choice = choose(self._net(self._scaled(self.uplift.outcomes(matrix, threads), X)), self.control, allowed)
        return choice, self._uplift_contributions(X, matrix, choice.explained, threads)

    def uplift_contributions(self, X: pd.DataFrame, actions: pd.Series) -> pd.DataFrame:
        """Per row, what each prepared feature adds to the expected uplift of ``actions`` (one action per row) over
        the control, in outcome units: ``MultiArmUplift.uplift_contributions`` of the action, times the action's
        uplift calibration slope and the row's scale. With a scale, the rest of the uplift (the calibrated average
        effect per unit of scale, times the scale) goes to the scale's own column, so a row sums to the action's
        expected uplift before its cost. Rows whose action is the control get zeros."""
        matrix = transform_features(X[self.features], self.spec)
        return self._uplift_contributions(X, matrix, pd.Series(actions, index=X.index).to_numpy(dtype=object))

    def _uplift_contributions(self, X: pd.DataFrame, matrix: pd.DataFrame, chosen: np.ndarray, threads: int = 1
                              ) -> pd.DataFrame:
        uplift = self.uplift
        out = np.zeros((len(X), len(self.spec.names)))
        rest = np.zeros(len(X))
        for arm in pd.unique(chosen[chosen != self.control]):
            rows = chosen == arm
            ate, slope, center = uplift.calibration_.get(arm, (0.0, 1.0, 0.0))
            if slope == 0.0:  # no feature moves a flat arm's uplift: all of it is the average effect, no tree walked
                rest[rows] = ate
                continue
            difference = uplift.uplift_contributions(matrix[rows], arm, threads)
            out[rows] = slope * difference[:, :-1]
            base = difference[:, -1]
            rest[rows] = ate + slope * (base - center) if arm in uplift.calibration_ else base
        if self.scale is not None:
            size = _scale(X[self.scale]).to_numpy()
            out *= size[:, None]
            if self.scale in self.spec.columns:
                out[:, list(self.spec.columns).index(self.scale)] += rest * size
        return pd.DataFrame(out, index=X.index, columns=list(self.spec.names))


def _scale(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64").where(lambda v: v > 0, 0.0).fillna(0.0)


def fit_nba(train: pd.DataFrame, features: list[str], *, scale: str | None = SCALE,
            quantile: float | None = RATIO_QUANTILE, seed: int = 0) -> NbaModel:
    """``MultiArmUplift`` (T-learner, default settings but ``_min_leaf``) on the training assignments, wrapped with
    the action costs.

    ``train`` has each row's ``propensity`` and ``source``: every row is weighted by its ``inverse_propensity``.
    With ``scale`` the target is outcome / scale on the rows where the scale is positive, winsorized at its
    ``quantile`` (a few large add-on orders would otherwise steer the trees), and the weight is multiplied by the
    scale; without it, the outcome itself. The scale is the row's stake: the expected outcome is the
    prediction times the scale, so an error per dollar of MRR on a large account costs that many more dollars, and
    unweighted the many small accounts (where no paid action pays) set the effects the large ones are judged by.
    """
    weight = inverse_propensity(train)
    if scale is None:
        X, t, y = train[features], train["action"], train["outcome"].astype(float)
    else:
        size = _scale(train[scale])
        rows = (size > 0).to_numpy()
        X, t = train.loc[rows, features], train.loc[rows, "action"]
        y = train.loc[rows, "outcome"].astype(float) / size[rows]
        if quantile is not None:
            y = y.clip(upper=float(y.quantile(quantile)))
        weight = (weight * size)[rows]
    uplift = MultiArmUplift(min_child_samples=_min_leaf(int(t.value_counts().min())), seed=seed)
    waves = train.loc[X.index, "source"].str.startswith("wave ")
    fitted = uplift.fit(X, t, y, control=CONTROL, sample_weight=weight, randomized=waves)
    return NbaModel(fitted, features, ACTION_COSTS, scale)


# ---------------------------------------------------------------- evaluation


def truth_net_outcomes(con, truth: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Generated data: each row's true revenue_90d − cost under every action (columns), NaN where the truth has
    no assigned account for the row's customer (the customer's majority account) at its wave date."""
    effects = pd.read_parquet(truth / "treatment_effects.parquet")
    effects["net"] = effects["revenue_90d"] - effects["cost"]
    table = effects.pivot_table(index=["account", "as_of"], columns="action", values="net")
    account = frame["customer_id"].map(datasets.customer_accounts(con, truth))
    keys = pd.MultiIndex.from_arrays([account, pd.to_datetime(frame["as_of"])], names=["account", "as_of"])
    return table.reindex(keys).set_axis(frame.index)[[a for a in ACTIONS if a in table.columns]]


def exact_values(net: pd.DataFrame, policy: pd.Series) -> pd.DataFrame:
    """True mean net outcome per customer of each policy, on the rows the truth covers: the learned policy, the
    oracle (each customer's best action), each single action and random (every action equally likely)."""
    known = net.notna().all(axis=1)
    net, policy = net[known], policy[known]
    chosen = net.to_numpy()[np.arange(len(net)), net.columns.get_indexer(policy)]
    values = {"policy": float(chosen.mean()), "oracle": float(net.max(axis=1).mean())}
    values |= {f"all {arm}": float(net[arm].mean()) for arm in net.columns}
    values["random"] = float(net.mean(axis=1).mean())
    return pd.DataFrame({"value": values}).assign(rows=int(known.sum()))


def oracle_shares(exact: pd.DataFrame) -> dict[str, float]:
    """Share of the oracle's uplift the policy achieves, over no action and over the best single action (or no
    action): (value(policy) − value(baseline)) / (value(oracle) − value(baseline))."""
    v = exact["value"]
    singles = v[[i for i in v.index if str(i).startswith("all ")]]
    best = float(singles.max())
    return {
        "oracle_share_vs_no_action": (v["policy"] - v[f"all {CONTROL}"]) / (v["oracle"] - v[f"all {CONTROL}"]),
        "oracle_share_vs_best_single": (v["policy"] - best) / (v["oracle"] - best),
        "exact.best_single": best,
    }


def qini_by_action(outcomes: pd.DataFrame, test: pd.DataFrame) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
    """Qini AUC and curve of each action against no_action on the test wave, customers ranked by predicted uplift
    (outcome before costs: a constant cost does not change the ranking)."""
    aucs, curves = {}, {}
    for arm in [a for a in outcomes.columns if a != CONTROL]:
        rows = test["action"].isin([arm, CONTROL]).to_numpy()
        uplift = (outcomes[arm] - outcomes[CONTROL])[rows]
        flag, y = test["action"][rows] == arm, test["outcome"][rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            aucs[str(arm)] = float(qini_auc(uplift, flag, y))
        curves[f"{arm} vs {CONTROL}"] = qini_curve(uplift, flag, y)
    return aucs, curves


# ---------------------------------------------------------------- report and card


def _fmt_ci(row: pd.Series, key: str) -> str:
    return f"{row[key]:+.1f} [{row[f'{key}_low']:+.1f}, {row[f'{key}_high']:+.1f}]"


def by_segment(test: pd.DataFrame, policy: pd.Series) -> pd.DataFrame:
    """Share of each segment's test customers the learned policy sends each action, and the segment's size."""
    segment = test["segment"].fillna("unknown")
    shares = pd.crosstab(segment, policy, normalize="index").round(3)
    return shares.assign(customers=segment.value_counts()).rename_axis("segment")


def rows_by_source(train: pd.DataFrame) -> pd.DataFrame:
    """Training rows per source (each wave, each campaign) and action, waves first."""
    counts = pd.crosstab(train["source"], train["action"]).reindex(columns=list(ACTIONS), fill_value=0)
    order = sorted(counts.index, key=lambda source: (not source.startswith("wave "), source))
    return counts.assign(rows=counts.sum(axis=1)).loc[order].rename_axis("source")


def model_card(train: pd.DataFrame, test: pd.DataFrame, features: list[str], ev: Evaluation, model: NbaModel,
               groups: pd.DataFrame, left_out: Mapping[str, str]) -> str:
    ips = pd.DataFrame({
        "value [CI]": [f"{r.value:.1f} [{r.value_low:.1f}, {r.value_high:.1f}]" for r in ev.values.itertuples()],
        "gain [CI]": ["" if name == "policy" else _fmt_ci(r, "diff") for name, r in ev.values.iterrows()],
    }, index=ev.values.index.rename("policy"))
    in_test = {arm: test["action"] == arm for arm in ACTIONS}
    arms = pd.DataFrame({
        "cost": [f"{ACTION_COSTS.get(arm, 0.0):g}" for arm in ACTIONS],
        "train rows": [f"{(train['action'] == arm).sum():,}" for arm in ACTIONS],
        "test rows": [f"{in_test[arm].sum():,}" for arm in ACTIONS],
        "test mean outcome": [f"{test.loc[in_test[arm], 'outcome'].mean():.1f}" for arm in ACTIONS],
        "policy sends": [f"{ev.policy_share.get(arm, 0.0):.1%}" for arm in ACTIONS],
        "Qini AUC vs no_action": ["—" if arm == CONTROL else f"{ev.qini.get(arm, np.nan):.3f}" for arm in ACTIONS],
    }, index=pd.Index(ACTIONS, name="action"))
    exact: list[Block] = []
    if ev.exact is not None:
        exact = [
            f"True revenue_90d − cost of the action each policy picks, mean over the {int(ev.exact['rows'].iloc[0]):,} "
            "test customers the truth covers (the customer's majority account was assigned in the wave).",
            ev.exact[["value"]].map(lambda v: f"{v:.2f}").rename(columns={"value": "value per customer"})
            .rename_axis("policy"),
            f"Share of the oracle's uplift achieved: {ev.shares['oracle_share_vs_best_single']:.1%} over the best "
            f"single action (or no action), {ev.shares['oracle_share_vs_no_action']:.1%} over no action.",
        ]
    target = (f"outcome per dollar of `{model.scale}` (winsorized at its {RATIO_QUANTILE:.0%} quantile), times "
              f"`{model.scale}`" if model.scale else "outcome in dollars")
    uplift = model.uplift
    stake = f" times its `{model.scale}`" if model.scale else ""
    return cards.model_card(NBA_MODEL, f"""\
Next best action from the company's own randomized experiments: which of {", ".join(ACTIONS)} to take for each
customer. Outcome: net revenue (paid invoices less refunds) in the {HORIZON_DAYS} days from the wave date; costs
training_invite {ACTION_COSTS['training_invite']:g}, csm_call {ACTION_COSTS['csm_call']:g} (the discount's cost is in
the invoices). Recommendation: the highest expected outcome net of cost, no_action when nothing pays
(`training/nba_pipeline.py`).""", {
        "Data": [[
            f"train: {len(train):,} assignments of {train['source'].nunique()} sources "
            f"({', '.join(f'{pd.Timestamp(d):%Y-%m-%d}' for d in sorted(train['as_of'].unique()))}), by source below",
            f"test: {len(test):,} assignments, wave {int(test['wave'].iloc[0])} "
            f"({pd.Timestamp(test['as_of'].iloc[0]):%Y-%m-%d})",
            f"features: feature service `{SERVICE}` ({len(features)} features) as of each wave or campaign launch date",
            *(f"campaign {name} left out: {why}" for name, why in left_out.items()),
        ], arms, rows_by_source(train)],
        "Model": [f"""\
LightGBM {uplift.learner.upper()}-learner (`training.uplift.MultiArmUplift`) on the {target}: one model per
action, each action's uplift shrunk towards its average effect by how well it ranks customers on held-out
training rows; leaves of at least {uplift.options['min_child_samples']} rows. Each row weighs its inverse
propensity (its arm's share of its wave; a campaign's logged propensity, truncated at {MAX_INVERSE_PROPENSITY:g}),
stabilized to a mean of 1 in every arm of every source (a wave's rows weigh 1){stake}."""],
        "Policy value on the test wave (inverse propensity, 95 % paired-bootstrap CIs)": [
            "Net outcome per customer; gain = learned policy − row.", ips],
        "Exact values on the test wave (ground truth of the generated data)": exact,
        "By segment on the test wave (fairness review: who gets which action)": [by_segment(test, ev.policy)],
        "Fairness on the test wave": fairness.card_section(groups, "nba"),
        "Caveats": [[
            "The outcome's spread (thousands per customer, driven by account size) dwarfs the effects (tens per "
            "customer): the IPS values and their CIs are too wide to rank policies; on generated data trust the "
            "exact values.",
            f"Revenue in {HORIZON_DAYS} days counts only the near-term effect of an action; retention beyond the "
            "window is not valued, which favours cheap actions.",
            "Assignments are by intent to treat (bounced sends count); customers whose records got different arms "
            "in one wave are left out.",
        ]],
    })


# ---------------------------------------------------------------- the stage


def _min_leaf(smallest_arm: int) -> int:
    """``MultiArmUplift``'s 200 rows per leaf, down to a 20th of the smallest arm (at least 20), the rule of
    ``training.table_nba``: with the 2-fold calibration inside, an arm's trees see half its rows, and at 200 a few
    thousand assignments could not split at all. From about 4,000 rows per arm on it is the default."""
    return int(np.clip(smallest_arm // 20, 20, 200))


@dataclass(frozen=True)
class Evaluation:
    policy: pd.Series  # recommended action per test row
    values: pd.DataFrame  # IPS values with paired-bootstrap CIs
    exact: pd.DataFrame | None  # exact values from the ground truth
    shares: dict[str, float]  # share of the oracle's uplift (ground truth only)
    qini: dict[str, float]
    curves: dict[str, pd.DataFrame]
    policy_share: dict[str, float]


def evaluate(model: NbaModel, test: pd.DataFrame, truth_net: pd.DataFrame | None = None, seed: int = 0
             ) -> Evaluation:
    """The learned policy on the test wave: IPS values (net of each arm's cost) with paired-bootstrap CIs against
    every single action, random and — with the truth — the oracle; Qini AUC per action; exact values."""
    outcomes = model.expected_outcomes(test)
    policy = recommend_from_outcomes(outcomes - pd.Series(model.costs)[outcomes.columns], CONTROL)
    arms = list(outcomes.columns)
    net = test["outcome"].astype(float) - test["action"].map(model.costs).astype(float)
    exact, shares, oracle = None, {}, None
    if truth_net is not None:
        exact = exact_values(truth_net, policy)
        shares = oracle_shares(exact)
        known = truth_net.notna().all(axis=1)
        oracle = truth_net.fillna(-np.inf).idxmax(axis=1).where(known, CONTROL)
    values = paired_bootstrap(net, test["action"], policy, assignment_propensity(test["action"]), arms=arms,
                              oracle=oracle, n_boot=N_BOOT, seed=seed)
    qini, curves = qini_by_action(outcomes, test)
    share = policy.value_counts(normalize=True).reindex(arms, fill_value=0.0)
    return Evaluation(policy, values, exact, shares, qini, curves, {str(a): float(v) for a, v in share.items()})


def _metrics(ev: Evaluation) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    values = ev.values
    metrics: dict[str, float] = {
        "policy_value": float(values.at["policy", "value"]),
        "policy_value_low": float(values.at["policy", "value_low"]),
        "policy_value_high": float(values.at["policy", "value_high"]),
        **{f"qini_auc.{a}": v for a, v in ev.qini.items()},
        **{f"policy_share.{a}": v for a, v in ev.policy_share.items()},
    }
    if ev.exact is not None:
        metrics |= {"exact.policy": float(ev.exact.at["policy", "value"]),
                    "exact.oracle": float(ev.exact.at["oracle", "value"]),
                    **{k: float(v) for k, v in ev.shares.items()}}
    baselines: dict[str, dict[str, float]] = {}
    for name, row in values.drop(index="policy").iterrows():
        key = str(name).replace("all ", "all_")
        baselines[key] = {"value": float(row["value"]), "gain": float(row["diff"]),
                          "gain_low": float(row["diff_low"]), "gain_high": float(row["diff_high"])}
        if ev.exact is not None and name in ev.exact.index:
            baselines[key]["exact"] = float(ev.exact.at[name, "value"])
    finite = {k: v for k, v in metrics.items() if np.isfinite(v)}
    return finite, {k: {m: v for m, v in b.items() if np.isfinite(v)} for k, b in baselines.items()}


def train_nba(s: Settings, seed: int = 0, scale: str | None = SCALE, with_campaigns: bool = True) -> TrainReport:
    """Train on the earlier experiment waves and the logged campaigns whose outcome is known, evaluate on the last
    wave, log to MLflow and register as @challenger.

    Reads the feature snapshots of the wave dates and campaign launches (see the module docstring). ``scale=None``
    fits the uplift model on the outcome in dollars instead of per dollar of MRR; ``with_campaigns=False`` trains
    on the waves alone.
    """
    with warehouse.connect(s, read_only=True) as con:
        frame, features = nba_examples(s, con)
        waves, test = wave_split(frame)
        data_end = warehouse.data_end(con)
        has_truth = (s.truth / "treatment_effects.parquet").exists()
        truth_net = truth_net_outcomes(con, s.truth, test) if has_truth else None
        bands = fairness.customer_groups(con, test["customer_id"])
    test_end = pd.Timestamp(test["as_of"].max()) + pd.Timedelta(days=HORIZON_DAYS)
    learned = campaign_examples(s, data_end, test_end) if with_campaigns else CampaignRows(pd.DataFrame(), {})
    train = pd.concat([with_propensity(waves), *([learned.frame] if len(learned.frame) else [])], ignore_index=True)
    model = fit_nba(train, features, scale=scale, seed=seed)
    ev = evaluate(model, test, truth_net, seed)
    metrics, baselines = _metrics(ev)
    groups = fairness.nba_groups(ev.policy, CONTROL, fairness.with_groups(test, bands))
    gap_metrics, gap_tags = fairness.logged(groups, "nba")
    metrics |= gap_metrics
    test_period = f"{pd.Timestamp(test['as_of'].iloc[0]):%Y-%m-%d}"
    figures: dict[str, Figure] = {
        "qini_curves": qini_chart(ev.curves, title=f"Qini curves, test wave {test_period} "
                                                   f"(revenue in {HORIZON_DAYS} days, before action costs)"),
    }
    tables: dict[str, pd.DataFrame | Mapping[str, Any]] = {
        "policy_values_ips": ev.values.rename_axis("policy"), "qini_auc": ev.qini, "policy_share": ev.policy_share,
        "fairness": groups.reset_index()}
    if ev.exact is not None:
        tables["policy_values_exact"] = ev.exact.rename_axis("policy")
    uplift = model.uplift
    counts = rows_by_source(train)["rows"]
    version = tracking.log_training_run(
        experiment=NBA_MODEL, run_name=f"nba {test_period}", model=model, flavor="pyfunc",
        params={"horizon_days": HORIZON_DAYS, "features": len(features), "learner": uplift.learner,
                "control": CONTROL, "costs": ", ".join(f"{a}={c:g}" for a, c in ACTION_COSTS.items()),
                "scale": scale or "none", "ratio_winsorized_at": RATIO_QUANTILE if scale else "none",
                "sample_weight": f"inverse propensity × {scale}" if scale else "inverse propensity",
                "max_inverse_propensity": MAX_INVERSE_PROPENSITY,
                "train_waves": ",".join(str(w) for w in sorted(waves["wave"].unique())),
                "campaigns": ",".join(learned.frame["source"].str.removeprefix("campaign ").unique())
                if len(learned.frame) else "none",
                **{f"rows.{source.replace(' ', '.')}": n for source, n in counts.items()},
                "test_wave": int(test["wave"].iloc[0]), "seed": seed,
                **{f"lgbm.{k}": v for k, v in uplift.options.items()}},
        metrics=metrics, baselines=baselines,
        dataset={"training": train, "test": test}, dataset_name=SERVICE, target="outcome",
        input_example=test[features].head(5).reset_index(drop=True), figures=figures, tables=tables,
        model_card=model_card(train, test, features, ev, model, groups, learned.left_out), registered_name=NBA_MODEL,
        tags={"test_period": test_period, "feature_service": SERVICE, **gap_tags}, home=s.home)
    rows = {"train": len(train), "test": len(test),
            "test_with_truth": int(ev.exact["rows"].iloc[0]) if ev.exact is not None else 0,
            **{f"train.{source}": int(n) for source, n in counts.items()}}
    return TrainReport(NBA_MODEL, int(version.version), str(version.run_id), test_period, rows, metrics, baselines,
                       ev)
