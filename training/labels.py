"""What happened after an as-of date: the labels, each defined once, from the warehouse.

A label of as-of T uses only rows dated at or after T (and before T + horizon); the features of T use only rows
before T — so no row is on both sides of a training example.
"""

from __future__ import annotations

import pandas as pd

from c360.core.contract import PLANS
from c360.training.specs import CHURN, CLV, EXPANSION, RESPONSE

CHURN_HORIZON_DAYS = CHURN.horizon_days
CLV_HORIZON_DAYS = CLV.horizon_days
EXPANSION_HORIZON_DAYS = EXPANSION.horizon_days
RESPONSE_HORIZON_DAYS = RESPONSE.horizon_days

SUBSCRIBED = """
billing AS (SELECT source_key AS billing_account_id, customer_id FROM identity_crosswalk
            WHERE source = 'billing/customers'),
subscribed AS (
    SELECT DISTINCT b.customer_id FROM billing_subscriptions s JOIN billing b USING (billing_account_id)
    WHERE s.started_at < $as_of AND (s.ended_at IS NULL OR s.ended_at >= $as_of))"""

# Churn: a customer subscribed at T who cancels within the horizon, or who goes silent — no product activity and
# no paid invoice in the whole horizon.
CHURN_SQL = """
WITH billing AS (SELECT source_key AS billing_account_id, customer_id FROM identity_crosswalk
                 WHERE source = 'billing/customers'),
users AS (SELECT source_key AS user_id, customer_id FROM identity_crosswalk WHERE source = 'product/users'),
subscribed AS (
    SELECT b.customer_id,
        coalesce(bool_or(s.ended_at >= $as_of AND s.ended_at < $end), false) AS cancelled
    FROM billing_subscriptions s JOIN billing b USING (billing_account_id)
    WHERE s.started_at < $as_of AND (s.ended_at IS NULL OR s.ended_at >= $as_of) GROUP BY ALL),
active AS (
    SELECT DISTINCT u.customer_id FROM product_events e JOIN users u USING (user_id)
    WHERE e.event_time >= $as_of AND e.event_time < $end
    UNION
    SELECT DISTINCT b.customer_id FROM billing_invoices i JOIN billing b USING (billing_account_id)
    WHERE i.issued_at >= $as_of AND i.issued_at < $end AND i.status = 'paid')
SELECT s.customer_id, (s.cancelled OR a.customer_id IS NULL) AS churned
FROM subscribed s LEFT JOIN active a USING (customer_id) ORDER BY s.customer_id
"""

# CLV: net revenue (paid invoices less refunds) in the horizon, for every customer subscribed at T.
CLV_SQL = """
WITH """ + SUBSCRIBED + """,
paid AS (  -- a refunded invoice was paid first: its refund is subtracted below
    SELECT b.customer_id, sum(i.amount) AS paid FROM billing_invoices i JOIN billing b USING (billing_account_id)
    WHERE i.issued_at >= $as_of AND i.issued_at < $end AND i.status IN ('paid', 'refunded') GROUP BY ALL),
refunded AS (
    SELECT b.customer_id, sum(p.amount) AS refunded
    FROM billing_payments p JOIN billing_invoices i USING (invoice_id) JOIN billing b USING (billing_account_id)
    WHERE p.attempted_at >= $as_of AND p.attempted_at < $end AND p.status = 'refunded' GROUP BY ALL)
SELECT s.customer_id, coalesce(p.paid, 0) - coalesce(r.refunded, 0) AS value
FROM subscribed s LEFT JOIN paid p USING (customer_id) LEFT JOIN refunded r USING (customer_id)
ORDER BY s.customer_id
"""


# Expansion: a customer subscribed at T who, within the horizon, moves to a higher plan (the contract's PLANS order)
# or more seats, or orders an add-on.
EXPANSION_SQL = """
WITH """ + SUBSCRIBED + """,
plans AS (SELECT * FROM (VALUES """ + ", ".join(f"('{p}', {i})" for i, p in enumerate(PLANS)) + """) v(plan, rank)),
upgraded AS (
    SELECT DISTINCT b.customer_id
    FROM billing_plan_changes c JOIN billing_subscriptions s USING (subscription_id)
    JOIN billing b USING (billing_account_id)
    LEFT JOIN plans old ON old.plan = c.from_plan LEFT JOIN plans new ON new.plan = c.to_plan
    WHERE c.changed_at >= $as_of AND c.changed_at < $end AND (new.rank > old.rank OR c.to_seats > c.from_seats)),
ordered AS (
    SELECT DISTINCT b.customer_id FROM billing_invoices i JOIN billing b USING (billing_account_id)
    WHERE i.issued_at >= $as_of AND i.issued_at < $end AND i.kind = 'addon'),
expanded AS (SELECT customer_id FROM upgraded UNION SELECT customer_id FROM ordered)
SELECT s.customer_id, e.customer_id IS NOT NULL AS expanded
FROM subscribed s LEFT JOIN expanded e USING (customer_id) ORDER BY s.customer_id
"""

# Response: a campaign message to one of the customer's contacts that is clicked or answered within the horizon of
# its sending. Holdout rows were never sent and "none" is no channel; bounced messages count, as a miss.
RESPONSE_SQL = """
WITH contacts AS (SELECT source_key AS mkt_contact_id, customer_id FROM identity_crosswalk
                  WHERE source = 'marketing/contacts')
SELECT k.customer_id, s.sent_at, c.launched_at, c.channel, c.topic,
    coalesce(s.clicked_at < s.sent_at + to_days($days) OR s.responded_at < s.sent_at + to_days($days), false)
        AS responded
FROM marketing_sends s JOIN contacts k USING (mkt_contact_id) JOIN marketing_campaigns c USING (campaign_id)
WHERE s.status <> 'holdout' AND c.channel <> 'none' AND s.sent_at >= $start
    AND s.sent_at + to_days($days) <= $end
ORDER BY s.sent_at, k.customer_id
"""


def _window(as_of: pd.Timestamp, days: int) -> dict:
    return {"as_of": as_of.to_pydatetime(), "end": (as_of + pd.Timedelta(days=days)).to_pydatetime()}


def labelable(as_of: pd.Timestamp, data_end: pd.Timestamp, horizon_days: int) -> bool:
    """A label needs its whole horizon inside the data."""
    return as_of + pd.Timedelta(days=horizon_days) <= data_end


def churn(con, as_of: pd.Timestamp, horizon_days: int = CHURN_HORIZON_DAYS) -> pd.DataFrame:
    """customer_id, churned — for customers subscribed at `as_of`."""
    return con.execute(CHURN_SQL, _window(as_of, horizon_days)).df()


def clv(con, as_of: pd.Timestamp, horizon_days: int = CLV_HORIZON_DAYS) -> pd.DataFrame:
    """customer_id, value (net revenue in the horizon) — for customers subscribed at `as_of`."""
    return con.execute(CLV_SQL, _window(as_of, horizon_days)).df()


def expansion(con, as_of: pd.Timestamp, horizon_days: int = EXPANSION_HORIZON_DAYS) -> pd.DataFrame:
    """customer_id, expanded (plan upgrade, seat increase or add-on order in the horizon) — for customers
    subscribed at `as_of`."""
    return con.execute(EXPANSION_SQL, _window(as_of, horizon_days)).df()


def response(con, start: pd.Timestamp, end: pd.Timestamp, horizon_days: int = RESPONSE_HORIZON_DAYS
             ) -> pd.DataFrame:
    """customer_id, sent_at, launched_at, channel, topic, responded (clicked or answered within the horizon) — for
    every campaign message sent from `start` whose horizon ends by `end`."""
    return con.execute(RESPONSE_SQL, {"start": start.to_pydatetime(), "end": end.to_pydatetime(),
                                      "days": horizon_days}).df()
