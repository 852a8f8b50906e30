"""The `predictions` feature view: the latest batch scores of every customer (`c360 score`), served beside the
features so one online read gives a profile's past, present and future.

Its offline source is the wide score files the batch job writes (one row per customer and scoring run,
`C360_HOME/scores/as_of=*/run=*/wide/*.parquet`); the event timestamp is the as-of date of the features the scores
were computed from, the created timestamp when they were scored (the later run wins on the same date).
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.data_source import DataSource
from feast.types import Float64, Int64, String

from c360.feature_repo.entities import customer
from c360.feature_repo.sources import parquet_source

PREDICTIONS = "predictions"
FIELDS = {
    "scored_at": (String, "when the scores were computed (ISO 8601, UTC)"),
    "source": (String, "who scored: batch (`c360 score`) or live (the live update of `POST /events`)"),
    "churn_version": (Int64, "c360-churn model version that scored"),
    "churn_probability": (Float64, "probability of churning within 90 days"),
    "churn_band": (String, "churn risk band: low, medium or high"),
    "churn_reasons": (String, "top churn reasons, JSON list of {feature, value, contribution}"),
    "clv_version": (Int64, "c360-clv model version that scored"),
    "clv_value": (Float64, "expected net revenue in the next 12 months"),
    "clv_low": (Float64, "lower end of the 80 % range of the 12-month value"),
    "clv_high": (Float64, "upper end of the 80 % range of the 12-month value"),
    "clv_reasons": (String, "top CLV drivers, JSON list of {feature, value, contribution}"),
    "nba_version": (Int64, "c360-nba model version that scored"),
    "nba_action": (String, "recommended next best action (no_action when nothing pays)"),
    "nba_uplift": (Float64, "expected net uplift of the recommended action over no action, 91 days"),
    "nba_alternatives": (String, "the other actions ranked, JSON list of {action, uplift}"),
    "nba_reasons": (String, "top reasons of the action's uplift, JSON list of {feature, value, contribution}"),
    "nba_withheld": (String, "better actions not proposed because the customer opted out of their purpose, JSON "
                             "list of action names"),
    "expansion_version": (Int64, "c360-expansion model version that scored (empty: no expansion champion)"),
    "expansion_probability": (Float64, "probability of expanding (plan upgrade, seat increase or add-on order) "
                                       "within 90 days"),
    "expansion_reasons": (String, "top expansion reasons, JSON list of {feature, value, contribution}"),
    "response_version": (Int64, "c360-response model version that scored (empty: no response champion)"),
    "response_channel": (String, "campaign channel most likely to get a click or response"),
    "response_topic": (String, "content topic most likely to get a click or response, on that channel"),
    "response_probability": (Float64, "probability that a message of that channel and topic is clicked or "
                                      "answered within 14 days"),
    "response_channels": (String, "each channel's best topic, JSON list of {channel, topic, probability}, most "
                                  "likely first"),
    "response_reasons": (String, "top response reasons, JSON list of {feature, value, contribution}"),
    "next_feature": (String, "product feature most likely adopted next (empty: none)"),
    "next_feature_score": (Float64, "share of similar users who use it (co-occurrence) or its adoption rate"),
    "next_feature_method": (String, "co-occurrence or popularity"),
    "content_topics": (String, "campaign topics of interest, JSON list of {topic, lift, engaged}"),
}


def scores_source(path: str, engine: str) -> DataSource:
    return parquet_source(
        engine,
        name="customer_predictions",
        path=f"{path}/as_of=*/run=*/wide/*.parquet",
        timestamp_field="as_of",
        created_timestamp_column="scored_ts",
        description="Wide batch scores written by `c360 score`, one row per customer and run.",
    )


def predictions_view(path: str, engine: str) -> FeatureView:
    """Latest scores per customer; `path` is C360_HOME/scores (absolute), read by the offline store of `engine`."""
    return FeatureView(
        name=PREDICTIONS,
        entities=[customer],
        ttl=timedelta(0),  # scores never expire by age; the service checks them against the features instead
        schema=[Field(name=name, dtype=dtype, description=doc) for name, (dtype, doc) in FIELDS.items()],
        source=scores_source(path, engine),
        online=True,
        description="future: churn, CLV, next best action, expansion and response with reasons, and the batch "
                    "signals (c360 score)",
    )
