"""What a role sees of a profile: the one place personal data is masked or dropped (`serving.access.VIEWS`).

* `full` (admin, csm): the profile as it is;
* `masked` (analyst): identity and detail lists keep only the fields declared not personal below; every other
  field's value becomes `MASK` (a list: one `MASK` per item, so counts stay);
* `anonymous` (service): no identity and no detail lists at all, as with `details=false`.

Declared the other way round — what is *not* personal — so a column a later query adds to the identity or to a
detail list is masked until someone declares it harmless. Past, present and future hold no personal data: they
are the feature catalogue's values (`core.definitions.FEATURES`; the schema forbids any other key in past and
present) and the models' answers about them, as predictions are.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from c360.serving.access import View

MASK = "[masked]"
IDENTITY_NOT_PERSONAL = frozenset({"customer_id", "segment", "region", "sources", "records", "unlinked", "evidence"})
# Per detail list (`features.details`), its columns that are not personal. Masked, by not being listed: names,
# e-mails, phones and job titles of contacts, ticket ids (a source key), and free text (the timeline's detail:
# campaign names, topics, a feature request's title; a request's title).
DETAILS_NOT_PERSONAL: dict[str, frozenset[str]] = {
    "timeline": frozenset({"happened_at", "silo", "what"}),
    "contacts": frozenset({"role"}),
    "latest_interaction": frozenset({"happened_at", "channel", "topic", "severity", "satisfaction"}),
    "latest_issue": frozenset({"opened_at", "topic", "severity", "channel", "status", "age_days"}),
    "purchases": frozenset({"first_purchase", "last_purchase", "last_purchase_detail"}),
    "plan_history": frozenset({"changed_at", "from_plan", "to_plan", "from_seats", "to_seats"}),
    "feature_requests": frozenset({"created_at", "topic", "status"}),
    "campaigns_by_channel_and_topic": frozenset({"channel", "topic", "sent", "opened", "clicked", "responded"}),
    "red_flags_since": frozenset({"code", "description", "since"}),
}


# The columns of an audience export (`features.audiences.EXPORT`) that are not personal: names and e-mails are masked.
AUDIENCE_NOT_PERSONAL = frozenset({"customer_id", "segment", "region", "plan", "churn_band", "clv_12m",
                                   "next_best_action", "expansion_probability", "response_channel",
                                   "response_topic", "response_probability"})


def _mask(value: Any) -> Any:
    if value is None:
        return None
    return [MASK] * len(value) if isinstance(value, list) else MASK


def _keep(row: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    return {k: v if k in allowed else _mask(v) for k, v in row.items()}


def profile(out: dict[str, Any], view: View) -> dict[str, Any]:
    """The profile `out` as `view` may see it (`out` itself when nothing is hidden)."""
    if view == "full" or ("identity" not in out and "details" not in out):
        return out
    if view == "anonymous":
        return {k: v for k, v in out.items() if k not in ("identity", "details")}
    shown = dict(out)
    if shown.get("identity") is not None:
        shown["identity"] = _keep(shown["identity"], IDENTITY_NOT_PERSONAL)
    if shown.get("details") is not None:
        shown["details"] = {name: [_keep(row, DETAILS_NOT_PERSONAL.get(name, frozenset())) for row in rows]
                            for name, rows in shown["details"].items()}
    return shown


def export_rows(rows: pd.DataFrame, view: View) -> pd.DataFrame:
    """An audience export's rows as `view` may see them: masked, the personal columns' values become `MASK`;
    anonymous, they are left out."""
    personal = [c for c in rows.columns if c not in AUDIENCE_NOT_PERSONAL]
    if view == "full" or not personal:
        return rows
    if view == "anonymous":
        return rows.drop(columns=personal)
    return rows.assign(**{c: rows[c].map(_mask) for c in personal})
