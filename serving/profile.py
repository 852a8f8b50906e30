"""A customer's whole profile — past, present, future — and single predictions, as plain functions.

The service (`serving.service`) is a thin HTTP layer over these; a notebook can call them with a `Context`.

Where each part comes from:

* past and present: the Feast online store (`profile_v1` views), grouped as `c360 profile` groups them
  (`features.profile.assemble`); with `details=True` also the identity (golden record) and the detail lists
  (timeline, contacts, ...) from the warehouse (`features.details`), which costs a few warehouse queries.
* future: the `predictions` view of the same online read. A model's batch score is used when it is *fresh*: made
  by the version that is `@champion` now, from the features the profile shows (same as-of date). Otherwise the
  model scores the customer's online features live, with the same functions the batch uses (`serving.predict`),
  and the response says `"source": "live"`. The next feature and content topics follow the same rule (fresh when
  computed from the same as-of date); retargeting, advocate and trainings are derived on every request from the
  features and the predictions shown (`serving.signals`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c360.core.definitions import BY_NAME
from c360.core.settings import Settings
from c360.feature_repo.predictions import FIELDS, PREDICTIONS
from c360.features import store as feature_stores
from c360.features.store import OnlineReader
from c360.serving import predict, signals
from c360.serving.champions import Champion, Champions
from c360.serving.errors import Invalid, NotFound, Unavailable, echo
from c360.training.specs import MODELS

log = logging.getLogger(__name__)
MODEL_FIELDS = {kind: [f for f in FIELDS if f.startswith(f"{kind}_")] for kind in MODELS}
SIGNAL_FIELDS = ["next_feature", "next_feature_score", "next_feature_method", "content_topics"]


@dataclass
class Context:
    """What profile assembly and prediction read from: settings, Feast, the champions."""

    settings: Settings
    store: Any  # feast.FeatureStore
    champions: Champions
    reader: OnlineReader | None = None
    _population: dict[pd.Timestamp, tuple[pd.DataFrame, pd.Series, pd.Series]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def online(self) -> OnlineReader:
        """Every customer feature and every predictions field, in one online read for a profile; `reader = None`
        re-reads the registry's views."""
        if self.reader is None:
            try:
                self.reader = OnlineReader.of(self.store, lambda v, name: name in BY_NAME or v.name == PREDICTIONS)
            except Exception as e:  # the registry's file is gone or unreadable
                raise Unavailable("feature registry", "cannot be read: run `c360 features apply`", e) from e
        return self.reader

    def stamps(self) -> list[str]:
        """One feature of each snapshot view: their event times say which snapshot a customer's row is from."""
        return [names[0] for view, names in self.online().views if view.name != PREDICTIONS]


def latest_snapshot(s: Settings) -> pd.DataFrame | None:
    """The latest feature snapshot (the CLV range's reference population), or None before `c360 features build`."""
    try:
        dates = feature_stores.snapshot_dates(s)
        return feature_stores.read_snapshot(s, dates[-1]) if dates else None
    except Exception as e:
        raise Unavailable("feature snapshots", "cannot be read: run `c360 features build`", e) from e


def feature_store(s: Settings) -> Any:
    try:
        return feature_stores.feature_store(s)
    except Exception as e:
        raise Unavailable("feature registry", "cannot be opened: run `c360 features apply`", e) from e


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class OnlineRow:
    customer_id: str
    features: dict[str, Any]
    as_of: pd.Timestamp
    predictions: dict[str, Any] | None
    predictions_as_of: pd.Timestamp | None


def read_online(ctx: Context, customer_ids: list[str]) -> list[OnlineRow | None]:
    """Features and batch predictions of each customer in one online read; None for a customer without features."""
    stamps = ctx.stamps()
    try:
        data = ctx.online().read(customer_ids)
    except Exception as e:  # any failure of the store (file, registry, Redis) is a 503
        raise Unavailable("online store", "cannot be read: see the server log", e) from e
    out: list[OnlineRow | None] = []
    if not stamps or not all(data[f"{stamps[0]}__ts"]):
        store_missing(ctx)  # a store file that is gone reads as "no rows": say so rather than 404
    for i, customer in enumerate(customer_ids):
        seconds = {data[f"{name}__ts"][i] for name in stamps}
        if len(seconds) > 1:
            raise Unavailable("online store", "it holds two feature snapshots of a customer (a materialize was "
                                              "interrupted or is running): run `c360 features materialize`")
        if not any(seconds):
            out.append(None)
            continue
        features = {n: data[n][i] for n in BY_NAME if n in data}
        predicted = data.get("scored_at__ts", [0] * len(customer_ids))[i]
        predictions = {n: data[n][i] for n in FIELDS if n in data} if predicted else None
        out.append(OnlineRow(customer, features, _day(seconds.pop()), predictions,
                             _day(predicted) if predicted else None))
    return out


def store_missing(ctx: Context) -> None:
    """Unavailable when a file-based online store cannot answer because its file is missing."""
    path = getattr(ctx.store.config.online_store, "path", None)
    if path and ctx.settings.online_store != "redis" and not Path(path).exists():
        log.warning("online store %s does not exist", path)
        raise Unavailable("online store", "it holds no features yet: run `c360 features materialize` and "
                                          "`c360 score`")


@lru_cache(maxsize=4096)  # a store holds a few dates; pandas' constructor and strftime cost more than the read
def _day(seconds: int) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s")


def one(ctx: Context, customer_id: str) -> OnlineRow:
    row = read_online(ctx, [customer_id])[0]
    if row is None:
        raise NotFound(f"unknown customer {echo(customer_id)!r}: no features in the online store")
    return row


# ---------------------------------------------------------------- predictions, batch or live


def fresh(kind: str, row: OnlineRow, version: int) -> bool:
    p = row.predictions
    return (p is not None and row.predictions_as_of == row.as_of and p.get(f"{kind}_version") == version
            and p.get(f"{kind}_reasons") is not None)


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
        values, source, when = {k: row.predictions.get(k) for k in MODEL_FIELDS[kind]}, "batch", \
            row.predictions.get("scored_at")
    else:
        values = _first(live_wide(ctx, kind, pd.DataFrame([row.features])))
        source, when = "live", scored_at
    return present(champion, values, {"name": champion.name, "version": champion.version, "source": source,
                                  "scored_at": when, "features_as_of": _iso(row.as_of)})


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


# ---------------------------------------------------------------- the other forward-looking items


@contextmanager
def warehouse(s: Settings) -> Iterator[Any]:
    """A read-only warehouse connection, opened per use (a connection held open would lock out writers)."""
    from c360.core import warehouse as wh
    from c360.core.locks import WarehouseBusy

    if not s.warehouse.exists():
        log.warning("warehouse %s not found", s.warehouse)
        raise Unavailable("warehouse", "not found: run `c360 ingest` and `c360 resolve`")
    try:
        connection = wh.connect(s, read_only=True)
        con = connection.__enter__()
    except WarehouseBusy as e:
        raise Unavailable("warehouse", "in use by a writer (`c360 ingest` or `resolve`): retry when it ends", e) from e
    except Exception as e:  # unreadable: a 503
        raise Unavailable("warehouse", "cannot be opened: see the server log", e) from e
    try:
        yield con
    finally:
        connection.__exit__(None, None, None)


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
        "churn": churn, "clv": clv, "next_best_action": nba,
        "next_feature": {"feature": name, "score": predict.scalar(values.get("next_feature_score")) if name else None,
                         "method": values.get("next_feature_method"), **source},
        "content_interest": {"topics": predict.parse_json(values.get("content_topics")), **source},
        "retargeting": signals.retargeting(row.features),
        "advocate": signals.advocate(row.features, churn["band"]),
        "trainings": signals.trainings(row.features, name, uplifts.get("training_invite")),
    }


# ---------------------------------------------------------------- the whole profile


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=4096)
def _iso(day: pd.Timestamp | None) -> str | None:
    return None if day is None else f"{day:%Y-%m-%d}"


def profile(ctx: Context, customer_id: str, details: bool = False) -> dict[str, Any]:
    """The profile of one customer: past, present, future and freshness (+ identity and lists with `details`)."""
    from c360.features.profile import assemble

    row = one(ctx, customer_id)
    scored_at = now()
    sections = assemble({}, row.features)
    out: dict[str, Any] = {"customer_id": customer_id, "past": _json_value(sections["past"]),
                           "present": _json_value(sections["present"]), "future": future(ctx, row, scored_at)}
    if details:
        out |= profile_details(ctx.settings, customer_id, row.as_of)
    out["freshness"] = {"features_as_of": _iso(row.as_of), "predictions_as_of": _iso(row.predictions_as_of),
                        "served_at": scored_at}
    return out


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
    who = {k: _json_value(identity.get(k)) for k in ("customer_id", "display_name", "company", "segment", "region",
                                                     "emails", "phones", "sources", "records", "unlinked")}
    who["evidence"] = f"c360 resolve explain SOURCE KEY (records: {who.get('records')})"
    return {"identity": who, "details": {name: _records(frame) for name, frame in lists.items()}}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _json_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, pd.Timestamp | datetime):
        return None if pd.isna(value) else value.isoformat()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return predict.scalar(value)


# ---------------------------------------------------------------- predictions for many


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


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
