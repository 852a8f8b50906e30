"""Promotion gate: `@challenger` takes `@champion` only when it is measurably better on the same test period.

The gate compares the metrics both runs logged (`training.tracking.log_training_run`) and refuses when the runs'
`test_period` tags differ, since metrics from different periods are not comparable. There is deliberately no
`force`: a human who overrides the gate moves the alias in the MLflow UI. Every decision is also written on the
challenger version as tags (`gate.decision`, `gate.reasons`, `gate.champion`).

Fairness: a gate with a `fairness` metric also refuses a challenger whose worst-group gap of it (logged by training,
`training.fairness`) is measurably beyond `Limits.max_gap` (its 95 % lower bound is, when the run logged one), or
wider than the champion's by more than `Limits.margin`, and names the two groups. The limit holds for a first
champion too; the margin needs a champion that logged the gap.

Rollback (`rollback`) moves `@champion` back to the version it took over from: the `gate.champion` tag of the
version promoted over it. The champions' history is that chain of tags, so a second rollback goes one further back.
A table model (`c360-NAME`, `training.table_models`) has its kind's gate (`table_models.GATES`); its test
period is its table and folds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from c360.core.settings import Settings
from c360.training import table_models
from c360.training.fairness import NOT_MEASURED, gap_low_metric, gap_metric
from c360.training.specs import CHURN, CLV, NBA, Better, Gate, Guard
from c360.training.tracking import CHALLENGER, CHAMPION, ModelNotFound, version_by_alias

__all__ = ["Better", "Gate", "Guard", "Limits", "promote", "promote_table", "rollback"]
TEST_PERIOD = "test_period"
_EPS = 1e-12  # so that a gain of exactly the margin passes despite float rounding


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reasons: list[str]
    challenger: int
    champion: int | None  # the champion before the decision

    def __str__(self) -> str:
        verdict = "promoted" if self.promoted else "refused"
        return f"challenger v{self.challenger} {verdict}:\n" + "\n".join(f"- {r}" for r in self.reasons)


# The gates of the three models are in their specs (`training.specs.MODELS`); these names stay for callers.
CHURN_GATE, CLV_GATE, NBA_GATE = CHURN.gate, CLV.gate, NBA.gate


@dataclass(frozen=True)
class Limits:
    """How far apart a model may treat groups: the largest worst-group gap, and how much wider than the
    champion's it may be (settings `fairness_max_gap`, `fairness_margin`)."""

    max_gap: float
    margin: float

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(s.fairness_max_gap, s.fairness_margin)


@dataclass(frozen=True)
class _Run:
    version: int
    metrics: dict[str, float]
    test_period: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def _run(client: MlflowClient, version: ModelVersion) -> _Run:
    if not version.run_id:
        return _Run(int(version.version), {})
    data = client.get_run(version.run_id).data
    return _Run(int(version.version), dict(data.metrics), data.tags.get(TEST_PERIOD), dict(data.tags))


def _gain(challenger: float, champion: float, better: Better) -> float:
    """How much better the challenger is (negative: worse)."""
    return challenger - champion if better == "higher" else champion - challenger


def _periods(challenger: _Run, champion: _Run) -> str | None:
    """Why the two runs cannot be compared, or None."""
    if challenger.test_period is None or champion.test_period is None:
        missing = " and ".join(
            f"{role} v{run.version}" for role, run in (("challenger", challenger), ("champion", champion))
            if run.test_period is None)
        return f"no {TEST_PERIOD} tag on {missing}: cannot tell that both were tested on the same period"
    if challenger.test_period != champion.test_period:
        return (f"challenger v{challenger.version} was tested on {challenger.test_period} but champion "
                f"v{champion.version} on {champion.test_period}: their metrics are not comparable")
    return None


def _missing(metric: str, challenger: _Run, champion: _Run) -> str | None:
    absent = [f"{role} v{run.version}" for role, run in (("challenger", challenger), ("champion", champion))
              if metric not in run.metrics]
    return f"{metric}: not logged by {' and '.join(absent)}" if absent else None


def _primary(gate: Gate, challenger: _Run, champion: _Run) -> tuple[bool, str]:
    if (missing := _missing(gate.metric, challenger, champion)) is not None:
        return False, missing
    new, old = challenger.metrics[gate.metric], champion.metrics[gate.metric]
    gain = _gain(new, old, gate.better)
    required = gate.margin * abs(old) if gate.relative else gate.margin
    passed = gain + _EPS >= required
    share = f" ({gate.margin:.1%} of the champion's)" if gate.relative else ""
    return passed, (f"{gate.metric} ({gate.better} is better): challenger {new:.4f} vs champion {old:.4f}, "
                    f"a gain of {gain:+.4f} where at least {required:+.4f}{share} is required: "
                    f"{'passed' if passed else 'failed'}")


def _guard(guard: Guard, challenger: _Run, champion: _Run) -> tuple[bool, str]:
    if (missing := _missing(guard.metric, challenger, champion)) is not None:
        return False, missing
    new, old = challenger.metrics[guard.metric], champion.metrics[guard.metric]
    loss = -_gain(new, old, guard.better)
    passed = loss <= guard.tolerance + _EPS
    change = f"worsened by {loss:.4f}" if loss > 0 else f"did not worsen ({-loss:+.4f} better)"
    return passed, (f"guard {guard.metric} ({guard.better} is better): challenger {new:.4f} vs champion {old:.4f}, "
                    f"{change}, tolerance {guard.tolerance:.4f}: {'passed' if passed else 'failed'}")


def _fairness(metric: str, limits: Limits, challenger: _Run, champion: _Run | None) -> tuple[bool, str]:
    """The challenger's worst-group gap of `metric`: within the limit, and not wider than the champion's by more
    than the margin."""
    name = gap_metric(metric)
    if name not in challenger.metrics:
        why = challenger.tags.get(name, "")
        if why.startswith(NOT_MEASURED):  # a test set too small to compare groups: said, not held against it
            return True, f"fairness: worst-group gap of {metric} {why}: passed"
        return False, f"fairness: {name} not logged by challenger v{challenger.version}: failed"
    new, where = challenger.metrics[name], challenger.tags.get(name, "groups not recorded")
    low = challenger.metrics.get(gap_low_metric(metric), new)
    head = f"fairness: worst-group gap of {metric} {new:.4f} ({where})"
    limit = f"the limit {limits.max_gap:.4f}"
    beyond = ""  # a gap beyond the limit, but not measurably: said in every sentence
    if new > limits.max_gap + _EPS:
        if low > limits.max_gap + _EPS:
            bound = f", at least {low:.4f} (95 % lower bound)," if low < new else ""
            return False, f"{head}{bound} is beyond {limit} (fairness_max_gap): failed"
        beyond = f" is not measurably beyond {limit} (fairness_max_gap): its 95 % lower bound is {low:.4f};"
    if champion is None or name not in champion.metrics:
        return True, f"{head}{beyond or f' is within {limit};'} no champion's gap to compare: passed"
    old = champion.metrics[name]
    passed = new <= old + limits.margin + _EPS
    verdict = "passed" if passed else "failed"
    return passed, (f"{head}{beyond} against champion's {old:.4f}: "
                    f"{'wider' if new > old else 'not wider'} by {new - old:+.4f}, margin {limits.margin:.4f} "
                    f"(fairness_margin): {verdict}")


def _compare(gate: Gate, limits: Limits, challenger: _Run, champion: _Run) -> tuple[bool, list[str]]:
    """Whether the challenger passes the gate against the champion, and one plain sentence per check."""
    if (why_not := _periods(challenger, champion)) is not None:
        return False, [why_not]
    checks = [_primary(gate, challenger, champion), *(_guard(g, challenger, champion) for g in gate.guards)]
    if gate.fairness:
        checks.append(_fairness(gate.fairness, limits, challenger, champion))
    return all(passed for passed, _ in checks), [reason for _, reason in checks]


def champion_version(client: MlflowClient, name: str) -> ModelVersion:
    """The version serving should load; `ModelNotFound` when `name` has no champion yet."""
    return version_by_alias(client, name, CHAMPION)


def _champion_or_none(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return champion_version(client, name)
    except ModelNotFound:
        return None


def _record(client: MlflowClient, name: str, decision: Decision) -> Decision:
    tags = {"gate.decision": "promoted" if decision.promoted else "refused",
            "gate.reasons": "\n".join(decision.reasons),
            "gate.champion": "none" if decision.champion is None else str(decision.champion)}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(decision.challenger), key, value)
    return decision


def _first(client: MlflowClient, name: str, gate: Gate, limits: Limits, challenger: _Run) -> Decision:
    """No champion yet: the challenger becomes champion, unless it treats groups too differently."""
    reasons = [f"no champion yet: challenger v{challenger.version} becomes champion"]
    passed = True
    if gate.fairness:
        passed, reason = _fairness(gate.fairness, limits, challenger, None)
        reasons = [reason] if not passed else [*reasons, reason]
    if passed:
        client.set_registered_model_alias(name, CHAMPION, str(challenger.version))
    return _record(client, name, Decision(passed, reasons, challenger.version, None))


def promote(client: MlflowClient, name: str, gate: Gate, limits: Limits | None = None) -> Decision:
    """Moves `@champion` of `name` to its `@challenger` when the challenger passes `gate` (or there is no champion)
    and treats groups alike within `limits` (default: the settings').

    Raises `ModelNotFound` when `name` or its `@challenger` does not exist."""
    limits = limits or Limits.of(Settings())
    challenger = _run(client, version_by_alias(client, name, CHALLENGER))
    current = _champion_or_none(client, name)
    if current is None:
        return _first(client, name, gate, limits, challenger)
    champion = _run(client, current)
    if champion.version == challenger.version:
        return Decision(False, [f"v{challenger.version} is already champion"], challenger.version, champion.version)
    passed, reasons = _compare(gate, limits, challenger, champion)
    if passed:
        client.set_registered_model_alias(name, CHAMPION, str(challenger.version))
    return _record(client, name, Decision(passed, reasons, challenger.version, champion.version))


@dataclass(frozen=True)
class Rollback:
    model: str
    rolled_back: int  # the champion before the rollback
    champion: int  # the champion now: the one it had taken over from
    reason: str


class NoPreviousChampion(LookupError):
    """The champion took over from no earlier champion (it was the first, or was placed by hand)."""


def rollback(client: MlflowClient, name: str, reason: str) -> Rollback:
    """Moves `@champion` of `name` back to the version the current champion took over from, with `reason` written
    on both versions (`rollback.reason`, `rollback.to` on the one rolled back; `rollback.from` on the one restored).

    Raises `ModelNotFound` without a champion, `NoPreviousChampion` when there is none before it."""
    current = champion_version(client, name)
    previous = current.tags.get("gate.champion", "none")
    if current.tags.get("gate.decision") != "promoted" or previous == "none":
        raise NoPreviousChampion(f"{name} v{current.version} is the first champion on record: no previous champion "
                                 "to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    for version, tags in ((current.version, {"rollback.reason": reason, "rollback.to": previous}),
                          (previous, {"rollback.from": str(current.version), "rollback.reason": reason})):
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, value)
    return Rollback(name, int(current.version), int(previous), reason)


def promote_table(client: MlflowClient, name: str) -> Decision:
    """`promote` for the table model `name` (`c360-NAME`), with its kind's gate; `ModelNotFound` when `name` is no
    table model."""
    kind = table_models.table_models(client).get(name, {}).get("kind")
    if kind not in table_models.GATES:
        raise ModelNotFound(f"no table model named {name!r}: `c360 train churn|nba --table FILE --name NAME` makes one")
    return promote(client, name, table_models.GATES[kind])
