"""A customer's profile — identity, past, present — assembled from plain values (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import pandas as pd

from c360.core.definitions import BY_NAME

Features: TypeAlias = Mapping[str, Any] | pd.Series  # one customer's features by name

PAST = {
    "product activity": ("active_days_7d", "active_days_30d", "active_days_90d", "sessions_30d",
                         "features_used_90d", "features_used_total", "active_users_30d", "logins_per_user_12m",
                         "usage_trend", "days_since_last_activity"),
    "interactions (90 days)": ("contacts_email_90d", "contacts_phone_90d", "contacts_chat_90d",
                               "contacts_in_app_90d", "contacts_meeting_90d", "contacts_social_90d",
                               "days_since_last_contact"),
    "campaigns (180 days) and requests": ("campaigns_sent_180d", "campaigns_opened_180d", "campaigns_clicked_180d",
                                          "campaigns_responded_180d", "feature_requests_total",
                                          "feature_requests_90d"),
    "purchases and billing": ("revenue_total", "revenue_12m", "orders_12m", "days_since_last_purchase",
                              "payment_failures_90d", "payment_failures_12m", "refunds_12m", "upgrades_180d",
                              "downgrades_180d"),
}
PRESENT = {
    "where the customer stands": ("lifecycle_stage", "subscribed", "plan", "seats", "mrr", "tenure_days",
                                  "contacts", "admin_contacts", "has_executive_sponsor"),
    "support and sentiment": ("tickets_90d", "tickets_12m", "open_tickets", "open_high_severity_tickets",
                              "days_since_last_ticket", "csat_180d", "nps_last", "nps_avg_12m"),
    "health": ("health_score", "health_band", "health_usage", "health_engagement", "health_support",
               "health_sentiment", "health_billing"),
}


def red_flags(features: Features) -> list[str]:
    """Plain-words descriptions of the red flags raised."""
    return [BY_NAME[n].description.removeprefix("red flag: ") for n in BY_NAME
            if n.startswith("flag_") and bool(features.get(n))]


def _pick(features: Features, names: tuple[str, ...]) -> dict[str, Any]:
    return {n.replace("_", " "): features.get(n) for n in names}


def _joined(values: Any) -> str:
    return ", ".join([] if values is None else list(values))


def assemble(identity: dict[str, Any], features: Features) -> dict[str, dict[str, dict[str, Any]]]:
    """Sections → blocks → fields, ready to print or serve."""
    who = {k: identity.get(k) for k in ("customer_id", "display_name", "company", "segment", "region")}
    who |= {"e-mails": _joined(identity.get("emails")), "phones": _joined(identity.get("phones")),
            "source records": identity.get("records")}
    flags = red_flags(features)
    return {
        "identity": {"customer": who},
        "past": {block: _pick(features, names) for block, names in PAST.items()},
        "present": {**{block: _pick(features, names) for block, names in PRESENT.items()},
                    "red flags": {f"{i + 1}": flag for i, flag in enumerate(flags)} or {"none": "—"}},
    }
