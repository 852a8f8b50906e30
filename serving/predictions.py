"""One model's predictions as the API shows them: the stored score when it is fresh (same champion version, same
features as-of date; scored by `c360 score` or by the live update of `POST /events`, its `source`), else the
champion scoring the online features live; and predictions for raw rows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from c360.core.definitions import BY_NAME
from c360.feature_repo.predictions import FIELDS
from c360.serving import predict
from c360.serving.champions import Champion
from c360.serving.errors import Invalid, NotFound, echo
from c360.serving.online import Context, OnlineRow, iso_day, now, read_online
from c360.training.specs import MODELS

MODEL_FIELDS = {kind: [f for f in FIELDS if f.startswith(f"{kind}_")] for kind in MODELS}


def fresh(kind: str, row: OnlineRow, version: int) -> bool:
    """The batch score is the answer: same champion, same features, and no opt-out recorded since it was made."""
    p = row.predictions
    return (p is not None and row.predictions_as_of == row.as_of and p.get(f"{kind}_version") == version
            and p.get(f"{kind}_reasons") is not None
            and (row.opted_out_at is None or _scored(p.get("scored_at")) >= row.opted_out_at))


def _scored(at: Any) -> pd.Timestamp:
    """When a batch score was made (naive UTC); the earliest time when unknown."""
    try:
        stamp = pd.Timestamp(at) if at else pd.Timestamp.min
    except ValueError:
        return pd.Timestamp.min
    return stamp.tz_convert(None) if stamp.tzinfo else stamp


def live_wide(ctx: Context, kind: str, frame: pd.DataFrame) -> dict[str, Any]:
    """Score `frame` (raw features, one row per customer) with the champion `kind`: the wide columns."""
    return predict.wide(ctx.champions[kind].score(frame))


def _first(columns: dict[str, Any]) -> dict[str, Any]:
    return {k: predict.scalar(v[0]) for k, v in columns.items()}


def model_prediction(ctx: Context, kind: str, row: OnlineRow, scored_at: str) -> dict[str, Any]:
    """One model's prediction for the customer: batch when fresh, else live."""
    champion = ctx.champions[kind]
    if fresh(kind, row, champion.version):
        assert row.predictions is not None
        values, when = {k: row.predictions.get(k) for k in MODEL_FIELDS[kind]}, row.predictions.get("scored_at")
        source = row.predictions.get("source") or "batch"  # scored by `c360 score`, or by the live update
    else:
        values = _first(live_wide(ctx, kind, pd.DataFrame([row.features])))
        source, when = "live", scored_at
    return present(champion, values, {"name": champion.name, "version": champion.version, "source": source,
                                  "scored_at": when, "features_as_of": iso_day(row.as_of)})


def present(champion: Champion, values: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """A wide row of one model as the API shows it: the model's own fields, its horizon, reasons and version."""
    spec = MODELS[champion.kind]
    reasons = [reason(r, spec.outcome) for r in predict.parse_json(values.get(f"{champion.kind}_reasons"))]
    return {**champion.scorer.present(values), "horizon_days": spec.horizon_days, "reasons": reasons,
            "model": model}


def reason(item: dict[str, Any], outcome: str) -> dict[str, Any]:
    from c360.training.explain import label

    contribution = float(item.get("contribution") or 0.0)
    direction = "raises" if contribution > 0 else "lowers"
    name = str(item.get("feature"))
    value = item.get("value")
    description = label(name, _descriptions())
    return {"feature": name, "description": description, "value": value, "contribution": contribution,
            "direction": direction,
            "text": f"{description}: {'missing' if value is None else value} — {direction} {outcome}"}


_DESCRIPTIONS: dict[str, str] = {}


def _descriptions() -> dict[str, str]:
    if not _DESCRIPTIONS:
        _DESCRIPTIONS.update({f.name: f.description for f in BY_NAME.values()})
    return _DESCRIPTIONS


def predict_customers(ctx: Context, kind: str, customer_ids: list[str]) -> list[dict[str, Any]]:
    """One model's predictions for known customers (batch when fresh, else live); NotFound lists the unknown."""
    rows = read_online(ctx, customer_ids)
    unknown = [c for c, r in zip(customer_ids, rows, strict=True) if r is None]
    if unknown:
        raise NotFound(f"unknown customers: {', '.join(map(echo, unknown[:20]))}")
    scored_at = now()
    return [{"customer_id": r.customer_id, **model_prediction(ctx, kind, r, scored_at)} for r in rows if r]


def predict_rows(ctx: Context, kind: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One model's predictions for raw feature rows the caller sends (always live)."""
    champion = ctx.champions[kind]
    needed = champion.inputs
    frame = pd.DataFrame([validate_row(r, needed) for r in rows], columns=needed)
    columns = live_wide(ctx, kind, frame)
    model = {"name": champion.name, "version": champion.version, "source": "live", "scored_at": now(),
             "features_as_of": None}
    return [{"customer_id": None, **present(champion, {k: predict.scalar(v[i]) for k, v in columns.items()}, model)}
            for i in range(len(frame))]


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
}


def validate_row(row: dict[str, Any], needed: list[str]) -> dict[str, Any]:
    """The row's values of the model's inputs; Invalid names missing, unknown or mistyped features."""
    missing = [n for n in needed if n not in row]
    unknown = [n for n in row if n not in BY_NAME]
    wrong = [n for n in needed if n in row and row[n] is not None and not _CHECKS[BY_NAME[n].dtype](row[n])]
    problems = []
    if missing:
        problems.append(f"missing features: {', '.join(missing)} (send null for an unknown value)")
    if unknown:
        problems.append(f"unknown features: {', '.join(map(str, unknown[:20]))}")
    if wrong:
        problems.append("wrong types: " + ", ".join(f"{n} must be {BY_NAME[n].dtype}" for n in wrong))
    nonfinite = [n for n in needed if isinstance(row.get(n), float) and not math.isfinite(row[n])]
    if nonfinite:
        problems.append(f"not finite: {', '.join(nonfinite)}")
    if problems:
        raise Invalid("; ".join(problems))
    return {n: row[n] for n in needed}
