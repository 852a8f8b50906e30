"""The live update (issue 21): from events just accepted to updated profiles, in the request that accepted them.

`update(ctx, events)` — `POST /events` and `c360 events push` call it with the events `event_log.receive` logged:

1. each event's customer (`features.live_identity.place`); a company-wide event (None) updates no one;
2. the clock: each customer's as-of is just after its newest event in the round (`max(at) + 1 µs`; features use
   what happened strictly before it), so a customer is never dated by another's event: a round's clock set by one
   customer's future event would make the next events of everyone else in the round look late;
3. the customers' features (`features.live.recompute_each`: the batch's definitions over the warehouse and the
   events not folded yet, every customer at its as-of in one run), added to the offline store at those as-ofs
   (`live.write_history`) whatever follows;
4. the customers whose online row is not newer than their as-of (a late event changes history, not the online
   value) are re-scored in one bulk call of each champion (`batch.score_chunk`, with the recorded opt-outs applied
   as `c360 score` applies them, so the next best action withholds what consent forbids); their next feature and
   content topics are carried over from their previous predictions row;
5. every feature view and `predictions` of those customers are written in one online transaction
   (`features.store.write_online`) at their as-ofs: a reader sees a customer's old row or the new one, never a mix.

It answers `{"updated": N, "customers": [...]}`; the caller turns a failure into `{"updated": 0, "error": ...}`:
the events are durable already, and `c360 ingest` folds them whatever happened here.

`live_update` runs the updates of one process one at a time and shares them (group commit, `core.rounds`): the
requests that arrive while an update runs go together into the next one, and each answers once its own events are in
the profile. Concurrent requests then cost about one update, not one each in a queue: the update's fixed costs
(opening the warehouse, the feature SQL, each champion's call, the online transaction) are paid per round. A round
lingers up to `LINGER` seconds for as many requests as the last one had (their clients, answered together, send
again a few milliseconds apart). The service's workers hand their events to one process for this
(`serving.service.LiveUpdater`), so that a round takes the requests of all of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from c360.core import consent
from c360.core.rounds import Rounds
from c360.core.settings import Settings
from c360.feature_repo.predictions import PREDICTIONS
from c360.features import live, live_identity
from c360.features import store as feature_stores
from c360.features.ingest import TEXT, to_datetime
from c360.features.store import OnlineReader
from c360.serving import batch
from c360.serving.errors import Unavailable
from c360.serving.online import KEEP_POLL, Context, keep_open, warehouse
from c360.serving.profile import SIGNAL_FIELDS

log = logging.getLogger(__name__)
TICK = pd.Timedelta(microseconds=1)


def shares(result: dict[str, Any], batches: list[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each caller's part of a round's result, its events being the next `len(mine)` of the round's."""
    out, first = [], 0
    for mine in batches:
        out.append(share(result, first, len(mine)))
        first += len(mine)
    return out


def share(result: dict[str, Any], first: int, count: int) -> dict[str, Any]:
    """A caller's part of a round's result: its events are `count` from `first` of the round's."""
    if "error" in result:
        return {"updated": 0, "error": result["error"]}
    updated = set(result["customers"])
    mine = sorted({c for c in result["placed"][first:first + count] if c in updated})
    return {"updated": len(mine), "customers": mine}


LINGER = 0.2  # seconds: a small part of a loaded round (≈ 1.3 s for 8 requests of 64 events)
_rounds: Rounds[dict[str, Any], dict[str, Any]] = Rounds(LINGER)


def keep_warm(s: Settings, stop: threading.Event, poll: float = KEEP_POLL) -> None:
    """`online.keep_open`, and meanwhile `features.live.warm` at once and again whenever the warehouse file changes
    (a fold, a resolve), so that rounds do not pay for rebuilding what they read. A fault of the warm-up goes to the
    log once per file."""
    warmed = None

    def warm(stamp: Any) -> None:
        nonlocal warmed
        if stamp == warmed:
            return
        try:
            with warehouse(s) as con:
                live.warm(s, con)
        except Unavailable:  # a writer came first: the next look
            raise
        except Exception:
            log.exception("live warm-up failed: rounds build what they read themselves")
        warmed = stamp

    keep_open(s, stop, poll, warm)


def live_update(s: Settings, context: Callable[[], Context], events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The live update of `events`, in this process's next round: `{"updated": N, "customers": [...]}` for these
    events' customers, or `{"updated": 0, "error": "<component> unavailable: ..."}`."""
    if not events:
        return {"updated": 0, "customers": []}
    def work(batches: list[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
        return shares(guarded(s, context, [e for mine in batches for e in mine]), batches)

    return _rounds.apply(events, work)


def guarded(s: Settings, context: Callable[[], Context], events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`update`, or `{"updated": 0, "error": "<component> unavailable: ..."}` when it cannot be done: never an
    error to the sender of events that are durable already."""
    try:
        return update(s, context, events)
    except Unavailable as e:
        return {"updated": 0, "error": str(e)}
    except Exception:  # a fault of c360 itself: its traceback to the log, not to the sender
        log.exception("live update failed")
        return {"updated": 0, "error": "live update unavailable: see the server log"}


def update(s: Settings, context: Callable[[], Context], events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Recompute, store and re-score the customers of `events` (see the module docstring); `context()` gives the
    feature store and the champions, asked for only when a customer is to be updated."""
    with warehouse(s) as con:
        customers = live_identity.place(s, con, events)
        live.remember(events, customers)
        placed = [(e, c) for e, c in zip(events, customers, strict=True) if c]
        if not placed:
            return {"updated": 0, "customers": [], "placed": customers}
        features = live.recompute_each(s, con, clock(placed))
        opt_outs = consent.overrides(con, features["customer_id"])
    live.write_history(s, features)
    ctx = context()
    online_as_of, carried = previous(ctx, features["customer_id"].tolist())
    current = (online_as_of.isna() | (online_as_of <= features["as_of"].to_numpy())).to_numpy()
    if current.any():
        write(ctx, features[current].reset_index(drop=True), carried[current].reset_index(drop=True), opt_outs)
    return {"updated": int(current.sum()), "customers": features.loc[current, "customer_id"].tolist(),
            "placed": customers}


def previous(ctx: Context, customer_ids: list[str]) -> tuple[pd.Series, pd.DataFrame]:
    """Each customer's online row: its features' as-of (NaT: none), and the fields of its predictions row the update
    carries over; one online read of those few features (not the profile's every feature)."""
    stamp = ctx.stamps()[0]
    reader = ctx.online()
    wanted = [(view, [n for n in names if n == stamp or (view.name == PREDICTIONS and n in SIGNAL_FIELDS)])
              for view, names in reader.views]
    try:
        data = OnlineReader(reader.store, [(v, names) for v, names in wanted if names], reader.direct).read(
            customer_ids)
    except Exception as e:  # any failure of the store (file, registry, Redis), as `online.read_online`
        raise Unavailable("online store", "cannot be read: see the server log", e) from e
    seconds = pd.Series(data[f"{stamp}__ts"], dtype="float64")  # 0: no row
    as_of = pd.to_datetime(seconds.where(seconds > 0), unit="s")
    return as_of, pd.DataFrame({n: data.get(n, [None] * len(customer_ids)) for n in SIGNAL_FIELDS},
                               columns=SIGNAL_FIELDS)


def clock(placed: Sequence[tuple[dict[str, Any], str]]) -> dict[str, pd.Timestamp]:
    """Each customer's as-of: just after the newest of its events (their `at` read as the fold reads it)."""
    at = to_datetime(pd.Series([e["at"] for e, _ in placed], dtype=TEXT))
    newest = at.groupby([c for _, c in placed]).max() + TICK
    return {str(c): pd.Timestamp(t) for c, t in newest.items()}


def write(ctx: Context, features: pd.DataFrame, carried: pd.DataFrame, opt_outs: consent.Overrides) -> None:
    """Score `features` in bulk and write every view of these customers in one online transaction, each row at its
    features' as-of; `carried` holds their predictions' fields the update does not compute."""
    scored_at = pd.Timestamp.now(tz="UTC").tz_convert(None)
    scores = batch.score_chunk(ctx.champions.loaded(), consent.apply_overrides(features, opt_outs))
    table = pa.Table.from_pandas(features, preserve_index=False)
    views = [view for view, _ in ctx.online().views]  # the registry's views, parsed once by the context
    rows = [(view, table.select(["customer_id", "as_of", *(f.name for f in view.features)]))
            for view in feature_stores.snapshot_views(views)]
    rows += [(view, batch.wide_table(features["customer_id"], scores, carried, features["as_of"], scored_at, "live"))
             for view in views if view.name == PREDICTIONS]
    feature_stores.write_online(ctx.store, rows)
