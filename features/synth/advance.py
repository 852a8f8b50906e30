"""The weeks after a generated world's end, drawn for one chunk of its accounts: one step of `c360 advance`.

The world already holds every account's latent path to HORIZON (`world.simulate`: the ground truth's future), so
a step [first, end) needs no new simulation of health, hazard, plans or invoices; it takes the actions of the
step at `first` (`world.act`: each bumps its account's health, the churn week follows from the same churn draw),
then draws what the silos show of the window with a copy of the chunk's export `Builder`, set to the window, its
own random stream and its own keys (`StepIds`). What the export left unfinished finishes here: a ticket still open
closes at the time drawn for it, a subscription whose plan, seats or end changed gets its new row, a marketing
contact still granting a purpose may withdraw it. Those are rows the export already has, sent again as they are
now (an update, by key).

A step may carry a shift (`Shift`, `c360 advance --shift usage-drop:REGION`): something that changes the world from
the step on, as a market does. `usage-drop` is an outage or a rival's launch in one region: the product use of its
accounts falls by `USAGE_DROP` (each of their product events of the step is dropped with that chance) while their
latent health, and so their churn, stays as it was: what moves is what the models read. Its draws come from a
stream of their own (`SHIFT_STREAM`), so a step without a shift, and every other table of a shifted step, are what
they would have been.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from c360.core import contract
from c360.core.contract import PURPOSES
from c360.features.synth import consent as consent_log
from c360.features.synth.silos import ANSWERED, Builder, Ids, Silos, campaigns, exported_by_end, week_start
from c360.features.synth.world import ACTIONS, World, act, action_effects, action_lift

STREAM = 0xADA7CE  # the advance's own word in the seed sequence: [seed, chunk, STREAM, first week]
SOLVED = ("solved", "closed")
SHIFT_STREAM = 0x5A1F7  # the shift's word after the step's: [seed, chunk, STREAM, first week, SHIFT_STREAM]
USAGE_DROP = 0.9
SHIFTS = {"usage-drop": f"product use of one region's accounts falls by {USAGE_DROP:.0%} (an outage, a rival's "
                        "launch); their churn does not change"}


@dataclass(frozen=True)
class Shift:
    kind: str  # one of SHIFTS
    region: str

    @classmethod
    def parse(cls, text: str) -> Shift:
        """`KIND:REGION`, e.g. `usage-drop:EMEA` (ValueError naming what is known)."""
        kind, _, region = text.partition(":")
        if kind not in SHIFTS or region not in contract.REGIONS:
            raise ValueError(f"unknown shift {text!r}: give KIND:REGION, KIND one of {', '.join(SHIFTS)}, REGION "
                             f"one of {', '.join(contract.REGIONS)}")
        return cls(kind, region)

    def __str__(self) -> str:
        return f"{self.kind}:{self.region}"

    def apply(self, rng: np.random.Generator, b: Builder, tables: dict[str, pd.DataFrame]) -> None:
        """Thin the product events of the region's accounts (the step's users are the export's)."""
        user_id, users, _ = b.users
        region = b.acc["region"].to_numpy()[users["account_row"].to_numpy()]
        shifted = set(user_id[region == self.region])
        events = tables["product/events"]
        dropped = events["user_id"].isin(shifted).to_numpy() & (rng.random(len(events)) < USAGE_DROP)
        tables["product/events"] = events[~dropped].reset_index(drop=True)


class StepIds(Ids):
    """The keys of one step: prefix, the step's first week, then a counter of nine digits. The export's keys have
    nine digits after the prefix, so no key of a step meets one of the export or of another step."""

    def __init__(self, first: int) -> None:
        super().__init__()
        self.first = first

    def take(self, prefix: str, n: int, scramble: bool = True) -> np.ndarray:
        start = self.counters.get(prefix, 0)
        self.counters[prefix] = start + n
        return np.asarray([f"{prefix}{self.first}{i:09d}" for i in range(start, start + n)], dtype=str)


@dataclass(frozen=True)
class Step:
    first: int  # the first week of the step (OBSERVED for the first advance)
    weeks: int
    actions: pd.DataFrame  # account, action
    shift: Shift | None = None

    @property
    def end(self) -> int:
        return self.first + self.weeks

    def campaigns(self) -> pd.DataFrame:
        """The step's campaigns: its newsletters and one campaign per action it takes."""
        used = [a for a in ACTIONS if a in set(self.actions["action"])]
        return campaigns(self.first, self.end, [(self.first, a, self.first) for a in used], tag=str(self.first))


@dataclass
class Chunk:
    """One chunk's present, carried from step to step: its world with every action so far, what its silos hold."""

    builder: Builder
    world: World
    tickets: pd.DataFrame  # tickets still open, as exported, with when each will close (ticket_closes)
    subscriptions: pd.DataFrame  # each subscription's row as last exported
    granted: dict[str, np.ndarray] | None  # per purpose, whether each marketing contact grants it now
    truth: dict[str, pd.DataFrame] = field(default_factory=dict)  # the last step's

    @classmethod
    def exported(cls, builder: Builder, consent: pd.DataFrame | None) -> Chunk:
        tables = builder.out.tables
        tickets = tables["support/tickets"].merge(_pending(builder), on="ticket_id")
        granted = None if consent is None else {
            p: consent.loc[consent["purpose"] == p, "granted_at_end"].to_numpy() for p in PURPOSES}
        return cls(builder, builder.w, tickets, tables["billing/subscriptions"], granted)


def draw(chunk: Chunk, step: Step, rng: np.random.Generator, ids: StepIds,
         shift_rng: np.random.Generator | None = None) -> Silos:
    """The silo rows of `step` for `chunk` (new rows and the rows updated), and its truth in `chunk.truth`;
    `chunk` moves to the step's end. A step's shift draws from `shift_rng`."""
    acc = chunk.builder.acc["account"].to_numpy()
    mine = step.actions[step.actions["account"].isin(acc)]
    arm = pd.DataFrame({"account": mine["account"].to_numpy(), "row": np.searchsorted(acc, mine["account"]),
                        "action": mine["action"].to_numpy()})
    before = chunk.world
    w = act(rng, before, arm, step.first)
    b = copy.copy(chunk.builder)
    b.rng, b.w, b.ids, b.out, b.first, b.end = rng, w, ids, Silos(), step.first, step.end
    for silo in (b.activities, b.plan_changes, b.invoices, lambda: b.events(*b.users), b.support,
                 lambda: b.sends(step.campaigns()), b.nps, b.feature_requests):
        silo()
    out = b.export()
    if step.shift is not None:
        assert shift_rng is not None, "a shifted step needs the shift's stream"
        step.shift.apply(shift_rng, b, out.tables)
    out.tables["support/tickets"] = pd.concat([_closed(chunk, b, rng), out.tables["support/tickets"]],
                                              ignore_index=True)
    out.tables["billing/subscriptions"] = _changed_subscriptions(chunk, b)
    if chunk.granted is not None:
        out.tables["marketing/consents"], chunk.granted = consent_log.withdrawals(rng, b, ids, chunk.granted)
    chunk.truth = _truth(b, before, w, arm, step)
    chunk.world = w
    return out


def _closed(chunk: Chunk, b: Builder, rng: np.random.Generator) -> pd.DataFrame:
    """Tickets open at the step's start that close within it, as they are now; the still open ones carry on."""
    open_ = chunk.tickets
    closes = open_["closes_at"].to_numpy() < week_start(b.end)
    done = open_[closes].copy()
    n = len(done)
    done["status"] = np.asarray(SOLVED)[rng.integers(0, len(SOLVED), n)]
    done["closed_at"] = done["closes_at"]
    done["satisfaction"] = pd.array(np.where(rng.random(n) < ANSWERED, done["csat"], np.nan), dtype="Int64")
    fresh = b.out.tables["support/tickets"].merge(_pending(b), on="ticket_id")
    chunk.tickets = pd.concat([open_[~closes], fresh], ignore_index=True)
    return done[b.out.tables["support/tickets"].columns]


def _pending(b: Builder) -> pd.DataFrame:
    """The tickets still open at the end of `b`'s window: when each will close, and its answer then."""
    return b.ticket_closes.rename(columns={"closed_at": "closes_at", "satisfaction": "csat"})


def _changed_subscriptions(chunk: Chunk, b: Builder) -> pd.DataFrame:
    """The subscriptions that ended in the step, or changed plan, seats or price: their rows as they are now."""
    b.subscriptions()
    now = exported_by_end(b.out.tables.pop("billing/subscriptions"), contract.table("billing/subscriptions"),
                          b.end)
    was = chunk.subscriptions
    ended = now["ended_at"].notna().to_numpy() & was["ended_at"].isna().to_numpy()
    moved = now["ended_at"].isna().to_numpy() & (now[["plan", "seats", "mrr"]].to_numpy()
                                                 != was[["plan", "seats", "mrr"]].to_numpy()).any(axis=1)
    changed = ended | moved
    chunk.subscriptions = pd.concat([was[~changed], now[changed]]).sort_index()
    return now[changed].reset_index(drop=True)


def _truth(b: Builder, before: World, w: World, arm: pd.DataFrame, step: Step) -> dict[str, pd.DataFrame]:
    """Who churned in the step and how likely it was; the treated accounts' outcome and counterfactual (same churn
    draw, no action), and every action's expected effect from the state at the step's start."""
    window = slice(step.first, step.end)
    alive = w.alive[:, step.first]
    action = pd.Series(arm["action"].to_numpy(), index=arm["row"].to_numpy()).reindex(range(b.n))
    outcomes = pd.DataFrame({
        "account": b.acc["account"].to_numpy(), "account_id": b.account_id, "action": action.astype("string"),
        "churn_week": w.churn_week, "churned": w.churn_week < step.end,
        "p_churn": 1 - np.prod(1 - w.hazard[:, window], axis=1),
        "churned_untreated": before.churn_week < step.end,
        "p_churn_untreated": 1 - np.prod(1 - before.hazard[:, window], axis=1),
    })[alive].reset_index(drop=True)
    effects = pd.DataFrame()
    if len(arm):
        effects = action_effects(w, arm.assign(wave=step.first), action_lift(w.accounts))
        effects["assigned"] = effects.merge(arm, on=["account", "action"], how="left", indicator=True)[
            "_merge"].eq("both").to_numpy()
    return {"outcomes": outcomes, "effects": effects, "records": pd.concat(b.out.truth, ignore_index=True)}
