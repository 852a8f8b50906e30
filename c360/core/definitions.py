"""The feature definitions: every customer feature's name, profile section, type and plain-words description.

One table drives the Feast views (`feature_repo`), the computation's column order (`features.compute`), the API's
row models, the reasons' words and the README's feature table.
"""

from __future__ import annotations

from dataclasses import dataclass

from c360.core.contract import PURPOSE_WORDS


@dataclass(frozen=True)
class Feature:
    name: str
    section: str  # profile section / Feast feature view (activity, interactions, ..., health, consent)
    dtype: str  # int, float, str, bool
    description: str


def _f(section: str, dtype: str, *rows: tuple[str, str]) -> list[Feature]:
    return [Feature(name, section, dtype, doc) for name, doc in rows]


FEATURES: tuple[Feature, ...] = tuple([
    *_f("activity", "int",
        ("active_days_7d", "days with product activity in the last 7 days"),
        ("active_days_30d", "days with product activity in the last 30 days"),
        ("active_days_90d", "days with product activity in the last 90 days"),
        ("sessions_30d", "logins in the last 30 days"),
        ("features_used_90d", "distinct product features used in the last 90 days"),
        ("features_used_total", "distinct product features ever used"),
        ("active_users_30d", "people active in the product in the last 30 days"),
        ("product_users", "people with a product login"),
        ("days_since_last_activity", "days since the last product activity")),
    *_f("activity", "float",
        ("logins_per_user_30d", "logins per person with a product login in the last 30 days"),
        ("logins_per_user_90d", "logins per person with a product login in the last 90 days"),
        ("logins_per_user_12m", "logins per person with a product login in the last 12 months"),
        ("usage_trend", "change in active days, last 30 days against the 30 before (-1 = stopped, +1 = doubled)")),
    *_f("interactions", "int",
        ("contacts_email_90d", "e-mail contacts (tickets and CRM) in the last 90 days"),
        ("contacts_phone_90d", "phone contacts in the last 90 days"),
        ("contacts_chat_90d", "chat contacts in the last 90 days"),
        ("contacts_in_app_90d", "in-app contacts in the last 90 days"),
        ("contacts_meeting_90d", "meetings in the last 90 days"),
        ("contacts_social_90d", "social media contacts in the last 90 days"),
        ("days_since_last_contact", "days since the last contact on any channel")),
    *_f("campaigns", "int",
        ("campaigns_sent_180d", "campaign messages sent in the last 180 days"),
        ("campaigns_opened_180d", "campaign messages opened in the last 180 days"),
        ("campaigns_clicked_180d", "campaign messages clicked in the last 180 days"),
        ("campaigns_responded_180d", "campaign responses in the last 180 days"),
        ("feature_requests_total", "feature requests made"),
        ("feature_requests_90d", "feature requests made in the last 90 days")),
    *_f("billing", "int",
        ("tenure_days", "days since the first subscription started"),
        ("seats", "seats billed on the latest subscription invoice"),
        ("orders_12m", "add-on orders in the last 12 months"),
        ("days_since_last_purchase", "days since the last paid invoice"),
        ("payment_failures_90d", "failed payment attempts in the last 90 days"),
        ("payment_failures_12m", "failed payment attempts in the last 12 months"),
        ("refunds_12m", "refunds in the last 12 months"),
        ("downgrades_180d", "plan or seat downgrades in the last 180 days"),
        ("upgrades_180d", "plan or seat upgrades in the last 180 days")),
    *_f("billing", "float",
        ("mrr", "monthly recurring revenue (latest subscription invoice)"),
        ("revenue_total", "revenue paid to date"),
        ("revenue_12m", "revenue paid in the last 12 months"),
        ("revenue_90d", "revenue paid in the last 90 days")),
    *_f("billing", "str", ("plan", "plan billed on the latest subscription invoice")),
    *_f("support", "int",
        ("tickets_90d", "support tickets opened in the last 90 days"),
        ("tickets_12m", "support tickets opened in the last 12 months"),
        ("open_tickets", "support tickets open"),
        ("open_high_severity_tickets", "high or urgent support tickets open"),
        ("days_since_last_ticket", "days since the last support ticket")),
    *_f("support", "float",
        ("csat_180d", "average satisfaction (1-5) of tickets closed in the last 180 days"),
        ("nps_last", "latest NPS answer (0-10)"),
        ("nps_avg_12m", "average NPS answer (0-10) in the last 12 months")),
    *_f("status", "str",
        ("segment", "customer segment"),
        ("region", "region"),
        ("lifecycle_stage", "lifecycle stage: onboarding, adopting, established, at risk or lapsed")),
    *_f("status", "int",
        ("contacts", "known contacts at the customer"),
        ("admin_contacts", "contacts with the admin role"),
        ("red_flags", "number of red flags raised")),
    *_f("status", "bool",
        ("subscribed", "has an active subscription"),
        ("has_executive_sponsor", "an executive sponsor is among the contacts"),
        ("flag_usage_drop", "red flag: active days fell by half or more in the last 30 days"),
        ("flag_payment_failed", "red flag: a payment failed in the last 30 days"),
        ("flag_open_high_severity", "red flag: a high or urgent ticket is open"),
        ("flag_detractor", "red flag: latest NPS answer is 6 or below"),
        ("flag_silence", "red flag: no product activity or contact in the last 30 days"),
        ("flag_downgrade", "red flag: downgraded in the last 90 days")),
    *_f("health", "float",
        ("health_score", "health 0-100: weighted mean of the usage, engagement, support, sentiment and billing "
                         "components"),
        ("health_usage", "health component 0-100 from active days and breadth of use"),
        ("health_engagement", "health component 0-100 from campaign and contact engagement"),
        ("health_support", "health component 0-100: fewer and less severe open tickets score higher"),
        ("health_sentiment", "health component 0-100 from NPS and satisfaction"),
        ("health_billing", "health component 0-100: payment failures and downgrades lower it")),
    *_f("health", "str", ("health_band", "health band: good (70+), fair (40-70) or poor (below 40)")),
    # For the profile only (feature_repo.services keeps them out of the models): see c360.core.consent.
    *_f("consent", "bool", *((f"opted_out_{p}", f"opted out of {words}: every marketing contact withdrew it, or "
                                                "c360 privacy opt-out") for p, words in PURPOSE_WORDS.items())),
])
BY_NAME = {f.name: f for f in FEATURES}
