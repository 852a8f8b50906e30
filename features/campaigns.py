"""Campaigns: a plan that turns an audience and a policy into actions, with holdouts, and the decision log.

A plan takes an audience's current members and, per member, the policy's action: the next best action of the
latest scoring run (`--policy nba`, the profile's `next_best_action` and its expected net uplift `nba_uplift`) or
one fixed action for all. Before anyone is assigned, members are removed, and counted by reason:

* the **global holdout** — a fixed share (`C360_GLOBAL_HOLDOUT`) of all customers no campaign ever contacts, so the
  value of all campaigns together stays measurable. Stable per customer: the salted SHA-256 of the customer id
  (the salt, `campaigns/salt`, is the home's own) read as a number in [0, 1);
* **no score** — with `--policy nba`, members the scoring run has no next best action for;
* **opted out** — members who opted out of the purpose the policy's action needs (`consent.ACTION_PURPOSE`);
* the **contact cap** — members already given `C360_CONTACT_CAP` contact actions (any action but `no_action`) by
  campaigns planned in the last `C360_CONTACT_PERIOD_DAYS` days (the decision log is the contact history);
* the **budget** — with `--budget N`, only the first M members by expected uplift (the NBA's score; customer id
  order without one) are kept, M the largest whose members outside the holdout are at most N: nobody but those can
  be contacted, so at most N are.

The rest are assigned by complete randomization (one permutation of the seeded generator): exactly
round(holdout·n) members get `no_action` (the holdout), exactly round(explore·n) an action drawn uniformly among
ALL actions the member's consent allows, `no_action` included (exploration), the others the policy's action. So the
probability that member i gets action a is known exactly, and logged with the assignment:

    p_i(a) = n_policy/n · [a = policy_i] + n_holdout/n · [a = no_action] + n_explore/n · [a allowed_i] / |allowed_i|

which is what an inverse-propensity readout (`c360.training.readout`) and a later NBA training on campaign data
need. The **decision log** is a SQLite file, `C360_HOME/campaigns/campaigns.db` (owner-only): one row per campaign
(its plan, seed and figures, when it was launched) and one per assignment (campaign, customer_id, arm, action, the
policy's action, propensity, the NBA's expected uplift, model and version, time, role, and the channel `--channel`
chose: one for all, or `best`, each member's most likely to get a response by c360-response among the channels
whose purpose the member did not opt out of). It holds customer ids, so it is a personal-data store of
`c360.core.personal.STORES` (`Campaigns`: export and erasure).

`simulate` plays a planned campaign forward on a generated company with the generator's one way to move the world
(`c360.features.advance`): the assignments, held-out members included as `no_action` (the experiment waves record
their holdouts the same way), become the actions of the next weeks. The batch is written into the world's folder,
as `c360 advance` writes it, and copied to the folder asked for, with the step's truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c360.core import consent, warehouse
from c360.core.contract import ACTIONS, SEND_CHANNELS
from c360.core.personal import Erased, Person, Work, sqlite_delete
from c360.core.settings import Settings
from c360.features import advance, audience_profile, audiences
from c360.features.generate import TRUTH

NAME = audiences.NAME
NONE = "no_action"
ARMS = ("policy", "holdout", "exploration")
POLICIES = ("nba", *ACTIONS)
CHANNEL_POLICIES = ("best", *SEND_CHANNELS)
MODEL = "nba"  # the scorer whose recommended action `--policy nba` follows (the score files' `nba_*` columns)
DDL = """
CREATE TABLE IF NOT EXISTS campaigns (name TEXT PRIMARY KEY, audience TEXT NOT NULL, policy TEXT NOT NULL,
    holdout REAL NOT NULL, explore REAL NOT NULL, budget INTEGER, seed INTEGER NOT NULL, planned_at TEXT NOT NULL,
    planned_by TEXT NOT NULL, launched_at TEXT, weeks INTEGER, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (campaign TEXT NOT NULL, customer_id TEXT NOT NULL, arm TEXT NOT NULL,
    action TEXT NOT NULL, policy_action TEXT NOT NULL, propensity REAL NOT NULL, score REAL, model TEXT,
    model_version INTEGER, assigned_at TEXT NOT NULL, role TEXT NOT NULL, channel TEXT);
CREATE INDEX IF NOT EXISTS assignments_campaign ON assignments (campaign);
CREATE INDEX IF NOT EXISTS assignments_customer ON assignments (customer_id);
"""
COLUMNS = ("campaign", "customer_id", "arm", "action", "policy_action", "propensity", "score", "model",
           "model_version", "assigned_at", "role", "channel")


class CampaignError(ValueError):
    """A plan, export or simulation that cannot be made (bad name or shares, unknown campaign, nothing to act on)."""


def path(s: Settings) -> Path:
    return s.home / "campaigns" / "campaigns.db"


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _db(s: Settings) -> Iterator[sqlite3.Connection]:
    file = path(s)
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with closing(sqlite3.connect(file, timeout=30)) as con:
        con.executescript(DDL)
        with con:
            yield con
    os.chmod(file, 0o600)


# ---------------------------------------------------------------- who may be planned


def _salt(s: Settings) -> bytes:
    file = s.home / "campaigns" / "salt"
    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
        finally:
            os.close(fd)
    return file.read_bytes()


def in_global_holdout(s: Settings, customers: Sequence[str]) -> np.ndarray:
    """Whether each customer is in the global holdout: stable per customer and home."""
    salt = _salt(s)
    draws = [int(hashlib.sha256(salt + str(c).encode()).hexdigest()[:15], 16) / 16**15 for c in customers]
    return np.asarray(draws, dtype=float) < s.global_holdout


def recent_contacts(s: Settings, customers: Sequence[str]) -> pd.Series:
    """Contact actions each customer got from campaigns planned in the contact period."""
    since = (_now() - timedelta(days=s.contact_period_days)).isoformat()
    with _db(s) as con:
        rows = con.execute("SELECT customer_id, count(*) FROM assignments WHERE action != ? AND assigned_at >= ? "
                           "GROUP BY customer_id", [NONE, since]).fetchall()
    return pd.Series(dict(rows), dtype="int64").reindex(list(customers), fill_value=0)


def _members(s: Settings, audience: str, policy: str, channel: str | None) -> pd.DataFrame:
    """The audience's members with the policy's action, its score, model version, channel and the actions they
    allow."""
    ids = audiences.members(s, audience)
    profile = audience_profile.table(s, audiences._overrides(s))
    frame = profile[profile["customer_id"].isin(ids)].reset_index(drop=True)
    if policy == "nba":
        if "next_best_action" not in frame.columns:
            raise CampaignError("no next best action scores: run `c360 score` first (or give a fixed --policy)")
        frame["policy_action"] = frame["next_best_action"]
        frame["score"] = frame.get("nba_uplift", pd.Series(np.nan, index=frame.index))
        frame = frame.merge(_versions(s), on="customer_id", how="left")
    else:
        frame = frame.assign(policy_action=policy, score=np.nan, model_version=pd.NA)
    frame["channel"] = _channels(s, frame, channel)
    allowed = consent.allowed(frame, ACTIONS)
    frame["allowed"] = ([list(ACTIONS)] * len(frame) if allowed is None
                        else [[a for a in ACTIONS if ok[a]] for ok in allowed.to_dict("records")])
    return frame[["customer_id", "policy_action", "score", "model_version", "allowed", "channel"]]


def _channels(s: Settings, frame: pd.DataFrame, channel: str | None) -> pd.Series:
    """Each member's channel: none chosen; one for all (none for a member who opted out of its purpose,
    `consent.CHANNEL_PURPOSE`); or (`best`) of the channels whose purpose the member allows, the one the latest
    scores' c360-response finds most likely to get a response (`response_channels`): a member who opted out of the
    best one gets the next. A member the model did not score gets none."""
    if channel != "best":
        chosen = pd.Series(channel, index=frame.index, dtype=object)
        return chosen.where(~_opted_out(frame, chosen), None)
    ranked = _ranked_channels(s, frame["customer_id"])
    allowed = {c: ~_opted_out(frame, pd.Series(c, index=frame.index, dtype=object)) for c in consent.CHANNEL_PURPOSE}
    return pd.Series([next((c for c in order if c in allowed and allowed[c].iat[i]), None)
                      for i, order in enumerate(ranked)], index=frame.index, dtype=object)


def _opted_out(frame: pd.DataFrame, chosen: pd.Series) -> pd.Series:
    """Whether each member opted out of the purpose of the channel `chosen` for them."""
    opted = pd.Series(False, index=frame.index)
    for name, purpose in consent.CHANNEL_PURPOSE.items():
        column = consent.feature(purpose)
        if column in frame.columns:
            opted |= (chosen == name) & frame[column].astype("boolean").fillna(False).astype(bool)
    return opted


def _ranked_channels(s: Settings, customers: pd.Series) -> list[list[str]]:
    """Each customer's channels, most likely to get a response first, by the latest scores (none if unscored)."""
    scores = audience_profile.latest_scores(s, keep=("response_channels",))
    if "response_channels" not in scores.columns:
        raise CampaignError("no response scores for --channel best: `c360 train response`, `c360 promote response` "
                            "and `c360 score` add them")
    listed = scores.set_index("customer_id")["response_channels"].reindex(customers.tolist())
    return [[c["channel"] for c in sorted(json.loads(v), key=lambda c: -c["probability"])] if isinstance(v, str)
            else [] for v in listed]


def _versions(s: Settings) -> pd.DataFrame:
    """The NBA model version of each customer's latest scores."""
    scores = audience_profile.latest_scores(s, keep=("nba_version",))
    return scores.reindex(columns=["customer_id", "nba_version"]).rename(columns={"nba_version": "model_version"})


def eligible(s: Settings, frame: pd.DataFrame, holdout: float, budget: int | None
             ) -> tuple[pd.DataFrame, dict[str, int]]:
    """The members a campaign may plan, and how many each rule removed (in the order they apply)."""
    removed = {}
    rules = [("global_holdout", lambda f: in_global_holdout(s, f["customer_id"].tolist())),
             ("no_score", lambda f: f["policy_action"].isna().to_numpy()),
             ("opted_out", lambda f: np.asarray([a not in ok for a, ok in zip(f["policy_action"], f["allowed"],
                                                                              strict=True)], dtype=bool)),
             ("contact_cap", lambda f: (recent_contacts(s, f["customer_id"].tolist()) >= s.contact_cap).to_numpy())]
    for reason, rule in rules:
        out = rule(frame) if len(frame) else np.zeros(0, dtype=bool)
        removed[reason] = int(out.sum())
        frame = frame[~out].reset_index(drop=True)
    if budget is not None:
        kept = _within_budget(len(frame), holdout, budget)
        ranked = frame.sort_values(["score", "customer_id"], ascending=[False, True], na_position="last")
        removed["budget"] = len(frame) - kept
        frame = ranked.head(kept).sort_values("customer_id").reset_index(drop=True)
    return frame, removed


def _within_budget(n: int, holdout: float, budget: int) -> int:
    """The most members whose share outside the holdout (all of whom may be contacted) is at most `budget`."""
    return max((m for m in range(n + 1) if m - round(holdout * m) <= budget), default=0)


# ---------------------------------------------------------------- assignment


def assign(frame: pd.DataFrame, holdout: float, explore: float, rng: np.random.Generator) -> pd.DataFrame:
    """Complete randomization of `frame`'s members into the arms; each row's action and its propensity."""
    n = len(frame)
    n_hold, n_explore = round(holdout * n), round(explore * n)
    n_policy = n - n_hold - n_explore
    order = rng.permutation(n)
    arm = np.full(n, "policy", dtype=object)
    arm[order[:n_hold]] = "holdout"
    arm[order[n_hold:n_hold + n_explore]] = "exploration"
    drawn = [ok[rng.integers(len(ok))] for ok in frame["allowed"]]
    action = np.where(arm == "policy", frame["policy_action"].astype(object),
                      np.where(arm == "holdout", NONE, np.asarray(drawn, dtype=object)))
    propensity = [(n_policy * (a == pol) + n_hold * (a == NONE) + n_explore * (a in ok) / len(ok)) / n
                  for a, pol, ok in zip(action, frame["policy_action"], frame["allowed"], strict=True)]
    return frame.assign(arm=arm, action=action, propensity=propensity,
                        channel=frame["channel"].where(action != NONE, None))


def _check(name: str, policy: str, holdout: float, explore: float, budget: int | None, channel: str | None) -> None:
    if not re.match(NAME, name):
        raise CampaignError(f"invalid campaign name {name!r}: letters, digits, '_', '.', '-', at most 64 characters")
    if policy not in POLICIES:
        raise CampaignError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    if not (0 <= holdout < 1 and 0 <= explore < 1 and holdout + explore < 1):
        raise CampaignError("--holdout and --explore are shares in [0, 1) that leave some members to the policy")
    if budget is not None and budget < 0:
        raise CampaignError("--budget is a number of contacts, 0 or more")
    if channel is not None and channel not in CHANNEL_POLICIES:
        raise CampaignError(f"unknown channel {channel!r}; known: {', '.join(CHANNEL_POLICIES)}")


def plan(s: Settings, name: str, audience: str, *, policy: str = "nba", holdout: float = 0.1,
         explore: float = 0.05, budget: int | None = None, seed: int | None = None, channel: str | None = None,
         who: str, role: str) -> dict[str, Any]:
    """Plan campaign `name` and log its assignments; its summary (sizes, realized shares, arms, actions, removed).
    CampaignError for a bad plan, audiences.UnknownAudience for an unknown audience."""
    _check(name, policy, holdout, explore, budget, channel)
    if exists(s, name):
        raise CampaignError(f"a campaign is already named {name!r}")
    members = _members(s, audience, policy, channel)
    frame, removed = eligible(s, members, holdout, budget)
    if frame.empty:
        raise CampaignError(f"nobody to plan: of {len(members):,} members of {audience}, removed {removed}")
    seed = secrets.randbits(32) if seed is None else seed
    assigned = assign(frame, holdout, explore, np.random.default_rng(seed))
    summary = _summary(audience, policy, len(members), assigned, removed, holdout, explore)
    _log(s, name, assigned, summary, dict(audience=audience, policy=policy, holdout=holdout, explore=explore,
                                          budget=budget, seed=seed, who=who, role=role))
    return {"name": name, **summary, "seed": seed}


def _summary(audience: str, policy: str, members: int, assigned: pd.DataFrame, removed: dict[str, int],
             holdout: float, explore: float) -> dict[str, Any]:
    n = len(assigned)
    arms = {a: int((assigned["arm"] == a).sum()) for a in ARMS}
    return {"audience": audience, "policy": policy, "members": members, "assigned": n, "removed": removed,
            "planned_shares": {"holdout": holdout, "exploration": explore},
            "realized_shares": {"holdout": arms["holdout"] / n, "exploration": arms["exploration"] / n},
            "arms": arms, "actions": {a: int((assigned["action"] == a).sum()) for a in ACTIONS},
            "contacted": int((assigned["action"] != NONE).sum()),
            "channels": {str(c): int(n) for c, n in assigned["channel"].dropna().value_counts().sort_index().items()}}


def _log(s: Settings, name: str, assigned: pd.DataFrame, summary: dict[str, Any], p: dict[str, Any]) -> None:
    at = _now().isoformat(timespec="microseconds")
    rows = [(name, r.customer_id, r.arm, r.action, r.policy_action, float(r.propensity),
             None if pd.isna(r.score) else float(r.score), MODEL if p["policy"] == "nba" else None,
             None if pd.isna(r.model_version) else int(r.model_version), at, p["role"], r.channel)
            for r in assigned.itertuples()]
    try:
        with _db(s) as con:
            con.execute("INSERT INTO campaigns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                        [name, p["audience"], p["policy"], p["holdout"], p["explore"], p["budget"], p["seed"], at,
                         p["who"], json.dumps(summary)])
            con.executemany(f"INSERT INTO assignments VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    except sqlite3.IntegrityError:  # planned meanwhile by another caller
        raise CampaignError(f"a campaign is already named {name!r}") from None


# ---------------------------------------------------------------- reading the log


def exists(s: Settings, name: str) -> bool:
    if not path(s).is_file():
        return False
    with _db(s) as con:
        return con.execute("SELECT 1 FROM campaigns WHERE name = ?", [name]).fetchone() is not None


def campaign(s: Settings, name: str) -> dict[str, Any]:
    """A campaign's plan and summary; CampaignError when there is none of that name."""
    if not exists(s, name):
        raise CampaignError(f"no campaign named {name!r} (`c360 campaign list` shows them)")
    with _db(s) as con:
        cursor = con.execute("SELECT * FROM campaigns WHERE name = ?", [name])
        row = dict(zip([d[0] for d in cursor.description], cursor.fetchone(), strict=True))
    return row | {"summary": json.loads(row["summary"])}


def listed(s: Settings) -> list[dict[str, Any]]:
    if not path(s).is_file():
        return []
    with _db(s) as con:
        rows = con.execute("SELECT name, audience, policy, planned_at, planned_by, launched_at, "
                           "(SELECT count(*) FROM assignments a WHERE a.campaign = c.name) FROM campaigns c "
                           "ORDER BY planned_at").fetchall()
    keys = ("name", "audience", "policy", "planned_at", "planned_by", "launched_at", "assigned")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def launch_dates(s: Settings) -> list[pd.Timestamp]:
    """The days the logged campaigns started: the features stage builds their snapshots, as the waves', for a
    later NBA training on the campaigns' assignments."""
    return sorted({pd.Timestamp(c["launched_at"]).normalize() for c in listed(s) if c["launched_at"]})


def assignments(s: Settings, name: str) -> pd.DataFrame:
    """The campaign's assignments (COLUMNS), by customer id; what a readout and a later NBA training read."""
    campaign(s, name)
    with _db(s) as con:
        rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM assignments WHERE campaign = ? ORDER BY customer_id",
                           [name]).fetchall()
    return pd.DataFrame(rows, columns=list(COLUMNS))


def launched(s: Settings, name: str, at: str, weeks: int | None) -> None:
    """Record when the campaign's actions started (the export's day, or the simulated step's first day)."""
    with _db(s) as con:
        con.execute("UPDATE campaigns SET launched_at = ?, weeks = ? WHERE name = ?", [at, weeks, name])


# ---------------------------------------------------------------- export and simulation


def export(s: Settings, name: str, out: Path, who: str) -> dict[str, Any]:
    """Per contact action, a CSV `<out>/<name>_<action>.csv` of the members given it (the audience export's fields
    and rules, and the channel planned for each); the holdout and `no_action` are not exported. Each file is
    recorded like an audience export."""
    frame = assignments(s, name)
    channel = frame.set_index("customer_id")["channel"]
    out.mkdir(parents=True, exist_ok=True)
    files, left_out = {}, dict[str, int]()
    for action in [a for a in ACTIONS if a != NONE]:
        ids = frame.loc[frame["action"] == action, "customer_id"].tolist()
        if not ids:
            continue
        rows = audiences.contact_rows(s, ids)
        file = out / f"{name}_{action}.csv"
        audiences.write(rows.rows.assign(action=action, channel=rows.rows["customer_id"].map(channel)), file)
        audiences.record(s, f"campaign {name}: {action}", str(file.resolve()), who, rows.rows["customer_id"].tolist())
        files[action] = {"file": file, "rows": len(rows.rows)}
        for reason, n in rows.left_out.items():
            left_out[reason] = left_out.get(reason, 0) + n
    if campaign(s, name)["launched_at"] is None:
        launched(s, name, str(_now().date()), None)
    return {"name": name, "out": out, "files": files, "left_out": left_out}


def simulate(s: Settings, name: str, out: Path, weeks: int) -> dict[str, Any]:
    """Play the campaign forward on the generated world: its assignments as the actions of the next `weeks` weeks
    (`c360.features.advance`), the batch of source files in `out`, the step's truth in `out/ground_truth`."""
    world = s.generated
    if not (world / TRUTH / "manifest.json").is_file():
        raise CampaignError(f"{world}: no generated world here: `campaign simulate` plays a generated company "
                            "forward (run `c360 generate` first); a real company's outcomes come from its sources")
    frame = assignments(s, name)
    with warehouse.connect(s, read_only=True) as con:
        actions = advance.with_account_ids(con, frame[["customer_id", "action"]])
    out.mkdir(parents=True, exist_ok=True)
    actions.to_csv(out / f"campaign_{name}_actions.csv", index=False)
    # into the world's folder, as `c360 advance` does: a snapshot table's file of the step is then the whole table
    # (the last export's rows with the step's changes), not the step's rows alone, which ingest would take as the
    # others deleted at the source
    report = advance.advance(world, weeks, actions, out=world)
    for relative in report.rows:
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(world / relative, out / relative)
    (out / TRUTH).mkdir(exist_ok=True)
    for file in (world / TRUTH).glob(f"advance_{report.start}*"):
        shutil.copy2(file, out / TRUTH / file.name)
    launched(s, name, report.start, weeks)
    return {"name": name, "out": out, **vars(report)}


# ---------------------------------------------------------------- the personal-data store (c360.core.personal)


class Campaigns:
    """The decision log (`campaigns/campaigns.db`): every assignment names a customer."""

    @staticmethod
    def export(work: Work, person: Person) -> list[dict[str, Any]]:
        customers = list(person.customers)
        if not path(work.s).is_file() or not customers:
            return []
        marks = ",".join("?" * len(customers))
        with _db(work.s) as con:
            rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM assignments WHERE customer_id IN ({marks}) "
                               "ORDER BY assigned_at", customers).fetchall()
        return [dict(zip(COLUMNS, r, strict=True)) for r in rows]

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        whole = list(person.whole)
        if not whole:
            return Erased()
        marks = ",".join("?" * len(whole))
        return Erased(rows=sqlite_delete(path(work.s), [(f"DELETE FROM assignments WHERE customer_id IN ({marks})",
                                                         whole)]))
