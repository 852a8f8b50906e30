"""Six silos drawn from one world: each table as its system would export it, plus who is who behind each row."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from c360.core import contract
from c360.core.contract import (
    ACTIONS,
    ACTIVITY_CHANNELS,
    CONTENT_TOPICS,
    PLANS,
    PRODUCT_FEATURES,
    REQUEST_TOPICS,
    TICKET_CHANNELS,
    TICKET_TOPICS,
)
from c360.features.synth import people as ppl
from c360.features.synth.world import (
    ADDON_SIZE,
    DISCOUNT,
    EFFECT_WEEKS,
    HORIZON,
    OBSERVED,
    START,
    WAVES,
    World,
    addon_rate,
    addon_scale,
    breadth,
    sigmoid,
)

SECONDS_PER_WEEK = 7 * 24 * 3600
COUNTRY = {"NA": "US", "EMEA": "GB", "APAC": "AU", "LATAM": "BR"}
CURRENCY = {"NA": "USD", "EMEA": "GBP", "APAC": "USD", "LATAM": "USD"}
OWNERS = ("Dana Whitfield", "Marco Reyes", "Priya Natarajan", "Tom Okafor", "Lena Fischer", "Sam Park")
ACTIVITY_TOPICS = ("onboarding", "quarterly review", "renewal", "check-in", "escalation")
CANCEL_REASONS = ("price", "missing_features", "switched_competitor", "no_longer_needed", "payment_failed")
FAILURE_CODES = ("card_declined", "insufficient_funds", "expired_card")
NEWSLETTER_EVERY = 13
ANSWERED = 0.4  # share of closed tickets whose requester answered the satisfaction survey
NPS_EVERY, NPS_FIRST = 26, 13  # an NPS survey every half year
ACTION_CHANNEL = {"no_action": "none", "discount": "email", "training_invite": "webinar", "csm_call": "phone"}
ACTION_TOPIC = {"no_action": "product_tips", "discount": "pricing", "training_invite": "training",
                "csm_call": "case_study"}
REQUEST_TITLES = {
    "reporting": "Custom report builder", "integrations": "Salesforce sync", "mobile": "Offline mode on mobile",
    "api": "Bulk export API", "permissions": "Per-project roles", "automation": "Scheduled workflows",
    "ui": "Dark mode",
}
COMMENTS = ("Too expensive for what we use", "Support was slow", "Does the job", "Love the dashboards",
            "Great product, great team")


@dataclass
class Silos:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    truth: list[pd.DataFrame] = field(default_factory=list)  # table_id, key, person, account

    def add(self, table_id: str, df: pd.DataFrame, person: np.ndarray | None = None,
            account: np.ndarray | None = None) -> None:
        self.tables[table_id] = df
        if person is not None or account is not None:
            key = df.iloc[:, 0].to_numpy()
            self.truth.append(pd.DataFrame({
                "table_id": table_id, "key": key,
                "person": pd.array(np.full(len(key), None) if person is None else person, dtype="Int64"),
                "account": account}))


@dataclass
class Ids:
    """Running counters so every key is unique across chunks; scrambled so keys reveal no identity.

    `taken` holds the e-mail addresses and domains handed out so far: like real ones, each has one owner.
    """

    counters: dict[str, int] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)

    def take(self, prefix: str, n: int, scramble: bool = True) -> np.ndarray:
        start = self.counters.get(prefix, 0)
        self.counters[prefix] = start + n
        idx = np.arange(start, start + n, dtype=np.int64)
        if scramble:  # a bijection on [0, 1e9), its own per prefix, so numbers do not line up across silos
            mult = zlib.crc32(prefix.encode()) | 1
            mult += 2 * (mult % 5 == 0)  # a unit mod 1e9: odd and not a multiple of 5
            idx = (idx * mult + zlib.crc32(prefix[::-1].encode())) % 1_000_000_000
        return np.char.add(prefix, np.char.zfill(idx.astype(str), 9))


def week_start(week: int) -> np.datetime64:
    return np.datetime64(START + pd.Timedelta(weeks=week), "s")


def exported_by_end(df: pd.DataFrame, table: contract.Table, end_week: int = OBSERVED) -> pd.DataFrame:
    """What the export at the start of `end_week` (END by default) knows: rows dated later (a retry, a refund)
    not yet, later timestamps not yet."""
    end = week_start(end_week)
    when = [c.name for c in table.columns if c.kind == "datetime"]
    required = [c for c in when if table.col(c).required]
    keep = np.logical_and.reduce([df[c].isna().to_numpy() | (df[c].to_numpy() < end) for c in required]) \
        if required else np.ones(len(df), bool)
    df = df[keep].copy()
    for c in when:
        if not table.col(c).required:
            df[c] = df[c].where(df[c] < end)
    return df


def at(week: np.ndarray, rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    """A timestamp somewhere within each given week (seconds precision)."""
    offset = (rng.random(len(week)) * spread * SECONDS_PER_WEEK).astype("int64")
    base = np.datetime64(START, "s") + week.astype("int64") * SECONDS_PER_WEEK
    return (base + offset.astype("timedelta64[s]")).astype("datetime64[s]")


def full_names(first: list, last: list) -> list:
    return [None if f is None else f"{f} {l_}" for f, l_ in zip(first, last, strict=True)]


class Builder:
    """Builds all silos of one chunk of accounts, over the weeks [first, end): the exported window [0, OBSERVED)
    by default; `c360.features.synth.advance` draws later windows with a copy of a built one."""

    first, end = 0, OBSERVED

    def __init__(self, rng: np.random.Generator, world: World, persons: pd.DataFrame, firms: pd.DataFrame,
                 ids: Ids):
        self.rng, self.w, self.p, self.firms, self.ids = rng, world, persons, firms, ids
        self.acc = world.accounts.reset_index(drop=True)
        self.n = len(self.acc)
        self.out = Silos()
        self.account_id = ids.take("ACC-", self.n)
        self.billing_id = ids.take("BA-", self.n)
        self.subscription_id = ids.take("SUB-", self.n)
        consumer = (self.acc["segment"] == "consumer").to_numpy()
        self.company = np.where(consumer, None, firms["company"].to_numpy())  # consumers have no company

    def build(self) -> Silos:
        for step in (self.crm, self.billing, self.product, self.support, self.marketing, self.feedback):
            step()
        return self.export()

    def export(self) -> Silos:
        self.out.tables = {t: exported_by_end(df, contract.table(t), self.end) for t, df in self.out.tables.items()}
        return self.out

    # --- helpers -------------------------------------------------------------------------------------
    def account_cells(self, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Poisson draws per account-week of the window while subscribed: (account rows, weeks), one per event."""
        window = slice(self.first, self.end)
        counts = self.rng.poisson(np.where(self.w.alive[:, window], rate[:, window], 0.0))
        rows, weeks = np.nonzero(counts)
        reps = counts[rows, weeks]
        return np.repeat(rows, reps), np.repeat(weeks + self.first, reps)

    def persons_of(self, account_rows: np.ndarray) -> np.ndarray:
        """A random person (row of self.p) of each given account."""
        first = np.searchsorted(self.p["account_row"].to_numpy(), account_rows, side="left")
        last = np.searchsorted(self.p["account_row"].to_numpy(), account_rows, side="right")
        return first + (self.rng.random(len(account_rows)) * (last - first)).astype(int)

    def person_truth(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        acc_rows = self.p["account_row"].to_numpy()[rows]
        return self.p["person"].to_numpy()[rows], self.acc["account"].to_numpy()[acc_rows]

    def start_time(self) -> np.ndarray:
        return at(self.acc["start_week"].to_numpy(), self.rng)

    # --- CRM -----------------------------------------------------------------------------------------
    def crm(self) -> None:
        acc, firms, p = self.acc, self.firms, self.p
        consumer = (acc["segment"] == "consumer").to_numpy()
        admin = p[p["rank"] == 0]
        name = np.where(consumer, (admin["first_name"] + " " + admin["last_name"]).to_numpy(), firms["company"])
        created = self.start_time()
        self.created = created
        self.out.add("crm/accounts", pd.DataFrame({
            "account_id": self.account_id, "account_name": name, "segment": acc["segment"],
            "industry": np.where(consumer, None, firms["industry"]), "region": acc["region"],
            "owner": np.asarray(OWNERS)[self.rng.integers(0, len(OWNERS), self.n)],
            "billing_account_id": np.where(self.rng.random(self.n) < 0.85, self.billing_id, None),
            "created_at": created,
        }), account=acc["account"].to_numpy())
        self.contact_rows = self.with_duplicates(0.07)
        self.contact_id = self.ids.take("CON-", len(self.contact_rows))
        self.add_person_table("crm/contacts", self.contact_rows, self.contact_id, ppl.Scribe(
            self.rng, typo_rate=0.03, nickname_rate=0.05, missing_email=0.03, alt_email=0.05, missing_phone=0.3))
        self.activities()

    def with_duplicates(self, rate: float) -> np.ndarray:
        """Rows of self.p, each once, plus a second record for `rate` of people."""
        rows = np.arange(len(self.p))
        return np.concatenate([rows, rows[self.rng.random(len(rows)) < rate]])

    def add_person_table(self, table_id: str, rows: np.ndarray, keys: np.ndarray, scribe: ppl.Scribe) -> None:
        p = self.p.iloc[rows]
        first, last = scribe.names(p["first_name"], p["last_name"])
        acc_rows = p["account_row"].to_numpy()
        created = self.created[acc_rows] + (p["rank"].to_numpy() * 86400 * 3).astype("timedelta64[s]")
        df = pd.DataFrame({"contact_id": keys, "account_id": self.account_id[acc_rows], "first_name": first,
                           "last_name": last, "email": scribe.emails(p), "phone": scribe.phones(p),
                           "role": p["role"].to_numpy(), "title": p["title"].to_numpy(), "created_at": created})
        self.out.add(table_id, df, *self.person_truth(rows))

    def activities(self) -> None:
        rate = np.where((self.acc["segment"] == "enterprise").to_numpy(), 0.03, 0.006)[:, None]
        rows, weeks = self.account_cells(np.broadcast_to(rate, self.w.alive.shape))
        calls = self.w.assignments[self.w.assignments["action"] == "csm_call"]
        call_rows = np.searchsorted(self.acc["account"].to_numpy(), calls["account"].to_numpy())
        rows = np.concatenate([rows, call_rows])
        weeks = np.concatenate([weeks, calls["wave"].to_numpy()])
        is_call = np.arange(len(rows)) >= len(rows) - len(call_rows)
        topics = np.where(is_call, "check-in call",
                          np.asarray(ACTIVITY_TOPICS)[self.rng.integers(0, len(ACTIVITY_TOPICS), len(rows))])
        channel = np.where(is_call, "phone", np.asarray(ACTIVITY_CHANNELS)[self.rng.integers(0, 3, len(rows))])
        first_contact = np.searchsorted(self.p["account_row"].to_numpy()[self.contact_rows[: len(self.p)]], rows)
        contact = np.where(self.rng.random(len(rows)) < 0.8, self.contact_id[first_contact], None)
        self.out.add("crm/activities", pd.DataFrame({
            "activity_id": self.ids.take("ACT-", len(rows), scramble=False), "account_id": self.account_id[rows],
            "contact_id": contact, "channel": channel, "topic": topics, "occurred_at": at(weeks, self.rng),
        }))

    # --- billing -------------------------------------------------------------------------------------
    def billing(self) -> None:
        self.billing_customers()
        self.subscriptions()
        self.plan_changes()
        self.invoices()

    def billing_customers(self) -> None:
        p = self.p
        size = np.bincount(p["account_row"], minlength=self.n)
        payer = np.searchsorted(p["account_row"].to_numpy(), np.arange(self.n)) + (size > 1)
        scribe = ppl.Scribe(self.rng, typo_rate=0.03, nickname_rate=0.15, alt_email=0.1, missing_phone=0.4)
        sub = p.iloc[payer]
        first, last = scribe.names(sub["first_name"], sub["last_name"])
        self.out.add("billing/customers", pd.DataFrame({
            "billing_account_id": self.billing_id, "name": full_names(first, last), "email": scribe.emails(sub),
            "phone": scribe.phones(sub), "company": self.company,
            "country": self.acc["region"].map(COUNTRY).to_numpy(), "created_at": self.created,
        }), *self.person_truth(payer))

    def subscriptions(self) -> None:
        last = np.maximum(np.minimum(self.w.churn_week, self.end) - 1, 0)
        rows = np.arange(self.n)
        plan, seats, mrr = self.w.plan[rows, last], self.w.seats[rows, last], self.w.mrr[rows, last]
        ended = self.w.churn_week < self.end
        reasons = np.asarray(CANCEL_REASONS)[self.rng.integers(0, len(CANCEL_REASONS), self.n)]
        self.out.add("billing/subscriptions", pd.DataFrame({
            "subscription_id": self.subscription_id, "billing_account_id": self.billing_id,
            "plan": np.asarray(PLANS)[plan], "seats": seats, "mrr": mrr.round(2), "started_at": self.created,
            "ended_at": np.where(ended, at(self.w.churn_week, self.rng), np.datetime64("NaT")),
            "cancel_reason": np.where(ended, reasons, None),
        }))

    def plan_changes(self) -> None:
        w = self.w
        changed = (np.diff(w.plan, axis=1) != 0) | (np.diff(w.seats, axis=1) != 0)
        changed &= w.alive[:, 1:]
        changed[:, : max(self.first - 1, 0)] = False
        changed[:, self.end - 1:] = False
        rows, t = np.nonzero(changed)
        self.out.add("billing/plan_changes", pd.DataFrame({
            "change_id": self.ids.take("PC-", len(rows), scramble=False),
            "subscription_id": self.subscription_id[rows], "changed_at": at(t + 1, self.rng),
            "from_plan": np.asarray(PLANS)[w.plan[rows, t]], "to_plan": np.asarray(PLANS)[w.plan[rows, t + 1]],
            "from_seats": w.seats[rows, t], "to_seats": w.seats[rows, t + 1],
        }))

    def discount_share(self) -> np.ndarray:
        """Share of each (account, week) invoice waived by the discount action."""
        share = np.zeros(self.w.alive.shape)
        disc = self.w.assignments[self.w.assignments["action"] == "discount"]
        rows = np.searchsorted(self.acc["account"].to_numpy(), disc["account"].to_numpy())
        for r, wave in zip(rows, disc["wave"], strict=True):
            share[r, wave + 1: wave + 1 + EFFECT_WEEKS] = DISCOUNT
        return share

    def invoices(self) -> None:
        w = self.w
        due = w.invoice_due & w.alive
        due[:, : self.first] = False
        due[:, self.end:] = False
        rows, weeks = np.nonzero(due)
        amount = (w.mrr[rows, weeks] * (1 - self.discount_share()[rows, weeks])).round(2)
        addon_rows, addon_weeks = self.account_cells(addon_rate(w.health))
        seats = w.seats[addon_rows, addon_weeks]
        addon = (self.rng.lognormal(*ADDON_SIZE, len(addon_rows)) * addon_scale(seats)).round(2)
        # the expansion orders experiment actions brought are add-on orders too
        addon_rows = np.concatenate([addon_rows, w.responses["row"].to_numpy()])
        addon_weeks = np.concatenate([addon_weeks, w.responses["week"].to_numpy()])
        addon = np.concatenate([addon, w.responses["amount"].to_numpy().round(2)])
        n_sub, n_add = len(rows), len(addon_rows)
        all_rows = np.concatenate([rows, addon_rows])
        failed = np.concatenate([w.failed[rows, weeks], np.zeros(n_add, bool)])
        retry_ok = self.rng.random(n_sub + n_add) < 0.6
        refunded = ~failed & (self.rng.random(n_sub + n_add) < 0.01)
        status = np.where(failed & ~retry_ok, "failed", np.where(refunded, "refunded", "paid"))
        issued = at(np.concatenate([weeks, addon_weeks]), self.rng, spread=1 / 7)
        invoice_id = self.ids.take("INV-", n_sub + n_add, scramble=False)
        self.out.add("billing/invoices", pd.DataFrame({
            "invoice_id": invoice_id, "billing_account_id": self.billing_id[all_rows],
            "subscription_id": np.concatenate([self.subscription_id[rows], np.full(n_add, None)]),
            "issued_at": issued, "kind": np.repeat(["subscription", "addon"], [n_sub, n_add]),
            "amount": np.concatenate([amount, addon]),
            "plan": np.concatenate([np.asarray(PLANS)[w.plan[rows, weeks]], np.full(n_add, None)]),
            "seats": pd.array(np.concatenate([w.seats[rows, weeks], np.full(n_add, np.nan)]), dtype="Int64"),
            "currency": self.acc["region"].map(CURRENCY).to_numpy()[all_rows], "status": status,
        }))
        self.payments(invoice_id, issued, np.concatenate([amount, addon]), failed, retry_ok, refunded)

    def payments(self, invoice_id, issued, amount, failed, retry_ok, refunded) -> None:
        day = np.timedelta64(86400, "s")
        first = pd.DataFrame({"invoice_id": invoice_id, "attempted_at": issued, "amount": amount,
                              "status": np.where(failed, "failed", "succeeded")})
        retry = first[failed].assign(attempted_at=issued[failed] + 3 * day,
                                     status=np.where(retry_ok[failed], "succeeded", "failed"))
        refund = first[refunded].assign(attempted_at=issued[refunded] + 10 * day, status="refunded")
        pay = pd.concat([first, retry, refund], ignore_index=True)
        n = len(pay)
        codes = np.asarray(FAILURE_CODES)[self.rng.integers(0, len(FAILURE_CODES), n)]
        method = np.asarray(("card", "card", "card", "bank_transfer", "paypal"))[self.rng.integers(0, 5, n)]
        pay.insert(0, "payment_id", self.ids.take("PAY-", n, scramble=False))
        pay["method"] = method
        pay["failure_code"] = np.where(pay["status"] == "failed", codes, None)
        self.out.add("billing/payments", pay)

    # --- product -------------------------------------------------------------------------------------
    def product(self) -> None:
        p = self.p
        uses = (p["role"] != "billing") | (self.rng.random(len(p)) < 0.3)
        rows = np.flatnonzero(uses.to_numpy())
        second = rows[self.rng.random(len(rows)) < 0.08]
        user_rows = np.concatenate([rows, second])
        is_second = np.arange(len(user_rows)) >= len(rows)
        user_id = self.ids.take("u_", len(user_rows))
        workspace = self.ids.take("ws", self.n)
        scribe = ppl.Scribe(self.rng, typo_rate=0.02, nickname_rate=0.2, alt_email=0.1)
        sub = p.iloc[user_rows]
        email = scribe.emails(sub)
        email[is_second] = sub["personal_email"].to_numpy()[is_second]
        first, last = scribe.names(sub["first_name"], sub["last_name"])
        acc_rows = sub["account_row"].to_numpy()
        company = self.company[acc_rows]
        self.users = user_id, sub, is_second
        self.out.add("product/users", pd.DataFrame({
            "user_id": user_id, "workspace_id": workspace[acc_rows],
            "workspace_name": np.where(self.rng.random(len(sub)) < 0.7, company, None),
            "email": email, "display_name": np.where(self.rng.random(len(sub)) < 0.8, full_names(first, last),
                                                     first),
            "signed_up_at": self.created[acc_rows] + (sub["rank"].to_numpy() * 2 * 86400).astype("timedelta64[s]"),
        }), *self.person_truth(user_rows))
        self.events(user_id, sub, is_second)

    def events(self, user_id: np.ndarray, users: pd.DataFrame, is_second: np.ndarray) -> None:
        acc_rows = users["account_row"].to_numpy()
        window = slice(self.first, self.end)
        h = self.w.health[acc_rows, window]
        admin = (users["role"] == "admin").to_numpy()[:, None]
        # A struggling user still logs in now and then: at an intercept of -2.4 an account in health's low tail,
        # where churn happens, logged in about twice a quarter and looked like every other near-idle one.
        q = sigmoid(-1.2 + 1.6 * h + 0.3 * admin) * np.where(is_second, 0.3, 1.0)[:, None]
        days = self.rng.binomial(3, np.where(self.w.alive[acc_rows, window], q, 0.0))
        u, week = np.nonzero(days)
        reps = days[u, week]
        week = week + self.first
        u, week = np.repeat(u, reps), np.repeat(week, reps)
        when = at(week, self.rng)
        n = len(u)
        extra = self.rng.random(n)
        # one login in three is followed by a feature event: logins are what tell health, feature events breadth
        kind = np.where(extra < 0.05, "export", np.where(extra > 0.98, "invite", np.where(
            self.rng.random(n) < 0.38, "feature_used", "")))
        feature = np.asarray(PRODUCT_FEATURES)[(self.rng.random(n) * breadth(self.acc)[acc_rows[u]]).astype(int)]
        more = kind != ""  # a login, sometimes followed by one more event a minute later
        rows_all = np.concatenate([u, u[more]])
        times = np.concatenate([when, when[more] + np.timedelta64(60, "s")])
        types = np.concatenate([np.full(n, "login"), kind[more]])
        feats = np.concatenate([np.full(n, None), np.where(kind == "feature_used", feature, None)[more]])
        self.out.add("product/events", pd.DataFrame({
            "event_id": self.ids.take("", len(rows_all), scramble=False).astype(np.int64),
            "user_id": user_id[rows_all], "event_time": times, "event_type": types, "feature": feats,
        }))

    # --- support -------------------------------------------------------------------------------------
    def support(self) -> None:
        w, acc = self.w, self.acc
        seats = w.seats.astype(float)
        rate = 0.02 * acc["support_load"].to_numpy()[:, None] * np.exp(-0.6 * w.health) * (1 + 0.3 * np.log(seats))
        rows, weeks = self.account_cells(rate)
        who = self.persons_of(rows)
        scribe = ppl.Scribe(self.rng, typo_rate=0.08, nickname_rate=0.15, missing_email=0.1, alt_email=0.2,
                            missing_phone=0.7, missing_name=0.1)
        sub = self.p.iloc[who]
        first, last = scribe.names(sub["first_name"], sub["last_name"])
        h = w.health[rows, weeks]
        n = len(rows)
        severity = np.clip((1.2 - 0.6 * h + self.rng.normal(0, 0.8, n)).round(), 0, 3).astype(int)
        opened = at(weeks, self.rng)
        closed = opened + (self.rng.lognormal(3.0, 1.2, n) * 3600).astype("timedelta64[s]")
        still_open = closed >= week_start(self.end)
        csat = np.clip((3.5 + 0.8 * h + self.rng.normal(0, 0.8, n)).round(), 1, 5)
        company = np.where(self.rng.random(n) < 0.5, self.company[rows], None)
        ticket_id = self.ids.take("T-", n, scramble=False)
        # when the tickets still open will close, and their answer then: what a later window shows of them
        self.ticket_closes = pd.DataFrame({"ticket_id": ticket_id, "closed_at": closed, "row": rows,
                                           "satisfaction": csat})[still_open]
        self.out.add("support/tickets", pd.DataFrame({
            "ticket_id": ticket_id, "requester_name": full_names(first, last),
            "requester_email": scribe.emails(sub), "requester_phone": scribe.phones(sub), "company": company,
            "channel": np.asarray(TICKET_CHANNELS)[self.rng.choice(5, n, p=(0.45, 0.15, 0.25, 0.1, 0.05))],
            "topic": self.ticket_topics(rows, weeks, h),
            "severity": np.asarray(("low", "normal", "high", "urgent"))[severity],
            "status": np.where(still_open, np.where(self.rng.random(n) < 0.5, "open", "pending"),
                               np.where(self.rng.random(n) < 0.5, "solved", "closed")),
            "opened_at": opened, "closed_at": np.where(still_open, np.datetime64("NaT"), closed),
            "satisfaction": pd.array(np.where(~still_open & (self.rng.random(n) < ANSWERED), csat, np.nan),
                                     dtype="Int64"),
        }), *self.person_truth(who))

    def ticket_topics(self, rows: np.ndarray, weeks: np.ndarray, h: np.ndarray) -> np.ndarray:
        failed_lately = self.w.failed[rows, np.maximum(weeks - 1, 0)] | self.w.failed[rows, weeks]
        topic = np.asarray(TICKET_TOPICS)[self.rng.integers(0, len(TICKET_TOPICS), len(rows))]
        topic = np.where(failed_lately, "billing", topic)
        return np.where((h < -1) & (self.rng.random(len(rows)) < 0.5), "performance", topic)

    # --- marketing -----------------------------------------------------------------------------------
    def marketing(self) -> None:
        n_people = len(self.p)
        listed = np.flatnonzero((self.rng.random(n_people) < 0.9) | (self.p["rank"].to_numpy() == 0))
        rows = np.concatenate([listed, listed[self.rng.random(len(listed)) < 0.08]])
        self.n_listed = len(listed)
        self.mkt_id = self.ids.take("MC", len(rows))
        scribe = ppl.Scribe(self.rng, typo_rate=0.04, nickname_rate=0.1, alt_email=0.15, missing_name=0.3)
        sub = self.p.iloc[rows]
        first, last = scribe.names(sub["first_name"], sub["last_name"])
        acc_rows = sub["account_row"].to_numpy()
        self.out.add("marketing/contacts", pd.DataFrame({
            "mkt_contact_id": self.mkt_id, "email": scribe.emails(sub), "first_name": first, "last_name": last,
            "company": np.where(self.rng.random(len(rows)) < 0.6, self.company[acc_rows], None),
            "subscribed_at": self.created[acc_rows],
        }), *self.person_truth(rows))
        self.mkt_rows = rows
        self.interest = self.rng.dirichlet(np.ones(len(CONTENT_TOPICS)) * 0.7, self.n)
        self.sends()

    def sends(self, c: pd.DataFrame | None = None) -> None:
        """Sends of the campaigns `c` (the company's, by default)."""
        c = campaigns() if c is None else c
        news = c[c["action"].isna()]
        parts = [self.newsletter_sends(r.campaign_id, r.week, r.topic) for r in news.itertuples()]
        exp = c[c["action"].notna()]
        arms = zip(exp["week"], exp["action"], strict=True)
        parts.append(self.experiment_sends(dict(zip(arms, exp["campaign_id"], strict=True))))
        sends = pd.concat(parts, ignore_index=True)
        sends.insert(0, "send_id", self.ids.take("S-", len(sends), scramble=False))
        self.out.add("marketing/sends", sends)

    def newsletter_sends(self, campaign_id: str, week: int, topic: str) -> pd.DataFrame:
        acc_rows = self.p["account_row"].to_numpy()[self.mkt_rows]
        alive = self.w.alive[acc_rows, week]
        rows = np.flatnonzero(alive)
        interest = self.interest[acc_rows[rows], CONTENT_TOPICS.index(topic)]
        return self.responses(campaign_id, rows, np.full(len(rows), week), -1.0 + 4.0 * interest, 0.05)

    def experiment_sends(self, campaign_of: dict) -> pd.DataFrame:
        a = self.w.assignments
        acc_rows = np.searchsorted(self.acc["account"].to_numpy(), a["account"].to_numpy())
        admin_row = np.searchsorted(self.p["account_row"].to_numpy(), acc_rows)
        mkt = np.searchsorted(self.mkt_rows[: self.n_listed], admin_row)
        cids = np.asarray([campaign_of[(w, x)] for w, x in zip(a["wave"], a["action"], strict=True)])
        out = self.responses(cids, mkt, a["wave"].to_numpy(), 0.5 * np.ones(len(a)), 0.3)
        holdout = (a["action"] == "no_action").to_numpy()
        out.loc[holdout, ["opened_at", "clicked_at", "responded_at"]] = pd.NaT
        out.loc[holdout, "status"] = "holdout"
        return out

    def responses(self, campaign_id, rows, weeks, open_logit, respond_rate) -> pd.DataFrame:
        n = len(rows)
        h = self.w.health[self.p["account_row"].to_numpy()[self.mkt_rows[rows]], weeks]
        sent = at(weeks, self.rng, spread=1 / 7)
        bounced = self.rng.random(n) < 0.02
        opened = ~bounced & (self.rng.random(n) < sigmoid(open_logit + 0.5 * h - 0.5))
        clicked = opened & (self.rng.random(n) < 0.3)
        responded = clicked & (self.rng.random(n) < respond_rate * 3)
        hour = np.timedelta64(3600, "s")
        nat = np.datetime64("NaT")
        return pd.DataFrame({
            "campaign_id": campaign_id, "mkt_contact_id": self.mkt_id[rows],
            "status": np.where(bounced, "bounced", "sent"), "sent_at": sent,
            "opened_at": np.where(opened, sent + 5 * hour, nat), "clicked_at": np.where(clicked, sent + 6 * hour, nat),
            "responded_at": np.where(responded, sent + 30 * hour, nat),
        })

    # --- feedback ------------------------------------------------------------------------------------
    def feedback(self) -> None:
        self.nps()
        self.feature_requests()

    def nps(self) -> None:
        acc_rows = self.p["account_row"].to_numpy()
        parts = []
        weeks = [w for w in range(NPS_FIRST, self.end, NPS_EVERY) if w >= self.first]
        if not weeks:
            return
        for week in weeks:
            who = np.flatnonzero(self.w.alive[acc_rows, week] & (self.rng.random(len(self.p)) < 0.25))
            parts.append(pd.DataFrame({"row": who, "week": week}))
        resp = pd.concat(parts, ignore_index=True)
        who, weeks = resp["row"].to_numpy(), resp["week"].to_numpy()
        h = self.w.health[acc_rows[who], weeks]
        score = np.clip((7.0 + 2.2 * h + self.rng.normal(0, 1.5, len(who))).round(), 0, 10).astype(int)
        band = np.minimum(score // 2, len(COMMENTS) - 1)
        scribe = ppl.Scribe(self.rng, typo_rate=0.05, missing_email=0.05, alt_email=0.1, missing_name=0.3)
        sub = self.p.iloc[who]
        first, last = scribe.names(sub["first_name"], sub["last_name"])
        self.out.add("feedback/nps", pd.DataFrame({
            "response_id": self.ids.take("NPS-", len(who), scramble=False), "email": scribe.emails(sub),
            "name": full_names(first, last), "score": score,
            "comment": np.where(self.rng.random(len(who)) < 0.3, np.asarray(COMMENTS)[band], None),
            "responded_at": at(weeks, self.rng),
        }), *self.person_truth(who))

    def feature_requests(self) -> None:
        rate = 0.004 * (1 + self.acc["adoption"].to_numpy())[:, None] * np.ones(self.w.alive.shape)
        rows, weeks = self.account_cells(rate)
        who = self.persons_of(rows)
        topic = np.asarray(REQUEST_TOPICS)[self.rng.integers(0, len(REQUEST_TOPICS), len(rows))]
        age = self.end - weeks
        status = np.where(age < 8, "open", np.asarray(("open", "planned", "shipped", "declined"))[
            self.rng.integers(0, 4, len(rows))])
        scribe = ppl.Scribe(self.rng, typo_rate=0.05, missing_email=0.02, alt_email=0.1, missing_name=0.2)
        sub = self.p.iloc[who]
        first, last = scribe.names(sub["first_name"], sub["last_name"])
        self.out.add("feedback/feature_requests", pd.DataFrame({
            "request_id": self.ids.take("FR-", len(rows), scramble=False), "email": scribe.emails(sub),
            "name": full_names(first, last), "topic": topic, "title": [REQUEST_TITLES[t] for t in topic],
            "status": status, "created_at": at(weeks, self.rng),
        }), *self.person_truth(who))


def campaigns(first: int = 0, end: int = OBSERVED, arms: list[tuple[int, str, int]] | None = None, tag: str = ""
              ) -> pd.DataFrame:
    """The company's campaigns of the weeks [first, end): a newsletter every quarter and one campaign per arm
    (week, action, wave number) of each experiment wave (the waves of WAVES by default). `tag` sets the ids of a
    later window's campaigns apart.

    Company-wide, so written once; `week` is the simulation's, not exported.
    """
    news = [(w, CONTENT_TOPICS[i % len(CONTENT_TOPICS)], None, None)
            for i, w in enumerate(range(4, HORIZON, NEWSLETTER_EVERY)) if first <= w < end]
    arms = [(wave, a, k) for k, wave in enumerate(WAVES) for a in ACTIONS] if arms is None else arms
    experiments = [(wave, ACTION_TOPIC[a], a, k) for wave, a, k in arms]
    rows = news + experiments
    return pd.DataFrame({
        "campaign_id": [f"CMP-{tag}{i:04d}" for i in range(1, len(rows) + 1)],
        "name": [f"{t.replace('_', ' ').title()} " + (f"wave {k} {a}" if a else "newsletter")
                 for _, t, a, k in rows],
        "channel": [ACTION_CHANNEL[a] if a else "email" for _, _, a, _ in rows],
        "topic": [t for _, t, _, _ in rows],
        "action": [a for _, _, a, _ in rows],
        "wave": pd.array([k for *_, k in rows], dtype="Int64"),
        "launched_at": [START + pd.Timedelta(weeks=w) for w, *_ in rows],
        "week": [w for w, *_ in rows],
    })
