"""Consent in the marketing silo: what each marketing contact granted at sign-up, and the opt-outs that followed.

Drawn from a random stream of its own (`generate` seeds it from the seed, the chunk and `STREAM`), after the other
silos are built from theirs, so adding it changed no other file of an existing seed. For the same reason the
simulated sends do not stop at an unsubscribe: the world's campaigns and experiments are as they were.

Most contacts grant every purpose when they sign up (`GRANTED`); a granted purpose is withdrawn later with a weekly
hazard (`WITHDRAW`) that grows as the account's health falls (`UNHAPPY`) and after it churns (`CHURNED`), so
unhappy and former customers opt out more. Each change is one dated row, as a marketing platform's consent log
exports it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from c360.core import contract
from c360.core.contract import PURPOSES
from c360.features.synth.silos import Builder, Ids, at, exported_by_end

STREAM = 0xC045E7  # the consent stream's own word in the seed sequence
GRANTED = {"marketing_email": 0.9, "other_channels": 0.8, "analytics": 0.95}  # share granting it at sign-up
WITHDRAW = {"marketing_email": 0.0012, "other_channels": 0.0006, "analytics": 0.0002}  # weekly, at health 0
UNHAPPY = 0.8  # the hazard is multiplied by e^(-UNHAPPY × health)
CHURNED = 2.0  # and by this once the account has churned
SOURCES = {"marketing_email": (("unsubscribe_link", "preference_center"), (0.85, 0.15)),
           "other_channels": (("preference_center", "support_request"), (0.6, 0.4)),
           "analytics": (("preference_center", "support_request"), (0.8, 0.2))}


def consents(rng: np.random.Generator, builder: Builder, ids: Ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `marketing/consents` rows of one chunk's marketing contacts, and their truth: per contact and purpose,
    whether it was granted at the data's end and when it was withdrawn."""
    rows = builder.mkt_rows
    account = builder.p["account_row"].to_numpy()[rows]
    signed_up = builder.created[account]
    changes, truth = [], []
    for purpose in PURPOSES:
        granted = rng.random(len(rows)) < GRANTED[purpose]
        week = _withdrawal_week(rng, builder, account, purpose)
        withdrawn = granted & (week >= 0)
        changes += [
            pd.DataFrame({"mkt_contact_id": builder.mkt_id, "purpose": purpose,
                          "status": np.where(granted, "granted", "withdrawn"), "changed_at": signed_up,
                          "source": "signup_form"}),
            _withdrawn(rng, builder, purpose, withdrawn, week),
        ]
        truth.append(pd.DataFrame({
            "mkt_contact_id": builder.mkt_id, "purpose": purpose, "granted_at_end": granted & ~withdrawn,
            "withdrawn_at": pd.Series(changes[-1]["changed_at"].to_numpy(), index=np.flatnonzero(withdrawn))
            .reindex(range(len(rows))).to_numpy(dtype="datetime64[s]")}))
    person, acc = builder.person_truth(rows)
    who = pd.DataFrame({"mkt_contact_id": builder.mkt_id, "person": person, "account": acc})
    return _log(changes, builder, ids), pd.concat(truth, ignore_index=True).merge(who, on="mkt_contact_id", how="left")


def withdrawals(rng: np.random.Generator, builder: Builder, ids: Ids, granted: dict[str, np.ndarray]
                ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The `marketing/consents` rows of the window of `builder` (`c360.features.synth.advance`): a purpose each
    contact still grants (`granted`, per purpose, in marketing contact order) is withdrawn with the same hazard as
    before. Returns the rows and what each contact still grants at the window's end."""
    account = builder.p["account_row"].to_numpy()[builder.mkt_rows]
    changes, still = [], {}
    for purpose in PURPOSES:
        week = _withdrawal_week(rng, builder, account, purpose)
        withdrawn = granted[purpose] & (week >= 0)
        changes.append(_withdrawn(rng, builder, purpose, withdrawn, week))
        still[purpose] = granted[purpose] & ~withdrawn
    return _log(changes, builder, ids), still


def _withdrawn(rng: np.random.Generator, builder: Builder, purpose: str, withdrawn: np.ndarray, week: np.ndarray
               ) -> pd.DataFrame:
    sources, shares = SOURCES[purpose]
    return pd.DataFrame({"mkt_contact_id": builder.mkt_id[withdrawn], "purpose": purpose, "status": "withdrawn",
                         "changed_at": at(week[withdrawn], rng),
                         "source": rng.choice(sources, int(withdrawn.sum()), p=shares)})


def _log(changes: list[pd.DataFrame], builder: Builder, ids: Ids) -> pd.DataFrame:
    log = pd.concat(changes, ignore_index=True).sort_values("changed_at", kind="stable", ignore_index=True)
    log.insert(0, "consent_id", ids.take("CNS-", len(log), scramble=False))
    return exported_by_end(log, contract.table("marketing/consents"), builder.end)


def _withdrawal_week(rng: np.random.Generator, builder: Builder, account: np.ndarray, purpose: str) -> np.ndarray:
    """The week of the builder's window in which each contact would withdraw `purpose` (-1: not before the window's
    end): the first week whose cumulative hazard passes an exponential draw."""
    w = builder.w
    weeks = np.arange(builder.first, builder.end)
    after_signup = weeks[None, :] > builder.acc["start_week"].to_numpy()[account, None]
    churned = weeks[None, :] >= w.churn_week[account, None]
    unhappy = np.exp(-UNHAPPY * np.clip(w.health[account, builder.first: builder.end], -2, 2))  # no runaway
    hazard = (WITHDRAW[purpose] * unhappy * np.where(churned, CHURNED, 1.0) * after_signup).astype("float32")
    cumulative = np.cumsum(hazard, axis=1)
    draw = rng.exponential(1.0, len(account)).astype("float32")
    passed = cumulative > draw[:, None]
    return np.where(passed[:, -1], np.argmax(passed, axis=1) + builder.first, -1)
