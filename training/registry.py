"""Promotion gate: `@challenger` takes `@champion` only when it is measurably better on the same test period.

The gate compares the metrics both runs logged (`training.tracking.log_training_run`) and refuses when the runs'
`test_period` tags differ, since metrics from different periods are not comparable. There is deliberately no
`force`: a human who overrides the gate moves the alias in the MLflow UI. Every decision is also written on the
challenger version as tags (`gate.decision`, `gate.reasons`, `gate.champion`). A table model (`c360-NAME`,
`training.table_models`) has its kind's gate (`table_models.GATES`); its test period is its table and folds.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from c360.training import table_models
from c360.training.specs import CHURN, CLV, NBA, Better, Gate, Guard
from c360.training.tracking import CHALLENGER, CHAMPION, ModelNotFound, version_by_alias

__all__ = ["Better", "Gate", "Guard", "promote", "promote_table"]
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
class _Run:
    version: int
    metrics: dict[str, float]
    test_period: str | None = None


def _run(client: MlflowClient, version: ModelVersion) -> _Run:
    if not version.run_id:
        return _Run(int(version.version), {})
    data = client.get_run(version.run_id).data
    return _Run(int(version.version), dict(data.metrics), data.tags.get(TEST_PERIOD))


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


def _compare(gate: Gate, challenger: _Run, champion: _Run) -> tuple[bool, list[str]]:
    """Whether the challenger passes the gate against the champion, and one plain sentence per check."""
    if (why_not := _periods(challenger, champion)) is not None:
        return False, [why_not]
    checks = [_primary(gate, challenger, champion), *(_guard(g, challenger, champion) for g in gate.guards)]
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


def promote(client: MlflowClient, name: str, gate: Gate) -> Decision:
    """Moves `@champion` of `name` to its `@challenger` when the challenger passes `gate` (or there is no champion).

    Raises `ModelNotFound` when `name` or its `@challenger` does not exist."""
    challenger = _run(client, version_by_alias(client, name, CHALLENGER))
    current = _champion_or_none(client, name)
    if current is None:
        reasons = [f"no champion yet: challenger v{challenger.version} becomes champion"]
        client.set_registered_model_alias(name, CHAMPION, str(challenger.version))
        return _record(client, name, Decision(True, reasons, challenger.version, None))
    champion = _run(client, current)
    if champion.version == challenger.version:
        return Decision(False, [f"v{challenger.version} is already champion"], challenger.version, champion.version)
    passed, reasons = _compare(gate, challenger, champion)
    if passed:
        client.set_registered_model_alias(name, CHAMPION, str(challenger.version))
    return _record(client, name, Decision(passed, reasons, challenger.version, champion.version))


def promote_table(client: MlflowClient, name: str) -> Decision:
    """`promote` for the table model `name` (`c360-NAME`), with its kind's gate; `ModelNotFound` when `name` is no
    table model."""
    kind = table_models.table_models(client).get(name, {}).get("kind")
    if kind not in table_models.GATES:
        raise ModelNotFound(f"no table model named {name!r}: `c360 train churn|nba --table FILE --name NAME` makes one")
    return promote(client, name, table_models.GATES[kind])
