"""Feast definitions of c360: the customer entity, its feature source, feature views and feature services.

Definitions only. Paths come from settings at call time (`definitions(source_path)`), absolute, because Feast
resolves relative FileSource paths against the working directory.
"""

from feature_repo.entities import customer
from feature_repo.services import services
from feature_repo.sources import customer_features
from feature_repo.views import views


def definitions(source_path: str) -> list:
    """Everything to `FeatureStore.apply`: entity, views over the snapshots at `source_path`, services."""
    source = customer_features(source_path)
    feature_views = views(source)
    return [customer, *feature_views.values(), *services(feature_views)]


__all__ = ["customer", "definitions"]
