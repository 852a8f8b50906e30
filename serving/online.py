"""What the service reads a customer from: its `Context` (settings, Feast, the champions), the customer's row of
the online store — every feature and the batch predictions in one read, refused (503) when the store cannot answer
or holds two snapshots of the customer — and the warehouse, opened read-only per use (503 when it cannot be); a
served process keeps one connection open meanwhile (`keep_open`), so that opening is cheap.

The opt-outs recorded by `c360 privacy opt-out` are applied to the row's features as it is read, from the set the
context keeps in memory (`c360.core.consent.OptOuts`: no warehouse query per request)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from c360.core import consent, locks
from c360.core.at_rest import file_stamp
from c360.core.definitions import BY_NAME
from c360.core.settings import Settings
from c360.feature_repo.predictions import FIELDS, PREDICTIONS
from c360.features import store as feature_stores
from c360.features.store import OnlineReader
from c360.serving.champions import Champions
from c360.serving.errors import NotFound, Unavailable, echo

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What profile assembly and prediction read from: settings, Feast, the champions."""

    settings: Settings
    store: Any  # feast.FeatureStore
    champions: Champions
    reader: OnlineReader | None = None
    _population: dict[pd.Timestamp, tuple[pd.DataFrame, pd.Series, pd.Series]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _opt_outs: consent.OptOuts | None = None

    def opt_outs(self, customer_id: str) -> dict[str, pd.Timestamp]:
        """The customer's opt-outs recorded by c360 (purpose → when), kept in memory."""
        if self._opt_outs is None:
            self._opt_outs = consent.OptOuts(self.settings)
        return self._opt_outs.of(customer_id)

    def online(self) -> OnlineReader:
        """Every customer feature and every predictions field, in one online read for a profile; `reader = None`
        re-reads the registry's views."""
        if self.reader is None:
            try:
                self.reader = OnlineReader.of(self.store, lambda v, name: name in BY_NAME or v.name == PREDICTIONS)
            except Exception as e:  # the registry's file is gone or unreadable
                raise Unavailable("feature registry", "cannot be read: run `c360 features apply`", e) from e
        return self.reader

    def reload(self) -> dict[str, tuple[int | None, int]]:
        """The champions whose `@champion` moved loaded again, and the registry's views read again (`c360 score` may
        have registered `predictions` since): `Champions.refresh`'s answer."""
        self.reader = None
        return self.champions.refresh()

    def stamps(self) -> list[str]:
        """One feature of each snapshot view: their event times say which snapshot a customer's row is from."""
        return [names[0] for view, names in self.online().views if view.name != PREDICTIONS]


def load_context(s: Settings) -> Context:
    """The context of `s`'s home, its registry's views read and its champions loaded (Unavailable: which part
    cannot be)."""
    champions = Champions(s.home, latest_snapshot(s))
    ctx = Context(s, feature_store(s), champions)
    ctx.online()
    champions.refresh()
    return ctx


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
    opted_out_at: pd.Timestamp | None = None  # the latest opt-out recorded by c360, applied to `features`


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
        recorded = ctx.opt_outs(customer)
        features = consent.with_overrides({n: data[n][i] for n in BY_NAME if n in data}, recorded)
        predicted = data.get("scored_at__ts", [0] * len(customer_ids))[i]
        predictions = {n: data[n][i] for n in FIELDS if n in data} if predicted else None
        out.append(OnlineRow(customer, features, _day(seconds.pop()), predictions,
                             _day(predicted) if predicted else None, max(recorded.values(), default=None)))
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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=4096)
def iso_day(day: pd.Timestamp | None) -> str | None:
    return None if day is None else f"{day:%Y-%m-%d}"


KEEP_POLL = 0.25  # seconds between two looks at the warehouse file: at most a writer's extra wait for `keep_open`
KEEP_IDLE = 5.0  # seconds without a use of `warehouse` after which `keep_open` lets the connection go
_last_use = 0.0  # when this process last opened the warehouse (monotonic)


def keep_open(s: Settings, stop: threading.Event, poll: float = KEEP_POLL,
              opened: Callable[[Any], None] = lambda stamp: None) -> None:
    """Until `stop` is set: `opened(the file's stamp)` at each look, and a read-only connection to the warehouse
    held open in this process (`_Kept`) while it is in use, i.e. opened in the last `KEEP_IDLE` seconds. An idle
    server holds nothing, so that another program may open the file (DuckDB's own command line opens it for
    writing). A warehouse that cannot be opened yet is tried again at the next look."""
    kept = _Kept()
    try:
        while not stop.is_set():
            try:
                stamp = file_stamp(s.warehouse.stat())
            except FileNotFoundError:
                stamp = None
            if stamp is None or locks.busy(s):
                kept.release()
            else:
                try:
                    opened(stamp)
                    if time.monotonic() - _last_use > KEEP_IDLE:
                        kept.release()
                    else:
                        kept.hold(s, stamp)
                except Unavailable:  # a writer came first: the next look
                    kept.release()
            stop.wait(poll)
    finally:
        kept.release()


class _Kept:
    """A read-only connection to the warehouse, held open. DuckDB shares one database among a process's
    connections to a file, so while this one is open `warehouse(s)` opens in under a millisecond, its blocks
    cached, against 18–40 ms to open and close the file (a live round, a profile's live events). Let go while a
    writer holds the warehouse lock (the writer waits for readers to close: at most one look of `keep_open`), and
    when the file changed, so that no connection reads an old file."""

    def __init__(self) -> None:
        self.stamp: Any = None
        self._open: Any = None  # the context manager of the connection

    def hold(self, s: Settings, stamp: Any) -> None:
        if self._open is not None and self.stamp == stamp:
            return
        self.release()
        opened = warehouse(s)
        opened.__enter__()
        self._open, self.stamp = opened, stamp

    def release(self) -> None:
        if self._open is not None:
            opened, self._open, self.stamp = self._open, None, None
            opened.__exit__(None, None, None)


@contextmanager
def warehouse(s: Settings) -> Iterator[Any]:
    """A read-only warehouse connection, opened per use (a connection held open would lock out writers; `keep_open`
    holds one only while no writer waits)."""
    from c360.core import warehouse as wh
    from c360.core.at_rest import EncryptionError
    from c360.core.locks import WarehouseBusy

    global _last_use
    _last_use = time.monotonic()
    if not s.warehouse.exists():
        log.warning("warehouse %s not found", s.warehouse)
        raise Unavailable("warehouse", "not found: run `c360 ingest` and `c360 resolve`")
    try:
        connection = wh.connect(s, read_only=True)
        con = connection.__enter__()
    except WarehouseBusy as e:
        raise Unavailable("warehouse", "in use by a writer (`c360 ingest` or `resolve`): retry when it ends", e) from e
    except EncryptionError as e:  # the server's setting to fix; its log says how (the answer names no file)
        raise Unavailable("warehouse", "does not open with the server's C360_ENCRYPTION_KEY: see the server log",
                          e) from e
    except Exception as e:  # unreadable: a 503
        raise Unavailable("warehouse", "cannot be opened: see the server log", e) from e
    try:
        yield con
    finally:
        connection.__exit__(None, None, None)
