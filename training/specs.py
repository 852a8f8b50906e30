"""The models c360 trains and serves, in one table: `MODELS[kind]` is a `ModelSpec`.

Every other place reads its names from here: the CLI (`c360 train|promote KIND`), the training pipelines (registered
name, feature service, horizon), the promotion gate (`training.registry.promote(client, spec.name, spec.gate)`)
and serving (champions by registered name, horizon and the words of each reason). The gate's types live here too,
without MLflow, so that the CLI can read the table without importing MLflow; `training.registry` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Better = Literal["higher", "lower"]
Kind = Literal["churn", "clv", "nba", "expansion", "response"]
KINDS: tuple[Kind, ...] = get_args(Kind)


@dataclass(frozen=True)
class Guard:
    """A metric the challenger may not worsen by more than `tolerance` (ECE, Brier, ... usually lower is better)."""

    metric: str
    tolerance: float
    better: Better = "lower"


@dataclass(frozen=True)
class Gate:
    """The challenger must beat the champion's `metric` by at least `margin` (a share of the champion's value when
    `relative`), and break no guard."""

    metric: str
    better: Better = "higher"
    margin: float = 0.0
    guards: tuple[Guard, ...] = ()
    relative: bool = False
    fairness: str | None = None  # the metric whose worst-group gap (training.fairness) the challenger may not widen


@dataclass(frozen=True)
class ModelSpec:
    """One model: its kind (the CLI's and the API's word), registered name, feature service, horizon, gate, and
    what its reasons move (`outcome`: "raises churn risk")."""

    kind: Kind
    name: str  # registered model name in MLflow
    service: str  # Feast feature service it is trained and served on
    horizon_days: int  # how far ahead it predicts from the features' as-of date
    gate: Gate  # what a @challenger must beat to become @champion
    outcome: str  # what a reason raises or lowers, in words
    required: bool = True  # serving needs its champion; without one, a home written before it came only lacks it


CHURN = ModelSpec(
    "churn", "c360-churn", "churn_v1", 90,
    Gate("roc_auc", "higher", 0.002, (Guard("ece", 0.01), Guard("brier", 0.002)), fairness="calibration"),
    "churn risk")
# Fairness (`Gate.fairness`, the worst-group gap the gate reads; `training.fairness` measures it):
# churn: calibration (mean predicted − observed churn rate). The action follows the risk score, so "a 30 % risk
#   means 30 %" must hold in every group; then the groups' differences in TPR and selection rate (shown on the card,
#   not gated) follow real differences in churn: an equal TPR across groups that churn differently would need a
#   miscalibrated model.
# clv: relative error of the group's total. Value drives investment: an under-predicted group is under-served.
# nba: discount rate. The discount is the one action that sets a price: a challenger that gives it to one group
#   much more often than the champion did is stopped.
# 1 % lower RMSE of 12-month value, and the total may not drift more than 2 points further from the actual
CLV = ModelSpec(
    "clv", "c360-clv", "clv_v1", 365,
    Gate("rmse", "lower", 0.01, (Guard("abs_total_error_pct", 2.0),), relative=True, fairness="relative_error"),
    "expected value")
# $0.50 more net revenue per customer (IPS on the test wave), and a lower bound of its CI no worse by more than $2
NBA = ModelSpec(
    "nba", "c360-nba", "nba_v1", 91,
    Gate("policy_value", "higher", 0.5, (Guard("policy_value_low", 2.0, "higher"),), fairness="discount_rate"),
    "the action's uplift")

# expansion: calibration, as churn: sales rank accounts by the probability, so "30 %" must mean 30 % in every group.
EXPANSION = ModelSpec(
    "expansion", "c360-expansion", "expansion_v1", 90,
    Gate("roc_auc", "higher", 0.002, (Guard("ece", 0.01), Guard("brier", 0.002)), fairness="calibration"),
    "expansion chance", required=False)

# response: calibration, as churn: a campaign's channel and topic are chosen by the probability, so it must mean
#   what it says in every group. Its horizon is the days after a send in which a click or response counts.
RESPONSE = ModelSpec(
    "response", "c360-response", "response_v1", 14,
    Gate("roc_auc", "higher", 0.002, (Guard("ece", 0.01), Guard("brier", 0.002)), fairness="calibration"),
    "response chance", required=False)

MODELS: dict[str, ModelSpec] = {spec.kind: spec for spec in (CHURN, CLV, NBA, EXPANSION, RESPONSE)}
