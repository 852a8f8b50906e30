"""The profile's detail lists for one customer, read from the warehouse: timeline, contacts, latest interaction,
latest purchase and issue, feature requests, campaigns by channel and topic, plan history, red flags since when.

Counts and scores live in the feature store; lists of things do not fit a feature view, so they are read here,
for one customer at a time, with the same rule as the features: only rows dated before `as_of`.
"""

from __future__ import annotations

import pandas as pd

from c360.core.definitions import BY_NAME

TIMELINE_SQL = """
WITH mine AS (SELECT source, source_key FROM identity_crosswalk WHERE customer_id = $id),
users AS (SELECT source_key AS user_id FROM mine WHERE source = 'product/users'),
billing AS (SELECT source_key AS billing_account_id FROM mine WHERE source = 'billing/customers'),
contacts AS (SELECT source_key AS mkt_contact_id FROM mine WHERE source = 'marketing/contacts'),
items AS (
    SELECT max(event_time) AS happened_at, 'product' AS silo, 'used the product' AS what,
        count(*)::VARCHAR || ' events' AS detail
    FROM product_events WHERE user_id IN (SELECT user_id FROM users) AND event_time < $as_of
    GROUP BY event_time::DATE
    UNION ALL SELECT issued_at, 'billing', kind || ' invoice ' || status, printf('%.2f %s', amount, currency)
    FROM billing_invoices WHERE billing_account_id IN (SELECT billing_account_id FROM billing) AND issued_at < $as_of
    UNION ALL SELECT opened_at, 'support', 'ticket via ' || channel, topic || ', ' || severity
    FROM support_tickets WHERE ticket_id IN (SELECT source_key FROM mine WHERE source = 'support/tickets')
        AND opened_at < $as_of
    UNION ALL SELECT s.sent_at, 'marketing', c.channel || ' campaign ' || s.status, c.name
    FROM marketing_sends s JOIN marketing_campaigns c USING (campaign_id)
    WHERE s.mkt_contact_id IN (SELECT mkt_contact_id FROM contacts) AND s.sent_at < $as_of
    UNION ALL SELECT responded_at, 'feedback', 'NPS answer', score::VARCHAR
    FROM feedback_nps WHERE response_id IN (SELECT source_key FROM mine WHERE source = 'feedback/nps')
        AND responded_at < $as_of
    UNION ALL SELECT created_at, 'feedback', 'feature request', title
    FROM feedback_feature_requests
    WHERE request_id IN (SELECT source_key FROM mine WHERE source = 'feedback/feature_requests') AND created_at < $as_of
    UNION ALL SELECT occurred_at, 'crm', channel, topic
    FROM crm_activities WHERE account_id IN (SELECT source_key FROM mine WHERE source = 'crm/accounts')
        AND occurred_at < $as_of)
SELECT * FROM items ORDER BY happened_at DESC
"""
CONTACTS_SQL = """
SELECT coalesce(first_name || ' ', '') || coalesce(last_name, '') AS name, role, title, email, phone
FROM crm_contacts WHERE contact_id IN
    (SELECT source_key FROM identity_crosswalk WHERE customer_id = $id AND source = 'crm/contacts')
    AND created_at < $as_of
ORDER BY role, name
"""
LATEST_INTERACTION_SQL = """
SELECT * FROM (
    SELECT opened_at AS happened_at, channel, topic, severity, satisfaction FROM support_tickets WHERE ticket_id IN
        (SELECT source_key FROM identity_crosswalk WHERE customer_id = $id AND source = 'support/tickets')
    UNION ALL
    SELECT occurred_at, channel, topic, NULL, NULL FROM crm_activities WHERE account_id IN
        (SELECT source_key FROM identity_crosswalk WHERE customer_id = $id AND source = 'crm/accounts'))
WHERE happened_at < $as_of ORDER BY happened_at DESC LIMIT 1
"""
LATEST_TICKET_SQL = """
SELECT ticket_id, opened_at, topic, severity, channel,
    CASE WHEN closed_at IS NULL OR closed_at >= $as_of THEN 'open' ELSE 'closed' END AS status,
    date_diff('day', opened_at, $as_of) AS age_days
FROM support_tickets WHERE ticket_id IN
    (SELECT source_key FROM identity_crosswalk WHERE customer_id = $id AND source = 'support/tickets')
    AND opened_at < $as_of
ORDER BY opened_at DESC LIMIT 1
"""
BILLING_SQL = """
WITH accounts AS (SELECT source_key AS billing_account_id FROM identity_crosswalk
                  WHERE customer_id = $id AND source = 'billing/customers'),
paid AS (SELECT * FROM billing_invoices WHERE billing_account_id IN (SELECT * FROM accounts) AND issued_at < $as_of
         AND status = 'paid')
SELECT (SELECT min(issued_at) FROM paid) AS first_purchase, (SELECT max(issued_at) FROM paid) AS last_purchase,
    (SELECT arg_max(kind || ' ' || printf('%.2f', amount), issued_at) FROM paid) AS last_purchase_detail
"""
PLAN_HISTORY_SQL = """
SELECT c.changed_at, c.from_plan, c.to_plan, c.from_seats, c.to_seats
FROM billing_plan_changes c JOIN billing_subscriptions s USING (subscription_id)
WHERE s.billing_account_id IN (SELECT source_key FROM identity_crosswalk WHERE customer_id = $id
                               AND source = 'billing/customers') AND c.changed_at < $as_of
ORDER BY c.changed_at DESC LIMIT 10
"""
REQUESTS_SQL = """
SELECT created_at, topic, title, status FROM feedback_feature_requests WHERE request_id IN
    (SELECT source_key FROM identity_crosswalk WHERE customer_id = $id AND source = 'feedback/feature_requests')
    AND created_at < $as_of
ORDER BY created_at DESC
"""
CAMPAIGNS_SQL = """
SELECT c.channel, c.topic, count(*) FILTER (WHERE s.status = 'sent') AS sent,
    count(s.opened_at) FILTER (WHERE s.opened_at < $as_of) AS opened,
    count(s.clicked_at) FILTER (WHERE s.clicked_at < $as_of) AS clicked,
    count(s.responded_at) FILTER (WHERE s.responded_at < $as_of) AS responded
FROM marketing_sends s JOIN marketing_campaigns c USING (campaign_id)
WHERE s.mkt_contact_id IN (SELECT source_key FROM identity_crosswalk WHERE customer_id = $id
                           AND source = 'marketing/contacts') AND s.sent_at < $as_of AND s.status <> 'holdout'
GROUP BY ALL ORDER BY sent DESC, c.channel, c.topic
"""


QUERIES = {"timeline": TIMELINE_SQL, "contacts": CONTACTS_SQL, "latest_interaction": LATEST_INTERACTION_SQL,
           "latest_issue": LATEST_TICKET_SQL, "purchases": BILLING_SQL, "plan_history": PLAN_HISTORY_SQL,
           "feature_requests": REQUESTS_SQL, "campaigns_by_channel_and_topic": CAMPAIGNS_SQL}
LISTS = (*QUERIES, "red_flags_since")  # the last from the feature snapshots: `flags_since`


def details(con, customer_id: str, as_of: pd.Timestamp, timeline: int = 10) -> dict[str, pd.DataFrame]:
    """Every detail list of one customer as of a moment (warehouse connection `con`)."""
    params = {"id": customer_id, "as_of": as_of.to_pydatetime()}
    out = {name: con.execute(sql, params).df() for name, sql in QUERIES.items()}
    out["timeline"] = out["timeline"].head(timeline)
    return out


def flags_since(history: pd.DataFrame) -> pd.DataFrame:
    """For each red flag raised in the latest snapshot: code, description, and the first as-of date of the run
    of snapshots in which it has stayed raised. `history` holds one customer's snapshots (as_of + flag columns)."""
    history = history.sort_values("as_of")
    rows = []
    for name in (n for n in BY_NAME if n.startswith("flag_")):
        raised = history[name].fillna(False).astype(bool).to_numpy()
        if len(raised) and raised[-1]:
            start = len(raised) - (~raised[::-1]).argmax() if (~raised).any() else 0
            rows.append(red_flag(name) | {"since": history["as_of"].iloc[start]})
    return pd.DataFrame(rows, columns=["code", "description", "since"])


def red_flag(name: str) -> dict[str, str]:
    """A red flag feature's code (its name without `flag_`) and plain-words description."""
    return {"code": name.removeprefix("flag_"), "description": BY_NAME[name].description.removeprefix("red flag: ")}
