from datetime import timedelta

from feast import FeatureView, Field
from feast.data_source import DataSource
from feast.types import Bool, Float64, Int64, String

from c360.core.definitions import FEATURES
from c360.feature_repo.entities import customer

TYPES = {"int": Int64, "float": Float64, "str": String, "bool": Bool}
SECTIONS = {
    "activity": "past: product activity",
    "interactions": "past: interactions across channels",
    "campaigns": "past: campaign activity and feature requests",
    "billing": "past: purchases and billing",
    "support": "present: support and sentiment",
    "status": "present: stage, contacts and red flags",
    "health": "present: health score and its components",
    "consent": "present: opt-outs per purpose (profile only, never a model input)",
}
TTL = timedelta(days=400)  # a snapshot older than this says nothing about now


def views(source: DataSource) -> dict[str, FeatureView]:
    """One feature view per profile section, over the same snapshots."""
    return {
        section: FeatureView(
            name=f"customer_{section}",
            entities=[customer],
            ttl=TTL,
            schema=[Field(name=f.name, dtype=TYPES[f.dtype], description=f.description)
                    for f in FEATURES if f.section == section],
            source=source,
            online=True,
            description=doc,
        )
        for section, doc in SECTIONS.items()
    }
