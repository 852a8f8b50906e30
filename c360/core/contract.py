"""The data contract: every source table c360 accepts, its columns, keys and references.

One declaration serves three readers: the pandera schemas that check each row, the DuckDB tables rows load
into, and the contract page for people loading their own company's exports (`c360 contract`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where rows are checked: with pyspark installed pandera imports pyspark.pandas (1-2 s)
    import pandas as pd
    import pandera.pandas as pa

SEGMENTS = ("consumer", "smb", "enterprise")
REGIONS = ("NA", "EMEA", "APAC", "LATAM")
ROLES = ("admin", "billing", "end_user", "executive_sponsor")
PLANS = ("basic", "pro", "business", "enterprise")
CURRENCIES = ("USD", "EUR", "GBP")
INVOICE_KINDS = ("subscription", "addon")
INVOICE_STATUSES = ("paid", "failed", "refunded", "open")
PAYMENT_STATUSES = ("succeeded", "failed", "refunded")
PAYMENT_METHODS = ("card", "bank_transfer", "paypal")
EVENT_TYPES = ("login", "feature_used", "export", "invite")
PRODUCT_FEATURES = (
    "dashboards", "reports", "automation", "integrations", "api", "mobile", "permissions", "alerts",
)
ACTIVITY_CHANNELS = ("meeting", "phone", "email")
TICKET_CHANNELS = ("email", "phone", "chat", "in_app", "social")
TICKET_TOPICS = ("billing", "bug", "how_to", "integration", "performance", "account")
SEVERITIES = ("low", "normal", "high", "urgent")
TICKET_STATUSES = ("open", "pending", "solved", "closed")
CAMPAIGN_CHANNELS = ("email", "sms", "in_app", "phone", "webinar", "none")
SEND_CHANNELS = tuple(c for c in CAMPAIGN_CHANNELS if c != "none")  # a message's ("none": an experiment's holdout)
CONTENT_TOPICS = ("product_tips", "new_features", "pricing", "training", "events", "case_study")
ACTIONS = ("no_action", "discount", "training_invite", "csm_call")
# What one action costs beyond its effect on revenue; the discount's cost is in the invoices (the outcome).
ACTION_COSTS: dict[str, float] = {"no_action": 0.0, "discount": 0.0, "training_invite": 5.0, "csm_call": 40.0}
SEND_STATUSES = ("sent", "holdout", "bounced")
REQUEST_TOPICS = ("reporting", "integrations", "mobile", "api", "permissions", "automation", "ui")
REQUEST_STATUSES = ("open", "planned", "shipped", "declined")
# What a person consents to, and its words (c360.core.consent)
PURPOSE_WORDS = {"marketing_email": "marketing e-mail", "other_channels": "contact by phone and other channels",
                 "analytics": "analytics"}
PURPOSES = tuple(PURPOSE_WORDS)
CONSENT_STATUSES = ("granted", "withdrawn")
CONSENT_SOURCES = ("signup_form", "unsubscribe_link", "preference_center", "support_request", "import")

KINDS = ("str", "int", "float", "datetime")
# How a table's exports arrive: `snapshot`, each file is the whole table at its moment (a key missing from it was
# deleted at the source); `increment`, each file holds new and changed rows only
ARRIVALS = ("snapshot", "increment")


@dataclass(frozen=True)
class Col:
    name: str
    kind: str = "str"
    required: bool = False
    allowed: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    doc: str = ""


@dataclass(frozen=True)
class Ref:
    column: str
    table: str  # "silo/table" of the parent
    parent_column: str


@dataclass(frozen=True)
class Table:
    silo: str
    name: str
    key: str
    columns: tuple[Col, ...]
    refs: tuple[Ref, ...] = ()
    ordered: tuple[tuple[str, str], ...] = ()  # (earlier, later) datetime columns of one row
    doc: str = ""
    pii: tuple[str, ...] = field(default=())
    arrives: str = "increment"  # how its exports arrive: one of ARRIVALS

    @property
    def id(self) -> str:
        return f"{self.silo}/{self.name}"

    @property
    def sql_name(self) -> str:
        return f"{self.silo}_{self.name}"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def col(self, name: str) -> Col:
        return next(c for c in self.columns if c.name == name)


def _key(name: str, doc: str) -> Col:
    return Col(name, required=True, doc=doc)


def _ts(name: str, required: bool = True, doc: str = "") -> Col:
    return Col(name, "datetime", required=required, doc=doc)


def _enum(name: str, allowed: tuple[str, ...], required: bool = True, doc: str = "") -> Col:
    return Col(name, required=required, allowed=allowed, doc=doc)


def _money(name: str, doc: str) -> Col:
    return Col(name, "float", required=True, min=0, doc=doc)


TABLES: tuple[Table, ...] = (
    Table("crm", "accounts", "account_id", (
        _key("account_id", "CRM account id"),
        Col("account_name", required=True, doc="company name, or the person's name for consumers"),
        _enum("segment", SEGMENTS),
        Col("industry"),
        _enum("region", REGIONS),
        Col("owner", doc="account owner (sales / success rep)"),
        Col("billing_account_id", doc="key of the account in billing, when the CRM knows it"),
        _ts("created_at"),
    ), doc="One row per customer account (a company, or a person for consumer accounts).", arrives="snapshot"),
    Table("crm", "contacts", "contact_id", (
        _key("contact_id", "CRM contact id"),
        Col("account_id", required=True),
        Col("first_name"), Col("last_name"), Col("email"), Col("phone"),
        _enum("role", ROLES),
        Col("title", doc="job title"),
        _ts("created_at"),
        Col("age_band", doc="a consumer's age band, in your own banding (e.g. 18-29); sensitive: used only to "
                            "review models' fairness, never a model input"),
    ), refs=(Ref("account_id", "crm/accounts", "account_id"),),
        doc="People at an account and their role. The same person may appear twice.",
        pii=("first_name", "last_name", "email", "phone", "age_band"), arrives="snapshot"),
    Table("crm", "activities", "activity_id", (
        _key("activity_id", "CRM activity id"),
        Col("account_id", required=True),
        Col("contact_id"),
        _enum("channel", ACTIVITY_CHANNELS),
        Col("topic"),
        _ts("occurred_at"),
    ), refs=(Ref("account_id", "crm/accounts", "account_id"), Ref("contact_id", "crm/contacts", "contact_id")),
        doc="Meetings, calls and e-mails logged by account owners."),
    Table("billing", "customers", "billing_account_id", (
        _key("billing_account_id", "billing system's account key"),
        Col("name", doc="billing contact's name"), Col("email"), Col("phone"),
        Col("company"),
        Col("country"),
        _ts("created_at"),
    ), doc="The billing system's customer records.", pii=("name", "email", "phone"), arrives="snapshot"),
    Table("billing", "subscriptions", "subscription_id", (
        _key("subscription_id", "subscription id"),
        Col("billing_account_id", required=True),
        _enum("plan", PLANS),
        Col("seats", "int", required=True, min=1),
        _money("mrr", "monthly recurring revenue at the latest plan"),
        _ts("started_at"),
        _ts("ended_at", required=False, doc="cancellation date; empty while active"),
        Col("cancel_reason"),
    ), refs=(Ref("billing_account_id", "billing/customers", "billing_account_id"),),
        ordered=(("started_at", "ended_at"),), arrives="snapshot"),
    Table("billing", "plan_changes", "change_id", (
        _key("change_id", "plan change id"),
        Col("subscription_id", required=True),
        _ts("changed_at"),
        _enum("from_plan", PLANS), _enum("to_plan", PLANS),
        Col("from_seats", "int", required=True, min=1), Col("to_seats", "int", required=True, min=1),
    ), refs=(Ref("subscription_id", "billing/subscriptions", "subscription_id"),)),
    Table("billing", "invoices", "invoice_id", (
        _key("invoice_id", "invoice id"),
        Col("billing_account_id", required=True),
        Col("subscription_id", doc="empty for add-on orders"),
        _ts("issued_at"),
        _enum("kind", INVOICE_KINDS),
        _money("amount", "invoice total"),
        _enum("plan", PLANS, required=False, doc="plan billed, on subscription invoices"),
        Col("seats", "int", min=1, doc="seats billed, on subscription invoices"),
        _enum("currency", CURRENCIES),
        _enum("status", INVOICE_STATUSES),
    ), refs=(Ref("billing_account_id", "billing/customers", "billing_account_id"),
             Ref("subscription_id", "billing/subscriptions", "subscription_id"))),
    Table("billing", "payments", "payment_id", (
        _key("payment_id", "payment attempt id"),
        Col("invoice_id", required=True),
        _ts("attempted_at"),
        _money("amount", "amount attempted, or refunded"),
        _enum("status", PAYMENT_STATUSES),
        _enum("method", PAYMENT_METHODS),
        Col("failure_code"),
    ), refs=(Ref("invoice_id", "billing/invoices", "invoice_id"),),
        doc="Payment attempts, including failures and refunds."),
    Table("product", "users", "user_id", (
        _key("user_id", "product user id"),
        Col("workspace_id", required=True, doc="the product's own account key"),
        Col("workspace_name"),
        Col("email"), Col("display_name"),
        _ts("signed_up_at"),
    ), doc="Users of the product; one person may sign up twice.", pii=("email", "display_name")),
    Table("product", "events", "event_id", (
        _key("event_id", "event id"),
        Col("user_id", required=True),
        _ts("event_time"),
        _enum("event_type", EVENT_TYPES),
        _enum("feature", PRODUCT_FEATURES, required=False, doc="the feature used, for feature_used events"),
    ), refs=(Ref("user_id", "product/users", "user_id"),)),
    Table("support", "tickets", "ticket_id", (
        _key("ticket_id", "ticket id"),
        Col("requester_name"), Col("requester_email"), Col("requester_phone"), Col("company"),
        _enum("channel", TICKET_CHANNELS),
        _enum("topic", TICKET_TOPICS),
        _enum("severity", SEVERITIES),
        _enum("status", TICKET_STATUSES),
        _ts("opened_at"),
        _ts("closed_at", required=False),
        Col("satisfaction", "int", min=1, max=5, doc="CSAT 1-5, when the requester answered"),
    ), ordered=(("opened_at", "closed_at"),),
        pii=("requester_name", "requester_email", "requester_phone"), arrives="snapshot"),
    Table("marketing", "contacts", "mkt_contact_id", (
        _key("mkt_contact_id", "marketing platform contact id"),
        Col("email", required=True),
        Col("first_name"), Col("last_name"), Col("company"),
        _ts("subscribed_at"),
    ), pii=("email", "first_name", "last_name")),
    Table("marketing", "campaigns", "campaign_id", (
        _key("campaign_id", "campaign id"),
        Col("name", required=True),
        _enum("channel", CAMPAIGN_CHANNELS),
        _enum("topic", CONTENT_TOPICS),
        _enum("action", ACTIONS, required=False, doc="experiment arm, for randomized experiment campaigns"),
        Col("wave", "int", min=0, doc="experiment wave number"),
        _ts("launched_at"),
    ), doc="Campaigns; experiment arms (incl. the no-action holdout) are campaigns with an action and wave."),
    Table("marketing", "sends", "send_id", (
        _key("send_id", "send id"),
        Col("campaign_id", required=True),
        Col("mkt_contact_id", required=True),
        _enum("status", SEND_STATUSES),
        _ts("sent_at", doc="send time, or assignment time for holdout rows"),
        _ts("opened_at", required=False), _ts("clicked_at", required=False),
        _ts("responded_at", required=False),
    ), refs=(Ref("campaign_id", "marketing/campaigns", "campaign_id"),
             Ref("mkt_contact_id", "marketing/contacts", "mkt_contact_id")),
        ordered=(("sent_at", "opened_at"), ("sent_at", "clicked_at"), ("sent_at", "responded_at"))),
    Table("marketing", "consents", "consent_id", (
        _key("consent_id", "consent change id"),
        Col("mkt_contact_id", required=True),
        _enum("purpose", PURPOSES, doc="marketing_email: marketing e-mail; other_channels: phone, SMS, in-app and "
                                       "other direct contact; analytics: profiling for analytics"),
        _enum("status", CONSENT_STATUSES, doc="granted, or withdrawn (an opt-out or unsubscribe)"),
        _ts("changed_at", doc="when the contact granted or withdrew it"),
        _enum("source", CONSENT_SOURCES, required=False, doc="where the change came from"),
    ), refs=(Ref("mkt_contact_id", "marketing/contacts", "mkt_contact_id"),),
        doc="Consent per contact and purpose, one row per change (granted at sign-up, withdrawn by an "
            "unsubscribe, ...): the latest row before a date is the contact's state then. A contact with no row "
            "for a purpose has not opted out of it."),
    Table("feedback", "nps", "response_id", (
        _key("response_id", "survey response id"),
        Col("email"), Col("name"),
        Col("score", "int", required=True, min=0, max=10),
        Col("comment"),
        _ts("responded_at"),
    ), pii=("email", "name")),
    Table("feedback", "feature_requests", "request_id", (
        _key("request_id", "feature request id"),
        Col("email"), Col("name"),
        _enum("topic", REQUEST_TOPICS),
        Col("title", required=True),
        _enum("status", REQUEST_STATUSES),
        _ts("created_at"),
    ), pii=("email", "name")),
)

BY_ID = {t.id: t for t in TABLES}


@dataclass(frozen=True)
class EventKind:
    """A kind of live event (`POST /events`, `c360 events push`): the contract table whose row it carries, the
    column its time `at` fills, and the columns the kind sets itself. The row is checked by the table's contract,
    as a file's row is. `update`: the event changes a row already there (same key) instead of adding one."""

    name: str
    table: str
    at: str | None
    fixed: tuple[tuple[str, str], ...] = ()
    update: bool = False
    doc: str = ""


EVENT_KINDS: tuple[EventKind, ...] = (
    EventKind("login", "product/events", "event_time", (("event_type", "login"),), doc="a user logged in"),
    EventKind("feature_used", "product/events", "event_time", (("event_type", "feature_used"),),
              doc="a user used a product feature (`feature`)"),
    EventKind("ticket_opened", "support/tickets", "opened_at", doc="a support ticket was opened"),
    EventKind("ticket_updated", "support/tickets", None, update=True,
              doc="a ticket changed (status, severity, ...): the ticket's columns as they are now"),
    EventKind("ticket_closed", "support/tickets", "closed_at", (("status", "closed"),), update=True,
              doc="a ticket was closed"),
    EventKind("payment_succeeded", "billing/payments", "attempted_at", (("status", "succeeded"),)),
    EventKind("payment_failed", "billing/payments", "attempted_at", (("status", "failed"),)),
    EventKind("payment_refunded", "billing/payments", "attempted_at", (("status", "refunded"),)),
    EventKind("plan_changed", "billing/plan_changes", "changed_at", doc="seats or plan changed"),
    EventKind("nps_answered", "feedback/nps", "responded_at", doc="an NPS survey answer"),
    EventKind("feature_requested", "feedback/feature_requests", "created_at"),
    EventKind("campaign_opened", "marketing/sends", "opened_at", update=True, doc="a campaign send was opened"),
    EventKind("campaign_clicked", "marketing/sends", "clicked_at", update=True),
    EventKind("campaign_responded", "marketing/sends", "responded_at", update=True),
    EventKind("unsubscribed", "marketing/consents", "changed_at",
              (("purpose", "marketing_email"), ("status", "withdrawn"), ("source", "unsubscribe_link")),
              doc="a contact unsubscribed from marketing e-mail"),
    # the rest of what a silo's batch carries, so that a stream of events says all a batch of files says
    EventKind("exported", "product/events", "event_time", (("event_type", "export"),), doc="a user exported data"),
    EventKind("invited", "product/events", "event_time", (("event_type", "invite"),),
              doc="a user invited a teammate"),
    EventKind("activity_logged", "crm/activities", "occurred_at",
              doc="an account owner logged a meeting, call or e-mail"),
    EventKind("invoice_issued", "billing/invoices", "issued_at", (("kind", "subscription"),),
              doc="a subscription invoice was issued"),
    EventKind("addon_ordered", "billing/invoices", "issued_at", (("kind", "addon"),),
              doc="an add-on was ordered (its invoice)"),
    EventKind("subscription_ended", "billing/subscriptions", "ended_at", update=True,
              doc="a subscription was cancelled (`cancel_reason`)"),
    EventKind("subscription_changed", "billing/subscriptions", None, update=True,
              doc="a subscription's plan, seats or price changed: its columns as they are now"),
    EventKind("campaign_launched", "marketing/campaigns", "launched_at",
              doc="a campaign was launched (company-wide: it names no customer)"),
    EventKind("campaign_sent", "marketing/sends", "sent_at",
              doc="a campaign was sent to a contact, or the contact held out of an experiment arm"),
    EventKind("consent_changed", "marketing/consents", "changed_at",
              doc="a contact granted or withdrew a purpose (`unsubscribed` is the common withdrawal)"),
)
EVENTS_BY_KIND = {k.name: k for k in EVENT_KINDS}


def table(table_id: str) -> Table:
    try:
        return BY_ID[table_id]
    except KeyError:
        raise KeyError(f"unknown source table {table_id!r}; known: {', '.join(BY_ID)}") from None


def _checks(col: Col) -> list[pa.Check]:
    import pandera.pandas as pa

    checks = []
    if col.allowed:
        checks.append(pa.Check.isin(col.allowed, error=f"not one of {', '.join(col.allowed)}"))
    if col.min is not None:
        checks.append(pa.Check.ge(col.min, error=f"below minimum {col.min:g}"))
    if col.max is not None:
        checks.append(pa.Check.le(col.max, error=f"above maximum {col.max:g}"))
    if col.kind == "str" and col.required:
        checks.append(pa.Check.str_length(min_value=1, error="empty"))
    return checks


PANDERA_DTYPES = {"str": str, "int": "Int64", "float": "float64", "datetime": "datetime64[ns]"}


def _ordered_check(earlier: str, later: str) -> pa.Check:
    import pandera.pandas as pa

    return pa.Check(
        lambda df: df[later].isna() | df[earlier].isna() | (df[later] >= df[earlier]),
        error=f"{later} before {earlier}",
        name=f"{later}>={earlier}",
    )


def passes(table_id: str, typed: pd.DataFrame) -> bool:
    """Whether every row of `typed` (values parsed to their kinds, see ingest.parse) meets the rules `schema` gives
    pandera — required, allowed, minimum, maximum, non-empty text, ordered pairs; a missing value meets all but
    the first — evaluated on each column's Arrow array at once. pandera takes 3–5 ms a table even for a few rows,
    half of taking a batch of live events; only a batch that fails needs its report of each failure."""
    import pyarrow
    import pyarrow.compute as pc

    t = table(table_id)
    arrays = {c.name: pyarrow.array(typed[c.name], from_pandas=True) for c in t.columns}

    def holds(condition: Any) -> bool:  # a missing value meets a rule
        return pc.all(condition).as_py() is not False

    for c in t.columns:
        values = arrays[c.name]
        if c.required and values.null_count:
            return False
        if c.allowed and not holds(pc.or_(pc.is_in(values, value_set=pyarrow.array(c.allowed)), pc.is_null(values))):
            return False
        if c.min is not None and not holds(pc.greater_equal(values, c.min)):
            return False
        if c.max is not None and not holds(pc.less_equal(values, c.max)):
            return False
        if c.kind == "str" and c.required and not holds(pc.greater(pc.utf8_length(values), 0)):
            return False
    return all(holds(pc.greater_equal(arrays[later], arrays[earlier])) for earlier, later in t.ordered)


@cache
def schema(table_id: str) -> pa.DataFrameSchema:
    """Row-level contract of one table, on values already parsed to their kinds (see ingest.parse)."""
    import pandera.pandas as pa

    t = table(table_id)
    columns = {
        c.name: pa.Column(PANDERA_DTYPES[c.kind], _checks(c), nullable=not c.required, description=c.doc)
        for c in t.columns
    }
    checks = [_ordered_check(a, b) for a, b in t.ordered]
    return pa.DataFrameSchema(columns, checks=checks, name=t.id, strict=False)
