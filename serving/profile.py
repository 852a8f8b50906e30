"""A customer's whole profile — past, present, future — as a plain function.

The service (`serving.service`) is a thin HTTP layer over these; a notebook can call them with a `Context`.

Where each part comes from:

* past and present: the Feast online store (`profile_v1` views), grouped as `c360 profile` groups them
  (`features.profile.assemble`); with `details=True` also the identity (golden record) and the detail lists
  (timeline, contacts, ...) from the warehouse (`features.details`), which costs a few warehouse queries.
* future: the `predictions` view of the same online read (churn, CLV, next best action, and expansion and campaign
  response when the home has their champions: otherwise `available` is false and says why). A model's batch score
  is used when it is *fresh*: made by the version that is `@champion` now, from the features the profile shows
  (same as-of date). Otherwise the model scores the customer's online features live, with the same functions the
  batch uses (`serving.predict`), and the response says `"source": "live"`. The next feature and content topics
  follow the same rule (fresh when computed from the same as-of date); retargeting, advocate and trainings are
  derived on every request from the features and the predictions shown (`serving.signals`).
* the persona (in present): from the features shown and the fitted personas (`features.personas`), as `c360 score`
  assigns it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from c360.core.settings import Settings
from c360.features import store as feature_stores
from c360.features.personas import persona_of
from c360.serving import predict, signals
from c360.serving.errors import NotFound, Unavailable, echo
from c360.serving.online import Context, OnlineRow, iso_day, now, one, warehouse
from c360.serving.predictions import model_prediction
from c360.training.specs import MODELS

log = logging.getLogger(__name__)
SIGNAL_FIELDS = ["next_feature", "next_feature_score", "next_feature_method", "content_topics"]


# ---------------------------------------------------------------- the other forward-looking items


def _population(ctx: Context, con: Any, as_of: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Co-occurrence, feature popularity and topic rates of all customers at `as_of`, computed once per process."""
    with ctx._lock:
        if as_of not in ctx._population:
            used = signals.usage(con, as_of)
            popularity = used.mean() if len(used) else pd.Series(dtype="float64")
            ctx._population = {as_of: (signals.cooccurrence(used), popularity,
                                       signals.topic_rates(signals.topics(con, as_of)))}
        return ctx._population[as_of]


def live_signals(ctx: Context, row: OnlineRow) -> dict[str, Any]:
    with warehouse(ctx.settings) as con:
        p, popularity, rates = _population(ctx, con, row.as_of)
        used = signals.usage(con, row.as_of, [row.customer_id]).reindex([row.customer_id], fill_value=0)
        nxt = signals.next_feature(used, p, popularity).iloc[0].to_dict()
        content = signals.content_interest(signals.topics(con, row.as_of, [row.customer_id]), rates)
    return {**nxt, "content_topics": content.get(row.customer_id, "[]")}


def optional(ctx: Context, kind: str, row: OnlineRow, scored_at: str) -> dict[str, Any]:
    """An optional model's prediction (expansion, response), or, in a home without its champion (trained before the
    model existed), why it is unavailable: the rest of the profile still answers."""
    if kind not in ctx.champions.kinds():
        spec = MODELS[kind]
        return {"available": False, "probability": None, "horizon_days": spec.horizon_days, "reasons": [],
                "model": None, "unavailable": f"no @champion of {spec.name}: `c360 train {kind}` and "
                                              f"`c360 promote {kind}` add it"}
    return model_prediction(ctx, kind, row, scored_at)


def future(ctx: Context, row: OnlineRow, scored_at: str) -> dict[str, Any]:
    churn = model_prediction(ctx, "churn", row, scored_at)
    clv = model_prediction(ctx, "clv", row, scored_at)
    nba = model_prediction(ctx, "nba", row, scored_at)
    batch = row.predictions is not None and row.predictions_as_of == row.as_of \
        and row.predictions.get("content_topics") is not None
    values = {k: row.predictions.get(k) for k in SIGNAL_FIELDS} if batch and row.predictions else \
        live_signals(ctx, row)
    source = {"source": "batch" if batch else "live",
              "scored_at": row.predictions.get("scored_at") if batch and row.predictions else scored_at}
    name = values.get("next_feature") or None
    uplifts = {a["action"]: a["uplift"] for a in nba["alternatives"]} | {nba["action"]: nba["uplift"]}
    return {
        "churn": churn, "clv": clv, "next_best_action": nba, "expansion": optional(ctx, "expansion", row, scored_at),
        "response": optional(ctx, "response", row, scored_at),
        "next_feature": {"feature": name, "score": predict.scalar(values.get("next_feature_score")) if name else None,
                         "method": values.get("next_feature_method"), **source},
        "content_interest": {"topics": predict.parse_json(values.get("content_topics")), **source},
        "retargeting": signals.retargeting(row.features),
        "advocate": signals.advocate(row.features, churn["band"]),
        "trainings": signals.trainings(row.features, name, uplifts.get("training_invite")),
    }


# ---------------------------------------------------------------- the whole profile


def profile(ctx: Context, customer_id: str, details: bool = False) -> dict[str, Any]:
    """The profile of one customer: past, present, future and freshness (+ identity and lists with `details`)."""
    from c360.features.profile import assemble

    row = one(ctx, customer_id)
    scored_at = now()
    sections = assemble({}, row.features)
    past = json_value(sections["past"]) | {"live_events": live_events(ctx.settings, customer_id)}
    present = json_value(sections["present"]) | {"persona": persona_of(ctx.settings, row.features)}
    out: dict[str, Any] = {"customer_id": customer_id, "past": past, "present": present,
                           "future": future(ctx, row, scored_at)}
    if details:
        out |= profile_details(ctx.settings, customer_id, row.as_of)
    out["freshness"] = {"features_as_of": iso_day(row.as_of), "predictions_as_of": iso_day(row.predictions_as_of),
                        "served_at": scored_at}
    return out


def live_events(s: Settings, customer_id: str) -> list[dict[str, Any]]:
    """The customer's events not folded yet (`features.live.events_of`); none shown while a writer holds the
    warehouse (an ingest, which is folding them): the profile does not wait for it."""
    from c360.features import live

    try:
        return live.events_of(s, customer_id, lambda: warehouse(s))
    except Unavailable:
        return []


def profile_details(s: Settings, customer_id: str, as_of: pd.Timestamp) -> dict[str, Any]:
    """Identity and detail lists from the warehouse (the lists `c360 profile` prints)."""
    from c360.core import warehouse as wh
    from c360.features.details import details, flags_since

    with warehouse(s) as con:
        identity = wh.customer(con, customer_id)
        if identity is None:
            raise NotFound(f"unknown customer {echo(customer_id)!r}: not in the warehouse")
        lists = details(con, customer_id, as_of)
    lists["red_flags_since"] = flags_since(feature_stores.history(s, customer_id))
    who = {k: json_value(identity.get(k)) for k in ("customer_id", "display_name", "company", "segment", "region",
                                                     "emails", "phones", "sources", "records", "unlinked")}
    who["evidence"] = f"c360 resolve explain SOURCE KEY (records: {who.get('records')})"
    return {"identity": who, "details": {name: _records(frame) for name, frame in lists.items()}}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def json_value(value: Any) -> Any:
    if type(value) in predict.PLAIN:  # most of a profile's values: as they are
        return value
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [json_value(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, pd.Timestamp | datetime):
        return None if pd.isna(value) else value.isoformat()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return predict.scalar(value)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
