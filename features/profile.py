"""A customer's profile — identity, past, present — assembled from plain values (no I/O here).

Every key of a profile is an identifier: a group's key, a feature's own name (`core.definitions.FEATURES`), a
detail list's key (`features.details`). What a person reads instead is `label(key)`: the API's schema titles,
the profile page and `c360 profile` all take their labels from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import pandas as pd

from c360.core.consent import FEATURES as CONSENT
from c360.core.definitions import BY_NAME
from c360.features.details import LISTS, red_flag

Features: TypeAlias = Mapping[str, Any] | pd.Series  # one customer's features by name

PAST = {
    "activity": ("active_days_7d", "active_days_30d", "active_days_90d", "sessions_30d", "features_used_90d",
                 "features_used_total", "active_users_30d", "logins_per_user_12m", "usage_trend",
                 "days_since_last_activity"),
    "interactions": ("contacts_email_90d", "contacts_phone_90d", "contacts_chat_90d", "contacts_in_app_90d",
                     "contacts_meeting_90d", "contacts_social_90d", "days_since_last_contact"),
    "campaigns": ("campaigns_sent_180d", "campaigns_opened_180d", "campaigns_clicked_180d",
                  "campaigns_responded_180d", "feature_requests_total", "feature_requests_90d"),
    "billing": ("revenue_total", "revenue_12m", "orders_12m", "days_since_last_purchase", "payment_failures_90d",
                "payment_failures_12m", "refunds_12m", "upgrades_180d", "downgrades_180d"),
}
PRESENT = {
    "standing": ("lifecycle_stage", "subscribed", "plan", "seats", "mrr", "tenure_days", "contacts",
                 "admin_contacts", "has_executive_sponsor"),
    "support": ("tickets_90d", "tickets_12m", "open_tickets", "open_high_severity_tickets", "days_since_last_ticket",
                "csat_180d", "nps_last", "nps_avg_12m"),
    "health": ("health_score", "health_band", "health_usage", "health_engagement", "health_support",
               "health_sentiment", "health_billing"),
    "consent": CONSENT,
}
IDENTITY = ("customer_id", "display_name", "company", "segment", "region", "emails", "phones", "records")

# Labels other than the key with spaces for underscores (a feature's label is always its name with spaces).
LABELS = {
    "activity": "product activity",
    "interactions": "interactions (90 days)",
    "campaigns": "campaigns (180 days) and requests",
    "billing": "purchases and billing",
    "standing": "where the customer stands",
    "support": "support and sentiment",
    "consent": "consent: opted out of",
    "emails": "e-mails",
    "records": "source records",
}


def label(key: str) -> str:
    """What a person reads for a profile key."""
    return LABELS.get(key, key.replace("_", " "))


def keys() -> list[str]:
    """Every key a profile names: groups, their features, the red flags, identity, detail lists."""
    groups = PAST | PRESENT
    return [*groups, *(name for names in groups.values() for name in names), "red_flags", *IDENTITY, *LISTS]


def red_flags(features: Features) -> list[dict[str, str]]:
    """The red flags raised: code and plain-words description."""
    return [red_flag(n) for n in BY_NAME if n.startswith("flag_") and bool(features.get(n))]


def _pick(features: Features, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: features.get(n) for n in names}


def _joined(values: Any) -> str:
    return ", ".join([] if values is None else list(values))


def assemble(identity: dict[str, Any], features: Features) -> dict[str, dict[str, Any]]:
    """Sections → groups → features (and the red flags raised), ready to serve or to print with their labels."""
    who = {k: identity.get(k) for k in IDENTITY} | {k: _joined(identity.get(k)) for k in ("emails", "phones")}
    return {
        "identity": {"customer": who},
        "past": {group: _pick(features, names) for group, names in PAST.items()},
        "present": {**{group: _pick(features, names) for group, names in PRESENT.items()},
                    "red_flags": red_flags(features)},
    }
