"""Feature services: the contract between training (`get_historical_features`) and serving (`get_online_features`).

A model version reads exactly its service; changing a model's features means a new service version.
"""

from feast import FeatureService, FeatureView

# Sections absent from MODELS (consent) are the profile's only: an opt-out restricts what is proposed, it does not
# change what a model predicts.
# Descriptive labels (stage, band) and the health components' weighted total are for people, not models.
NOT_FOR_MODELS = {"lifecycle_stage", "health_band", "health_score"}
MODELS = {
    "churn_v1": ("activity", "interactions", "campaigns", "billing", "support", "status", "health"),
    "clv_v1": ("activity", "billing", "support", "status", "health"),
    "nba_v1": ("activity", "interactions", "campaigns", "billing", "support", "status"),
    # what drives expansion is spread as widely as churn's drivers: health and breadth of use, plan, seats and
    # past orders, and the contacts and campaigns an action's order answers
    "expansion_v1": ("activity", "interactions", "campaigns", "billing", "support", "status", "health"),
    # who clicks a campaign: engagement with past campaigns, health and use; the send's channel and topic are added
    # by the model (training/response.py), not stored per customer
    "response_v1": ("activity", "interactions", "campaigns", "billing", "support", "status", "health"),
}


def services(views: dict[str, FeatureView]) -> list[FeatureService]:
    profile = FeatureService(name="profile_v1", features=list(views.values()),
                             description="Everything the customer profile shows (past and present).")
    models = [
        FeatureService(
            name=name,
            features=[views[s][[f.name for f in views[s].features if f.name not in NOT_FOR_MODELS]] for s in sections],
            description=f"Inputs of the {name.split('_')[0]} model, version {name.split('_')[1]}.",
        )
        for name, sections in MODELS.items()
    ]
    return [profile, *models]
