"""Request and response models of the c360 service (the OpenAPI document is generated from these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from c360.core.definitions import BY_NAME, FEATURES
from c360.core.warehouse import CUSTOMER_ID
from c360.features.details import LISTS
from c360.features.event_log import MAX_BATCH as MAX_EVENTS
from c360.features.profile import PAST, PRESENT, label
from c360.training.specs import MODELS

T = TypeVar("T")
MAX_BATCH = 100


class ModelInfo(BaseModel):
    name: str = Field(description="registered model name, e.g. c360-churn")
    version: int = Field(description="registered model version that answered")
    source: Literal["batch", "live"] = Field(description="batch: scored by the latest `c360 score` run; live: "
                                                         "by the live update of the customer's latest events, or "
                                                         "for this request")
    scored_at: str | None = Field(description="when the prediction was computed (ISO 8601, UTC)")
    features_as_of: str | None = Field(description="as-of date of the features the model read")


class Reason(BaseModel):
    feature: str
    description: str = Field(description="what the feature means, in plain words")
    value: str | None = Field(description="the customer's value of the feature")
    contribution: float = Field(description="LightGBM pred_contrib (tree SHAP) of the feature, in the model's "
                                            "output scale: log-odds (churn, expansion), log value (CLV), "
                                            "dollars (action)")
    direction: Literal["raises", "lowers"]
    text: str


class Churn(BaseModel):
    probability: float | None = Field(description="probability of churning within the horizon")
    band: str | None = Field(description="risk band: low (< 10 %), medium (< 25 %), high")
    horizon_days: int
    reasons: list[Reason]
    model: ModelInfo


class Clv(BaseModel):
    value_12m: float | None = Field(description="expected net revenue over the next 12 months")
    low: float | None = Field(description="lower end of the 80 % range")
    high: float | None = Field(description="upper end of the 80 % range")
    range: str
    horizon_days: int
    reasons: list[Reason] = Field(description="the value's main drivers")
    model: ModelInfo


class Expansion(BaseModel):
    available: bool = Field(description="false when the home has no c360-expansion champion (trained before it "
                                        "existed): the other predictions still answer")
    probability: float | None = Field(description="probability of expanding within the horizon: a plan upgrade, a "
                                                  "seat increase or an add-on order (account scoring: rank by it)")
    horizon_days: int
    reasons: list[Reason] = Field(description="why the probability is what it is")
    model: ModelInfo | None
    unavailable: str | None = Field(default=None, description="why there is no prediction, and what adds it")


class ResponseChannel(BaseModel):
    channel: str = Field(description="campaign channel")
    topic: str = Field(description="the content topic most likely to get a response on it")
    probability: float = Field(description="probability of a click or response to that channel and topic")


class Response(BaseModel):
    available: bool = Field(description="false when the home has no c360-response champion (trained before it "
                                        "existed): the other predictions still answer")
    probability: float | None = Field(description="probability that a message of the best channel and topic is "
                                                  "clicked or answered within the horizon")
    channel: str | None = Field(default=None, description="the campaign channel most likely to get a response")
    topic: str | None = Field(default=None, description="the content topic most likely to get a response on it")
    channels: list[ResponseChannel] = Field(default_factory=list,
                                            description="each channel's best topic, most likely first")
    horizon_days: int
    reasons: list[Reason] = Field(description="why the best pair's probability is what it is")
    model: ModelInfo | None
    unavailable: str | None = Field(default=None, description="why there is no prediction, and what adds it")


class Alternative(BaseModel):
    action: str
    uplift: float | None = Field(description="expected net uplift over no action (after the action's cost)")


class NotProposed(BaseModel):
    action: str
    purpose: str = Field(description="the consent purpose the action needs (c360.core.consent.ACTION_PURPOSE)")
    reason: str = Field(description="why it was not proposed, e.g. \"discount not proposed: opted out of "
                                    "marketing e-mail\"")


class NextBestAction(BaseModel):
    action: str | None = Field(description="recommended action among those the customer's consent allows; "
                                            "no_action when nothing allowed pays for its cost")
    uplift: float | None = Field(description="expected net uplift of the action over no action, in dollars")
    alternatives: list[Alternative] = Field(description="the other actions, best first")
    not_proposed: list[NotProposed] = Field(default_factory=list, description="better actions withheld because "
                                            "the customer opted out of the purpose they need")
    horizon_days: int
    reasons: list[Reason] = Field(description="why the action's uplift is what it is (for no_action: the best "
                                              "alternative's)")
    model: ModelInfo


class Signal(BaseModel):
    source: Literal["batch", "live"]
    scored_at: str | None


class NextFeature(Signal):
    feature: str | None = Field(description="product feature most likely adopted next")
    score: float | None = Field(description="P(uses it | uses the customer's features), or its adoption rate")
    method: str | None = Field(description="co-occurrence, or popularity for customers using no feature yet")


class Topic(BaseModel):
    topic: str
    lift: float = Field(description="smoothed engagement rate over the population's rate for the topic")
    engaged: int = Field(description="clicks and responses on the topic in the last 365 days")


class ContentInterest(Signal):
    topics: list[Topic]


class Retargeting(BaseModel):
    interested: bool
    why: str


class Advocate(BaseModel):
    candidate: bool
    met: list[str]
    not_met: list[str]


class Training(BaseModel):
    training: str
    why: str


class Future(BaseModel):
    churn: Churn
    clv: Clv
    next_best_action: NextBestAction
    expansion: Expansion
    response: Response
    next_feature: NextFeature
    content_interest: ContentInterest
    retargeting: Retargeting
    advocate: Advocate
    trainings: list[Training]


class Freshness(BaseModel):
    features_as_of: str | None = Field(description="as-of date of the features shown")
    predictions_as_of: str | None = Field(description="as-of date of the features the latest batch scores used")
    served_at: str


class BriefFact(BaseModel):
    field: str = Field(description="dotted path of the profile field stated, e.g. future.churn.band")
    value: Any = Field(description="the field's value in this profile")
    text: str = Field(description="how the brief words it")


class Brief(BaseModel):
    """The call brief (`serving.brief`): at most 80 words composed from this profile's own fields."""

    text: str
    facts: list[BriefFact] = Field(description="every field the brief states, in its order")
    source: Literal["rules", "llm"] = Field(description="rules: composed from the facts; llm: rewritten by the "
                                                         "endpoint in C360_BRIEF_ENDPOINT")
    rules_text: str | None = Field(None, description="with source llm: the text composed by rules")
    note: str | None = Field(None, description="why a configured rewrite was not used")


TYPES: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str}
STRICT = ConfigDict(extra="forbid")


def _feature(name: str, **limits: int) -> Any:
    """A feature's field: its type or null, its label as title and its description."""
    f = BY_NAME[name]
    return TYPES[f.dtype] | None, Field(title=label(name), description=f.description, **limits)


def _section(section: str, groups: dict[str, tuple[str, ...]], **more: Any) -> Any:
    """The past or present section: one model per group of features, each group titled by its label."""
    fields = {key: (create_model(f"{section.capitalize()}{key.capitalize()}", __config__=STRICT,
                                 **{name: _feature(name) for name in names}), Field(title=label(key)))
              for key, names in groups.items()}
    return create_model(section.capitalize(), __config__=STRICT, **fields, **more)


class RedFlag(BaseModel):
    code: str = Field(description="the red flag's feature name without `flag_`")
    description: str


class LiveEvent(BaseModel):
    event_id: str
    kind: str = Field(description="the event's kind (docs/CONTRACT.md, Live events)")
    at: str = Field(description="when it happened, as sent")


Past = _section("past", PAST, live_events=(list[LiveEvent], Field(
    title="Live events", description="the customer's events logged since the last `c360 ingest`, newest first, at "
                                     "most 20")))
Present = _section("present", PRESENT, red_flags=(list[RedFlag], Field(title=label("red_flags"),
                                                                       description="the red flags raised")),
                   persona=(str | None, Field(None, title="Persona", description="the behaviour group the customer "
                                              "belongs to (`c360 personas show`); null before `c360 personas fit`")))
Details = create_model("Details", __config__=STRICT, **{
    name: (list[dict[str, Any]], Field(title=label(name))) for name in LISTS})


class Profile(BaseModel):
    customer_id: str
    identity: dict[str, Any] | None = Field(None, description="golden record (with details=true)")
    past: Past  # type: ignore[valid-type]
    present: Present  # type: ignore[valid-type]
    future: Future
    details: Details | None = Field(
        None, description="timeline, contacts, latest interaction, ... from the warehouse (with details=true)")
    freshness: Freshness
    brief: Brief | None = Field(None, description="a call brief of at most 80 words (`serving.brief`)")


Batch = Annotated[list[T], Field(min_length=1, max_length=MAX_BATCH)]  # the items of one request
CustomerIds = Batch[Annotated[str, Field(pattern=CUSTOMER_ID)]]


class ByIds(BaseModel):
    """Customers to score: their features come from the online store, their scores from the batch when fresh."""

    model_config = ConfigDict(extra="forbid")
    customer_ids: CustomerIds


def _row_model(service: str) -> type[BaseModel]:
    """One raw feature row of a model: every feature of its feature service, each a value of its type or null."""
    from c360.feature_repo.services import MODELS as SERVICES
    from c360.feature_repo.services import NOT_FOR_MODELS

    # Integers within JSON's exact range (2^53): beyond it a JSON number is a rounded float, and int64 overflows.
    bounds: dict[str, dict[str, int]] = {"int": {"ge": -(2**53 - 1), "le": 2**53 - 1}}
    fields: dict[str, Any] = {f.name: _feature(f.name, **bounds.get(f.dtype, {}))
                              for f in FEATURES if f.section in SERVICES[service] and f.name not in NOT_FOR_MODELS}
    name = service.split("_")[0].capitalize() + "Row"
    return create_model(name, __config__=ConfigDict(extra="ignore", allow_inf_nan=False), **fields)


ChurnRow, ClvRow, NbaRow = (_row_model(MODELS[kind].service) for kind in ("churn", "clv", "nba"))


class ChurnRows(BaseModel):
    """Raw feature rows the caller has (scored live); `null` for an unknown value."""

    model_config = ConfigDict(extra="forbid")
    rows: Batch[ChurnRow]  # type: ignore[valid-type]


class ClvRows(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Batch[ClvRow]  # type: ignore[valid-type]


class NbaRows(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: Batch[NbaRow]  # type: ignore[valid-type]


class ChurnPrediction(Churn):
    customer_id: str | None


class ClvPrediction(Clv):
    customer_id: str | None


class NbaPrediction(NextBestAction):
    customer_id: str | None


class ChurnPredictions(BaseModel):
    predictions: list[ChurnPrediction]


class ClvPredictions(BaseModel):
    predictions: list[ClvPrediction]


class NbaPredictions(BaseModel):
    predictions: list[NbaPrediction]


class TableRows(BaseModel):
    rows: list[dict[str, Any]] = Field(min_length=1, description="rows in the columns of the model's training "
                                                                 "table, values as JSON numbers, text, true/false "
                                                                 "or null (up to 1,000 rows)")


class TablePredictions(BaseModel):
    model: str = Field(description="registered model name, c360-NAME")
    version: int = Field(description="the @champion version that answered")
    predictions: list[dict[str, Any]] = Field(description="per row: churn_probability and reasons [{feature, "
                                                          "contribution}], or recommended, expected_gain and "
                                                          "expected {arm: outcome}; the id column when sent")


class Status(BaseModel):
    ready: bool
    models: dict[str, int] = Field(description="loaded champion version per model")
    table_models: dict[str, int] = Field(default_factory=dict, description="loaded @champion version per table "
                                                                           "model, by NAME")
    online_store: str
    problem: str | None = None


class Reloaded(BaseModel):
    reloaded: dict[str, list[int | None]] = Field(description="model → [old version, new version]")
    models: dict[str, int]


class Error(BaseModel):
    detail: str
    component: str | None = Field(None, description="with a 503: the component that cannot answer (online store, "
                                                    "warehouse, model registry, feature registry, ...)")


class CustomerMatches(BaseModel):
    email: str = Field(description="the address as identity resolution normalises it (lowercase, no +tag)")
    customer_ids: list[str] = Field(description="customers with this address among their records, sorted")


class ByEmail(BaseModel):
    """A person by e-mail: that contact."""

    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254, description="e-mail address of the person")


class ByCustomerId(BaseModel):
    """A whole account by its c360 customer id."""

    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(pattern=CUSTOMER_ID, description="c360 customer id of an account")


PrivacyAsk = ByEmail | ByCustomerId  # one or the other: the schema says so, not a 422 after the fact


class ErasureRequest(BaseModel):
    request_id: str
    state: str = Field(description="pending, done or failed")
    customers: list[str] = Field(description="customer ids hidden by the request")
    created: str
    finished: str | None = None
    report: dict[str, Any] | None = Field(None, description="per store: rows removed, files rewritten, recall, kept")
    error: str | None = None


class EventBatch(BaseModel):
    """A batch of live events (`c360.features.event_log`): each an object `{"event_id", "kind", "at",
    "customer_id"?, ...the columns of its kind's contract table}`; each is checked on its own."""

    model_config = ConfigDict(extra="forbid")
    events: list[Any] = Field(max_length=MAX_EVENTS, description=f"up to {MAX_EVENTS:,} events (docs/CONTRACT.md, "
                                                                 "Live events)")


class EventRejected(BaseModel):
    index: int = Field(description="position of the event in the batch")
    event_id: str | None = Field(description="its event_id, when it has one")
    reason: str = Field(description="why it was rejected: `column: reason`, several joined by `; `")


class LiveUpdate(BaseModel):
    updated: int = Field(description="customers whose features and predictions were updated (a late event updates "
                                     "history only)")
    error: str | None = Field(None, description="why the live update could not be done (the events are logged "
                                                "all the same; `c360 ingest` folds them)")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="new events, written to the event log (on disk) before this answer")
    duplicates: int = Field(description="events whose event_id the log already holds: acknowledged, ignored")
    suppressed: int = Field(description="events of people erased before: acknowledged, not stored")
    rejected: list[EventRejected] = Field(description="events refused, with their reason; kept in the rejects log "
                                                      "and, after `c360 ingest`, in the warehouse's `quarantine`")
    live: LiveUpdate = Field(description="the accepted events' customers updated live (features and predictions)")
