"""Customer features as of a moment, computed in DuckDB from the warehouse and the identity crosswalk.

Every feature of an as-of snapshot uses only what happened strictly before it: events are filtered on their own
timestamps, and state that changes (a ticket's status, a subscription's plan) is rebuilt from the timestamps of
its changes, not read from the row's current value (a contact's consent too: its latest change before T). Each
source table is read as it was at T (`versions.as_of`): the versions of its rows valid then, so a row changed or
deleted at the source since is seen as it was. Each
feature has a plain-words description in FEATURES, used by the Feast definitions and to turn model explanations
into reasons.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from functools import cache

import pandas as pd

from c360.core.consent import feature
from c360.core.contract import PLANS, PURPOSES, TABLES
from c360.core.definitions import BY_NAME
from c360.features import versions

CHANNELS = ("email", "phone", "chat", "in_app", "meeting", "social")
OWNER = "c360_owner"  # `build_each`: the customer a row reaches, a column of each table it reads
HEALTH_WEIGHTS = {"usage": 0.35, "engagement": 0.15, "support": 0.15, "sentiment": 0.15, "billing": 0.2}



def _rank(column: str) -> str:
    """A plan's position in PLANS, in SQL, so up- and downgrades can be told apart."""
    return f"list_position({list(PLANS)}, {column})"


def _as_of_tables(body: str) -> str:
    """`body` (the CTEs after WITH, then the query) reading each contract table it names as it was at $as_of."""
    named = [t for t in TABLES if re.search(rf"\b{t.sql_name}\b", body)]
    return "WITH\n" + ",\n".join(versions.as_of(t) for t in named) + ",\n" + body


# Every source row reaches its customer through the crosswalk record of its identity-bearing row.
SQL = _as_of_tables(f"""
base AS (SELECT customer_id, segment, region FROM identity_customers WHERE first_seen < $as_of),
events AS (
    SELECT x.customer_id, e.user_id, e.event_time, e.event_type, e.feature
    FROM product_events e JOIN identity_crosswalk x ON x.record_id = 'product/users:' || e.user_id
    WHERE e.event_time < $as_of AND e.event_time >= $as_of - INTERVAL 90 DAY),
users AS (
    SELECT x.customer_id, count(*) AS product_users
    FROM product_users u JOIN identity_crosswalk x ON x.record_id = 'product/users:' || u.user_id
    WHERE u.signed_up_at < $as_of GROUP BY ALL),
history AS (
    SELECT x.customer_id, max(e.event_time) AS happened, count(DISTINCT e.feature) AS features_used_total,
        count(*) FILTER (WHERE e.event_type = 'login' AND e.event_time >= $as_of - INTERVAL 365 DAY) AS sessions_12m
    FROM product_events e JOIN identity_crosswalk x ON x.record_id = 'product/users:' || e.user_id
    WHERE e.event_time < $as_of GROUP BY ALL),
activity AS (
    SELECT customer_id,
        count(DISTINCT CASE WHEN event_time >= $as_of - INTERVAL 7 DAY THEN event_time::DATE END) AS active_days_7d,
        count(DISTINCT CASE WHEN event_time >= $as_of - INTERVAL 30 DAY THEN event_time::DATE END) AS active_days_30d,
        count(DISTINCT event_time::DATE) AS active_days_90d,
        count(DISTINCT CASE WHEN event_time < $as_of - INTERVAL 30 DAY AND event_time >= $as_of - INTERVAL 60 DAY
              THEN event_time::DATE END) AS active_days_prev_30d,
        count(*) FILTER (WHERE event_type = 'login' AND event_time >= $as_of - INTERVAL 30 DAY) AS sessions_30d,
        count(*) FILTER (WHERE event_type = 'login') AS sessions_90d,
        count(DISTINCT feature) AS features_used_90d,
        count(DISTINCT CASE WHEN event_time >= $as_of - INTERVAL 30 DAY THEN user_id END) AS active_users_30d
    FROM events GROUP BY ALL),
contacts_made AS (
    SELECT x.customer_id, t.channel, t.opened_at AS happened
    FROM support_tickets t JOIN identity_crosswalk x ON x.record_id = 'support/tickets:' || t.ticket_id
    WHERE t.opened_at < $as_of
    UNION ALL
    SELECT x.customer_id, a.channel, a.occurred_at
    FROM crm_activities a JOIN identity_crosswalk x ON x.record_id = 'crm/accounts:' || a.account_id
    WHERE a.occurred_at < $as_of),
interactions AS (
    SELECT customer_id,
        {", ".join(f"count(*) FILTER (WHERE channel = '{c}' AND happened >= $as_of - INTERVAL 90 DAY) "
                   f"AS contacts_{c}_90d" for c in CHANNELS)},
        max(happened) AS last_contact
    FROM contacts_made GROUP BY ALL),
campaigns AS (
    SELECT x.customer_id,
        count(*) FILTER (WHERE s.status = 'sent') AS campaigns_sent_180d,
        count(s.opened_at) FILTER (WHERE s.opened_at < $as_of) AS campaigns_opened_180d,
        count(s.clicked_at) FILTER (WHERE s.clicked_at < $as_of) AS campaigns_clicked_180d,
        count(s.responded_at) FILTER (WHERE s.responded_at < $as_of) AS campaigns_responded_180d
    FROM marketing_sends s JOIN identity_crosswalk x ON x.record_id = 'marketing/contacts:' || s.mkt_contact_id
    WHERE s.sent_at < $as_of AND s.sent_at >= $as_of - INTERVAL 180 DAY GROUP BY ALL),
requests AS (
    SELECT x.customer_id, count(*) AS feature_requests_total,
        count(*) FILTER (WHERE r.created_at >= $as_of - INTERVAL 90 DAY) AS feature_requests_90d
    FROM feedback_feature_requests r
    JOIN identity_crosswalk x ON x.record_id = 'feedback/feature_requests:' || r.request_id
    WHERE r.created_at < $as_of GROUP BY ALL),
accounts AS (
    SELECT b.billing_account_id, x.customer_id
    FROM billing_customers b JOIN identity_crosswalk x ON x.record_id = 'billing/customers:' || b.billing_account_id),
subscription AS (
    SELECT a.customer_id, min(s.started_at) AS started,
        bool_or(s.ended_at IS NULL OR s.ended_at >= $as_of) AS subscribed,
        arg_max(s.subscription_id, s.started_at) AS subscription_id
    FROM billing_subscriptions s JOIN accounts a USING (billing_account_id)
    WHERE s.started_at < $as_of GROUP BY ALL),
changes AS (
    SELECT s.customer_id,
        count(*) FILTER (WHERE c.changed_at < $as_of AND c.changed_at >= $as_of - INTERVAL 180 DAY
                         AND ({_rank('c.to_plan')} < {_rank('c.from_plan')} OR c.to_seats < c.from_seats))
            AS downgrades_180d,
        count(*) FILTER (WHERE c.changed_at < $as_of AND c.changed_at >= $as_of - INTERVAL 180 DAY
                         AND ({_rank('c.to_plan')} > {_rank('c.from_plan')} OR c.to_seats > c.from_seats))
            AS upgrades_180d,
        count(*) FILTER (WHERE c.changed_at < $as_of AND c.changed_at >= $as_of - INTERVAL 90 DAY
                         AND ({_rank('c.to_plan')} < {_rank('c.from_plan')} OR c.to_seats < c.from_seats))
            AS downgrades_90d
    FROM subscription s JOIN billing_plan_changes c USING (subscription_id) GROUP BY ALL),
invoices AS (
    SELECT a.customer_id,
        sum(i.amount) FILTER (WHERE i.status = 'paid') AS revenue_total,
        sum(i.amount) FILTER (WHERE i.status = 'paid' AND i.issued_at >= $as_of - INTERVAL 365 DAY) AS revenue_12m,
        sum(i.amount) FILTER (WHERE i.status = 'paid' AND i.issued_at >= $as_of - INTERVAL 90 DAY) AS revenue_90d,
        count(*) FILTER (WHERE i.kind = 'addon' AND i.issued_at >= $as_of - INTERVAL 365 DAY)
            AS orders_12m,
        max(i.issued_at) FILTER (WHERE i.status = 'paid') AS last_purchase,
        arg_max(i.amount, i.issued_at) FILTER (WHERE i.kind = 'subscription') AS mrr,
        -- plan and seats as billed last: the subscription row itself only knows today's
        arg_max(i.plan, i.issued_at) FILTER (WHERE i.kind = 'subscription') AS plan,
        arg_max(i.seats, i.issued_at) FILTER (WHERE i.kind = 'subscription') AS seats
    FROM billing_invoices i JOIN accounts a USING (billing_account_id)
    WHERE i.issued_at < $as_of GROUP BY ALL),
payments AS (
    SELECT a.customer_id,
        count(*) FILTER (WHERE p.status = 'failed' AND p.attempted_at >= $as_of - INTERVAL 90 DAY)
            AS payment_failures_90d,
        count(*) FILTER (WHERE p.status = 'failed' AND p.attempted_at >= $as_of - INTERVAL 30 DAY)
            AS payment_failures_30d,
        count(*) FILTER (WHERE p.status = 'failed' AND p.attempted_at >= $as_of - INTERVAL 365 DAY)
            AS payment_failures_12m,
        count(*) FILTER (WHERE p.status = 'refunded' AND p.attempted_at >= $as_of - INTERVAL 365 DAY) AS refunds_12m
    FROM billing_payments p JOIN billing_invoices i USING (invoice_id) JOIN accounts a USING (billing_account_id)
    WHERE p.attempted_at < $as_of GROUP BY ALL),
support AS (
    SELECT x.customer_id,
        count(*) FILTER (WHERE t.opened_at >= $as_of - INTERVAL 90 DAY) AS tickets_90d,
        count(*) FILTER (WHERE t.opened_at >= $as_of - INTERVAL 365 DAY) AS tickets_12m,
        count(*) FILTER (WHERE t.closed_at IS NULL OR t.closed_at >= $as_of) AS open_tickets,
        count(*) FILTER (WHERE (t.closed_at IS NULL OR t.closed_at >= $as_of) AND t.severity IN ('high', 'urgent'))
            AS open_high_severity_tickets,
        avg(t.satisfaction) FILTER (WHERE t.closed_at < $as_of AND t.closed_at >= $as_of - INTERVAL 180 DAY)
            AS csat_180d,
        max(t.opened_at) AS last_ticket
    FROM support_tickets t JOIN identity_crosswalk x ON x.record_id = 'support/tickets:' || t.ticket_id
    WHERE t.opened_at < $as_of GROUP BY ALL),
nps AS (
    SELECT x.customer_id, arg_max(n.score, n.responded_at) AS nps_last,
        avg(n.score) FILTER (WHERE n.responded_at >= $as_of - INTERVAL 365 DAY) AS nps_avg_12m
    FROM feedback_nps n JOIN identity_crosswalk x ON x.record_id = 'feedback/nps:' || n.response_id
    WHERE n.responded_at < $as_of GROUP BY ALL),
people AS (
    SELECT x.customer_id, count(*) AS contacts, count(*) FILTER (WHERE c.role = 'admin') AS admin_contacts,
        bool_or(c.role = 'executive_sponsor') AS has_executive_sponsor
    FROM crm_contacts c JOIN identity_crosswalk x ON x.record_id = 'crm/contacts:' || c.contact_id
    WHERE c.created_at < $as_of GROUP BY ALL),
listed AS (
    SELECT x.customer_id, c.mkt_contact_id
    FROM marketing_contacts c JOIN identity_crosswalk x ON x.record_id = 'marketing/contacts:' || c.mkt_contact_id
    WHERE c.subscribed_at < $as_of),
consent_state AS (  -- each contact's latest change per purpose
    SELECT mkt_contact_id, purpose, arg_max(status, changed_at) AS status
    FROM marketing_consents WHERE changed_at < $as_of GROUP BY ALL),
consent AS (
    SELECT l.customer_id, count(DISTINCT l.mkt_contact_id) AS listed,
        {", ".join(f"count(DISTINCT l.mkt_contact_id) FILTER (WHERE s.purpose = '{p}' AND s.status = 'withdrawn') "
                   f"AS withdrawn_{p}" for p in PURPOSES)}
    FROM listed l LEFT JOIN consent_state s USING (mkt_contact_id) GROUP BY ALL)
SELECT b.customer_id, $as_of AS as_of, b.segment, b.region,
    coalesce(a.active_days_7d, 0) AS active_days_7d, coalesce(a.active_days_30d, 0) AS active_days_30d,
    coalesce(a.active_days_90d, 0) AS active_days_90d, coalesce(a.active_days_prev_30d, 0) AS active_days_prev_30d,
    coalesce(a.sessions_30d, 0) AS sessions_30d, coalesce(a.features_used_90d, 0) AS features_used_90d,
    coalesce(a.active_users_30d, 0) AS active_users_30d, coalesce(u.product_users, 0) AS product_users,
    coalesce(h.features_used_total, 0) AS features_used_total,
    coalesce(a.sessions_30d, 0) / greatest(u.product_users, 1) AS logins_per_user_30d,
    coalesce(a.sessions_90d, 0) / greatest(u.product_users, 1) AS logins_per_user_90d,
    coalesce(h.sessions_12m, 0) / greatest(u.product_users, 1) AS logins_per_user_12m,
    date_diff('day', h.happened, $as_of) AS days_since_last_activity,
    {", ".join(f"coalesce(i.contacts_{c}_90d, 0) AS contacts_{c}_90d" for c in CHANNELS)},
    date_diff('day', i.last_contact, $as_of) AS days_since_last_contact,
    {", ".join(f"coalesce(m.campaigns_{k}_180d, 0) AS campaigns_{k}_180d"
               for k in ("sent", "opened", "clicked", "responded"))},
    coalesce(r.feature_requests_total, 0) AS feature_requests_total,
    coalesce(r.feature_requests_90d, 0) AS feature_requests_90d,
    date_diff('day', s.started, $as_of) AS tenure_days, coalesce(s.subscribed, false) AS subscribed,
    v.plan, v.seats, coalesce(ch.downgrades_180d, 0) AS downgrades_180d,
    coalesce(ch.upgrades_180d, 0) AS upgrades_180d, coalesce(ch.downgrades_90d, 0) AS downgrades_90d,
    coalesce(v.mrr, 0) AS mrr, coalesce(v.revenue_total, 0) AS revenue_total, coalesce(v.revenue_12m, 0) AS revenue_12m,
    coalesce(v.revenue_90d, 0) AS revenue_90d, coalesce(v.orders_12m, 0) AS orders_12m,
    date_diff('day', v.last_purchase, $as_of) AS days_since_last_purchase,
    coalesce(p.payment_failures_90d, 0) AS payment_failures_90d,
    coalesce(p.payment_failures_30d, 0) AS payment_failures_30d,
    coalesce(p.payment_failures_12m, 0) AS payment_failures_12m, coalesce(p.refunds_12m, 0) AS refunds_12m,
    coalesce(t.tickets_90d, 0) AS tickets_90d, coalesce(t.tickets_12m, 0) AS tickets_12m,
    coalesce(t.open_tickets, 0) AS open_tickets,
    coalesce(t.open_high_severity_tickets, 0) AS open_high_severity_tickets, t.csat_180d,
    date_diff('day', t.last_ticket, $as_of) AS days_since_last_ticket,
    n.nps_last::DOUBLE AS nps_last, n.nps_avg_12m,
    coalesce(pe.contacts, 0) AS contacts, coalesce(pe.admin_contacts, 0) AS admin_contacts,
    coalesce(pe.has_executive_sponsor, false) AS has_executive_sponsor,
    {", ".join(f"coalesce(co.withdrawn_{p} = co.listed, false) AS {feature(p)}" for p in PURPOSES)}
FROM base b
LEFT JOIN activity a USING (customer_id) LEFT JOIN users u USING (customer_id)
LEFT JOIN history h USING (customer_id)
LEFT JOIN interactions i USING (customer_id) LEFT JOIN campaigns m USING (customer_id)
LEFT JOIN requests r USING (customer_id) LEFT JOIN subscription s USING (customer_id)
LEFT JOIN changes ch USING (customer_id) LEFT JOIN invoices v USING (customer_id)
LEFT JOIN payments p USING (customer_id) LEFT JOIN support t USING (customer_id)
LEFT JOIN nps n USING (customer_id) LEFT JOIN people pe USING (customer_id)
LEFT JOIN consent co USING (customer_id)
ORDER BY b.customer_id
""")


def experiment_dates(con) -> list[pd.Timestamp]:
    """The launch dates of the experiment waves: campaigns with an action and a wave (the next best action's
    examples are described as of these dates)."""
    rows = con.execute("SELECT DISTINCT launched_at FROM marketing_campaigns WHERE action IS NOT NULL "
                       "AND wave IS NOT NULL AND launched_at IS NOT NULL ORDER BY 1").fetchall()
    return [pd.Timestamp(r[0]) for r in rows]


def as_of_dates(con, end: pd.Timestamp, as_of: date | None, history_days: int,
                every_days: int, launches: Iterable[pd.Timestamp] = ()) -> list[pd.Timestamp]:
    """The snapshots the features stage builds: the requested date alone; or every `every_days` back over
    `history_days` up to `end`, and every experiment wave and campaign (`launches`, the decision log's
    `campaigns.launch_dates`) launched before `end` — training reads the snapshots it needs, it never writes one."""
    if as_of:
        return [pd.Timestamp(as_of)]
    grid = {end - pd.Timedelta(days=d) for d in range(0, history_days + 1, every_days)}
    return sorted(grid | {day for day in [*experiment_dates(con), *launches] if day <= end})


def build(con, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per customer known before `as_of`: every feature of FEATURES, from data strictly before it."""
    return finish(con.execute(SQL, {"as_of": pd.Timestamp(as_of).to_pydatetime()}).df())


def finish(raw: pd.DataFrame) -> pd.DataFrame:
    """The snapshot of SQL's result `raw`: the derived features added, the columns in FEATURES' order."""
    return derive(raw)[["customer_id", "as_of", *BY_NAME]]


@cache
def each_sql(clock: str) -> str:
    """SQL with each customer at its own as-of: `clock` names a table (customer_id, as_of); one row per customer of
    it known before its as-of. Every contract table it reads carries `OWNER`, the customer its rows reach. One run
    for all (a lateral join), not one per as-of; `finish` makes the snapshot of its result."""
    body = SQL.replace("$as_of", f"{clock}.as_of")
    # Each customer's own crosswalk records, golden record and rows, so the lateral join pairs a customer's rows
    # with its own as-of only: the tables' versions at an as-of would otherwise pair every row with every as-of.
    for table in ("identity_crosswalk", "identity_customers"):
        body = re.sub(rf"\b{table}\b", f"(SELECT * FROM {table} WHERE customer_id = {clock}.customer_id)", body)
    for name in (n for t in TABLES for n in (t.sql_name, versions.history(t))):
        body = body.replace(f"FROM {versions.q(name)}", f"FROM (SELECT * EXCLUDE ({OWNER}) FROM {versions.q(name)} "
                                                         f"WHERE {OWNER} = {clock}.customer_id)")
    return (f"SELECT f.* FROM {clock}, LATERAL ({body}) f WHERE f.customer_id = {clock}.customer_id "
            "ORDER BY f.customer_id")


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Trend, red flags, health and lifecycle stage from the counted features."""
    df = df.copy()
    df["usage_trend"] = (df["active_days_30d"] - df["active_days_prev_30d"]) / df["active_days_prev_30d"].clip(lower=1)
    quiet = lambda days: days.isna() | (days > 30)  # noqa: E731
    flags = {
        "flag_usage_drop": (df["active_days_prev_30d"] >= 4)
        & (df["active_days_30d"] <= df["active_days_prev_30d"] / 2),
        "flag_payment_failed": df["payment_failures_30d"] > 0,
        "flag_open_high_severity": df["open_high_severity_tickets"] > 0,
        "flag_detractor": df["nps_last"] <= 6,
        "flag_silence": df["subscribed"] & quiet(df["days_since_last_activity"]) & quiet(df["days_since_last_contact"]),
        "flag_downgrade": df["downgrades_90d"] > 0,
    }
    for name, flag in flags.items():
        df[name] = flag.fillna(False).astype(bool)
    df["red_flags"] = df[list(flags)].sum(axis=1).astype(int)
    df = df.assign(**health(df))
    df["health_band"] = pd.cut(df["health_score"], [-1, 40, 70, 101], labels=["poor", "fair", "good"]).astype(str)
    df["lifecycle_stage"] = lifecycle(df)
    return df


def _share(values: pd.Series, full: float) -> pd.Series:
    return (values.fillna(0) / full).clip(0, 1)


def health(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Health components, each 0-100, and their weighted mean (weights in HEALTH_WEIGHTS)."""
    open_rate = df["campaigns_opened_180d"] / df["campaigns_sent_180d"].where(df["campaigns_sent_180d"] > 0)
    nps = df["nps_last"] * 10
    csat = (df["csat_180d"] - 1) * 25
    parts = {
        "usage": 70 * _share(df["active_days_30d"], 12) + 30 * _share(df["features_used_90d"], 5),
        "engagement": (60 * open_rate.fillna(0.5) + 40 * _share(df["campaigns_clicked_180d"], 2)),
        "support": (100 - 25 * df["open_tickets"] - 25 * df["open_high_severity_tickets"]).clip(0, 100),
        "sentiment": pd.concat([nps, csat], axis=1).mean(axis=1).fillna(50),
        "billing": 100 - 40 * _share(df["payment_failures_90d"], 1) - 30 * _share(df["downgrades_180d"], 1)
        - 10 * _share(df["refunds_12m"], 1),
    }
    out = {f"health_{k}": v.astype(float).round(1) for k, v in parts.items()}
    out["health_score"] = sum(HEALTH_WEIGHTS[k] * out[f"health_{k}"] for k in parts).round(1)
    return out


def lifecycle(df: pd.DataFrame) -> pd.Series:
    tenure = df["tenure_days"].fillna(0)
    stage = pd.Series("established", index=df.index)
    stage[tenure < 180] = "adopting"
    stage[(df["red_flags"] >= 2) | (df["health_score"] < 40)] = "at risk"
    stage[tenure < 60] = "onboarding"
    stage[~df["subscribed"]] = "lapsed"
    return stage
